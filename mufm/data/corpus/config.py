"""Build configurations of the embedded corpus (`quick`, `medium`, `full`) and collection facts.

A config fixes everything that decides the output, so a build is a pure function of
(config, seed, music21 version, fluidsynth + soundfont): re-running it reproduces the
same clips bit for bit, and a resumed build matches an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import os

from mufm.audio import SAMPLE_RATE


DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian fluid-soundfont-gm
SOUNDFONT_ENV = "MUFM_SOUNDFONT"


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    name: str
    # music21 corpus collections (top-level folders) and how many works to take from each
    # (None = all). Works are drawn by a seeded shuffle, so a smaller cap is a subset.
    collections: tuple[tuple[str, int | None], ...]
    variants_per_work: int = 2
    seed: int = 0
    # works outside these score lengths (quarter notes, from music21's metadata) are left out
    min_quarter_length: float = 8.0
    max_quarter_length: float | None = None
    tempo_scale: tuple[float, float] = (0.8, 1.25)   # per-variant tempo factor range
    bpm_bounds: tuple[int, int] = (40, 200)          # musical bounds after scaling
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/validation/test, by work
    sample_rate: int = SAMPLE_RATE
    target_lufs: float = -20.0
    parse_timeout_s: float = 60.0     # hard limit per parse attempt (worker is killed)
    render_timeout_s: float = 300.0   # hard limit per fluidsynth run
    render_length_ratio: float = 2.0  # output-length guard: kill at ratio x MIDI length + 30 s
    max_clip_seconds: float | None = None  # None: whole works; else clips are cut to this length
    # semitones every variant after a work's first draws its transposition from; () keeps
    # every variant in the written key
    transpositions: tuple[int, ...] = ()
    soundfont: str = DEFAULT_SOUNDFONT  # get_config puts $MUFM_SOUNDFONT here when it is set

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["collections"] = [list(c) for c in self.collections]
        d["transpositions"] = list(self.transpositions)
        return d

    def same_as_recorded(self, recorded: dict) -> bool:
        """Whether a build_config.json is this config. A field added to CorpusConfig after
        it was written counts as its default there: defaults reproduce what builds did
        before the field existed, so an older directory still resumes."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)
                    if f.default is not dataclasses.MISSING}
        defaults = json.loads(json.dumps(dataclasses.replace(self, **defaults).to_json()))
        recorded = json.loads(json.dumps(recorded))  # tuples as lists, as in the file
        return {**defaults, **recorded} == json.loads(json.dumps(self.to_json()))


# quick: ~30 works x 2 variants, > 30 min of audio, a few minutes on 2 cores (CI, README job).
QUICK = CorpusConfig(
    name="quick",
    collections=(("bach", 14), ("essenFolksong", 10), ("oneills1850", 4), ("ryansMammoth", 2),
                 ("airdsAirs", 2), ("trecento", 2), ("monteverdi", 2), ("palestrina", 2)),
    variants_per_work=2,
    max_quarter_length=160.0,
)

# full: every playable work music21 ships (14.9k works; ~10 h on 2 cores, estimated from quick).
FULL = CorpusConfig(
    name="full",
    collections=tuple((c, None) for c in (
        "bach", "beethoven", "mozart", "haydn", "essenFolksong", "oneills1850", "ryansMammoth",
        "airdsAirs", "miscFolk", "palestrina", "trecento", "monteverdi", "josquin",
        "schumann_robert", "schumann_clara", "chopin", "corelli", "cpebach", "handel",
        "joplin", "schubert", "verdi", "weber", "beach", "ciconia", "luca", "lusitano",
        "liliuokalani", "johnson_j_r", "nottingham-dataset", "leadSheet")),
    variants_per_work=2,
    max_quarter_length=4000.0,
    parse_timeout_s=240.0,  # a few quartet movements take minutes to parse
)

# medium: > 10 h and > 1,500 distinct captions in < 40 min on 2 cores (see mufm/data/README.md
# for the measured figures). Short folk tunes and chorales give the clip count, a few
# polyphonic and chamber works the variety; three variants per work, the second and third
# transposed by up to a fourth either way, so every key is heard.
MEDIUM = CorpusConfig(
    name="medium",
    collections=(("bach", 130), ("essenFolksong", 280), ("oneills1850", 60), ("ryansMammoth", 40),
                 ("airdsAirs", 30), ("miscFolk", 30), ("palestrina", 8), ("trecento", 6),
                 ("monteverdi", 5), ("josquin", 3), ("mozart", 3), ("haydn", 2),
                 ("schumann_clara", 2), ("corelli", 1), ("cpebach", 1), ("handel", 1),
                 ("verdi", 1), ("liliuokalani", 1), ("johnson_j_r", 1), ("ciconia", 1),
                 ("nottingham-dataset", 2)),
    variants_per_work=3,
    max_quarter_length=320.0,
    transpositions=(-5, -4, -3, -2, -1, 1, 2, 3, 4, 5),
)

CONFIGS = {"quick": QUICK, "medium": MEDIUM, "full": FULL}


def get_config(name: str, **overrides) -> CorpusConfig:
    """A named config with ``overrides``; ``$MUFM_SOUNDFONT``, when set, is the soundfont
    (unless ``soundfont`` is overridden explicitly).

    The soundfont is resolved here, into the config, rather than at render time, so it
    is recorded in build_config.json: resuming a build with another soundfont is then
    refused like any other config change instead of mixing two timbres in one corpus.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown corpus config {name!r}; choose from {sorted(CONFIGS)}")
    if "soundfont" not in overrides and os.environ.get(SOUNDFONT_ENV):
        overrides["soundfont"] = os.environ[SOUNDFONT_ENV]
    if "soundfont" in overrides:  # the same file named from two cwds is one config
        overrides["soundfont"] = os.path.abspath(os.path.expanduser(overrides["soundfont"]))
    return dataclasses.replace(CONFIGS[name], **overrides)


@dataclasses.dataclass(frozen=True)
class CollectionInfo:
    label: str                 # how captions name the collection
    era: str
    composer: str | None = None
    region: str | None = None
    default_bpm: int = 100     # used when the score has no metronome mark
    texture: str | None = None  # None: derived from the number of parts


COLLECTIONS = {
    "bach": CollectionInfo("Bach chorales", "Baroque", "J.S. Bach", "Germany", 76,
                           "four-part chorale"),
    "beethoven": CollectionInfo("Beethoven string quartets", "Classical", "Ludwig van Beethoven",
                                "Austria", 108, "string quartet movement"),
    "mozart": CollectionInfo("Mozart", "Classical", "Wolfgang Amadeus Mozart", "Austria", 108),
    "haydn": CollectionInfo("Haydn string quartets", "Classical", "Joseph Haydn", "Austria", 108,
                            "string quartet movement"),
    "essenFolksong": CollectionInfo("Essen folksong collection", "traditional", None, None, 100,
                                    "solo folk melody"),
    "oneills1850": CollectionInfo("O'Neill's Music of Ireland", "traditional", None, "Ireland",
                                  112, "Irish dance tune"),
    "ryansMammoth": CollectionInfo("Ryan's Mammoth Collection", "traditional", None,
                                   "North America", 112, "fiddle tune"),
    "airdsAirs": CollectionInfo("Aird's Airs", "traditional", None, "Scotland", 96, "Scottish air"),
    "miscFolk": CollectionInfo("folk tunes", "traditional", None, None, 100, "folk melody"),
    "palestrina": CollectionInfo("Palestrina masses", "Renaissance",
                                 "Giovanni Pierluigi da Palestrina",
                                 "Italy", 72, "polyphonic mass movement"),
    "trecento": CollectionInfo("Trecento", "Medieval", None, "Italy", 84, "polyphonic song"),
    "monteverdi": CollectionInfo("Monteverdi madrigals", "Renaissance", "Claudio Monteverdi",
                                 "Italy", 80, "polyphonic madrigal"),
    "josquin": CollectionInfo("Josquin", "Renaissance", "Josquin des Prez", "France", 72,
                              "polyphonic motet"),
    "luca": CollectionInfo("Luca Marenzio", "Renaissance", "Luca Marenzio", "Italy", 80),
    "lusitano": CollectionInfo("Vicente Lusitano", "Renaissance", "Vicente Lusitano", "Portugal",
                               72),
    "ciconia": CollectionInfo("Johannes Ciconia", "Medieval", "Johannes Ciconia", "Italy", 84),
    "corelli": CollectionInfo("Corelli trio sonatas", "Baroque", "Arcangelo Corelli", "Italy", 96),
    "handel": CollectionInfo("Handel", "Baroque", "George Frideric Handel", "England", 96),
    "cpebach": CollectionInfo("C.P.E. Bach", "Classical", "Carl Philipp Emanuel Bach", "Germany",
                              100),
    "schubert": CollectionInfo("Schubert", "Romantic", "Franz Schubert", "Austria", 90),
    "weber": CollectionInfo("Weber", "Romantic", "Carl Maria von Weber", "Germany", 100),
    "verdi": CollectionInfo("Verdi", "Romantic", "Giuseppe Verdi", "Italy", 90),
    "chopin": CollectionInfo("Chopin", "Romantic", "Frederic Chopin", "Poland", 120, "piano piece"),
    "schumann_robert": CollectionInfo("Robert Schumann", "Romantic", "Robert Schumann", "Germany",
                                      90),
    "schumann_clara": CollectionInfo("Clara Schumann", "Romantic", "Clara Schumann", "Germany", 90),
    "beach": CollectionInfo("Amy Beach", "Romantic", "Amy Beach", "United States", 90),
    "joplin": CollectionInfo("Scott Joplin rags", "ragtime", "Scott Joplin", "United States", 96,
                             "piano rag"),
    "johnson_j_r": CollectionInfo("J. Rosamond Johnson", "early 20th-century",
                                  "J. Rosamond Johnson",
                                  "United States", 90),
    "liliuokalani": CollectionInfo("Liliuokalani", "Romantic", "Liliuokalani", "Hawaii", 80),
    "nottingham-dataset": CollectionInfo("Nottingham folk tunes", "traditional", None, "England",
                                         112, "folk dance tune"),
    "leadSheet": CollectionInfo("lead sheets", "20th-century", None, None, 100),
}


def collection_info(name: str) -> CollectionInfo:
    return COLLECTIONS.get(name, CollectionInfo(name, "Western"))

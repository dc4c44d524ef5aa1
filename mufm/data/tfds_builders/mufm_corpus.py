"""TFDS builder ``mufm_corpus``: the rendered embedded corpus, split by work.

Reads a corpus directory made by ``python -m mufm.data.corpus build`` (its manifest, FLAC
and labels files). Besides the clip features every builder shares, each example has its
note and beat labels (`mufm.data.corpus.labels`): ``notes`` float32 ``[n, 5]`` (onset_s,
offset_s, MIDI pitch, GM program, part), ``beats`` and ``downbeats`` float32 (seconds). Where that directory comes from, in order: the ``corpus_dir`` builder
argument, ``$MUFM_CORPUS_DIR``, or ``<manual_dir>/mufm_corpus_<config>``; when it holds no
manifest yet, the builder renders the corpus there first (the same resumable build).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds

from mufm.data.tfds_builders import features as F


class MufmCorpus(tfds.core.GeneratorBasedBuilder):
    """Music21 scores rendered with fluidsynth at 24 kHz, with MidiCaps-style captions."""

    # A new feature spec is a new version: TFDS keeps each version in its own directory,
    # and the seqio task asks for this one, so a dataset prepared by an older builder
    # (without labels) is never read in its place; it is prepared anew from the corpus.
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: music21 corpus, fluidsynth + FluidR3_GM.",
        "1.1.0": "Note and beat labels per clip (notes, beats, downbeats), a transpose attribute, "
                 "the medium config.",
    }
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="quick", description="~60 min: a few collections, CI-sized"),
        tfds.core.BuilderConfig(name="medium",
                                description="> 10 h: more works, palettes, tempi, transpositions"),
        tfds.core.BuilderConfig(name="full", description="every work music21 ships, 2 variants"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Nothing to download: pass corpus_dir=DIR (or set MUFM_CORPUS_DIR) to a directory built by "
        "`python -m mufm.data.corpus build --config=quick --out=DIR`, or let the builder render it.")

    def __init__(self, *, corpus_dir: str | None = None, build_jobs: int | None = None, **kwargs):
        self._corpus_dir = corpus_dir
        self._build_jobs = build_jobs
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=F.clip_features(
                work_id=tfds.features.Text(), variant_id=tfds.features.Text(),
                notes=tfds.features.Tensor(shape=(None, 5), dtype=np.float32),
                beats=tfds.features.Tensor(shape=(None,), dtype=np.float32),
                downbeats=tfds.features.Tensor(shape=(None,), dtype=np.float32)),
            supervised_keys=None,
            homepage="https://web.mit.edu/music21/",
        )

    def _resolve_corpus_dir(self, dl_manager) -> str:
        if self._corpus_dir:
            return self._corpus_dir
        if os.environ.get("MUFM_CORPUS_DIR"):
            return os.environ["MUFM_CORPUS_DIR"]
        return os.path.join(str(dl_manager.manual_dir), f"mufm_corpus_{self.builder_config.name}")

    def _split_generators(self, dl_manager):
        from mufm.data.corpus.manifest import read_manifest
        corpus_dir = self._resolve_corpus_dir(dl_manager)
        if not os.path.exists(os.path.join(corpus_dir, "manifest.jsonl")):
            # A separate process: the build forks workers, and forking a process that runs
            # TensorFlow's thread pools is asking for deadlocks.
            cmd = [sys.executable, "-m", "mufm.data.corpus", "build",
                   f"--config={self.builder_config.name}",
                   f"--out={corpus_dir}"] + (
                [f"--jobs={self._build_jobs}"] if self._build_jobs else [])
            subprocess.run(cmd, check=True)
        records = read_manifest(corpus_dir)
        by_split = {split: [r for r in records if r["split"] == split]
                    for split in ("train", "validation", "test")}
        return {split: self._generate_examples(corpus_dir,
                                               recs) for split, recs in by_split.items() if recs}

    def _generate_examples(self, corpus_dir, records):
        from mufm.data.corpus.labels import read_labels
        for r in records:
            wav, sr = sf.read(os.path.join(corpus_dir, r["audio"]), dtype="int16")
            labels = read_labels(corpus_dir, r["clip_id"])  # a clear error if the corpus has none
            yield r["clip_id"], {
                "waveform": wav, "sample_rate": int(sr), "caption": r["caption"],
                "clip_id": r["clip_id"],
                "work_id": r["work_id"], "variant_id": r["variant_id"],
                "attributes": F.corpus_attributes_example(r["attributes"]),
                "attributes_json": json.dumps(r["attributes"], sort_keys=True),
                "notes": labels["notes"], "beats": labels["beats"],
                "downbeats": labels["downbeats"],
            }

"""Token layouts: id ranges, no collisions, exact inverses, frame-major prefixes, loss
weights, the delay pattern, the sampler's position tables, and one-line errors.

Property tests are seeded numpy loops over random examples of small layouts (small
codebooks and crops, so every id range is hit many times), plus the paper-size stages.
"""
import dataclasses
import json

import gin
import numpy as np
import pytest

from mufm.lm import layouts
from mufm.lm.layouts import (EMPTY, FIRST_BOS, MISSING, NULL, PAD, Segment, StageLayout,
                             coarse_stage, delay_codes, delay_stage, fine_stage, range_mask,
                             semantic_stage, undelay_codes)


def small_layouts():
    """Every stage shape, with codebooks small enough that random codes cover them."""
    return [
        semantic_stage(9, mulan_levels=3, mulan_codes=5, semantic_codes=7),
        coarse_stage(4, 6, coarse_levels=3, mulan_levels=2, mulan_codes=3, semantic_codes=4,
                     acoustic_codes=5),
        fine_stage(5, 5, coarse_levels=2, acoustic_levels=5, acoustic_codes=6),
        delay_stage(5, acoustic_levels=4, mulan_levels=2, mulan_codes=3, acoustic_codes=5),
        delay_stage(4, acoustic_levels=1, mulan_levels=1, mulan_codes=2, acoustic_codes=3),
    ]


PAPER = [semantic_stage(), coarse_stage(), fine_stage(), delay_stage()]


def random_example(layout: StageLayout, rng, *, full: bool = False) -> dict:
    """Arrays in the record's shapes; each stream as long as its shortest segment allows
    (full) or shorter, sometimes followed by MISSING frames (a clip shorter than the crop)."""
    example = {}
    for stream in ("mulan", "semantic", "acoustic"):
        segs = [s for s in layout.segments if s.stream == stream]
        if not segs:
            continue
        codes = min(s.codebook_size for s in segs)
        levels = max(s.levels[-1] for s in segs) + 1
        limit = min(s.frames for s in segs)
        frames = limit if full or stream == "mulan" else int(rng.integers(0, limit + 1))
        pad = 0 if full or stream == "mulan" else int(rng.integers(0, 3))
        a = np.concatenate([rng.integers(0, codes, (frames, levels)),
                            np.full((pad, levels), MISSING)]).astype(np.int32)
        example[stream] = {"mulan": a[0] if len(a) else a.reshape(-1),
                           "semantic": a[:, 0], "acoustic": a}[stream]
    return example


def dropped(layout, codes):
    return {name: np.full_like(c, MISSING) if layout.segments[k].droppable else c
            for k, (name, c) in enumerate(codes.items())}


def assert_codes_equal(got, want):
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# -- the id space -----------------------------------------------------------------------

def test_paper_sizes_vocab_offsets_and_lengths():
    """The README's table: specials, then 1024 ids per stream level in segment order."""
    want = {"semantic": (13317, 764, 14, [f"mulan_{q}" for q in range(12)] + ["semantic"]),
            "coarse": (17414, 2265, 265, [f"mulan_{q}" for q in range(12)] + ["semantic"]
                       + [f"acoustic_{q}" for q in range(4)]),
            "fine": (12293, 1802, 602, [f"acoustic_{q}" for q in range(12)]),
            "delay": (24581, 6146, 14, [f"mulan_{q}" for q in range(12)]
                      + [f"acoustic_{q}" for q in range(12)])}
    for layout in PAPER:
        vocab, length, prompt, names = want[layout.name]
        assert (layout.vocab_size, layout.max_length, layout.prompt_length) == (vocab, length, prompt)
        assert layout.stream_names == ("special",) + tuple(names)
        assert layout.num_special == FIRST_BOS + len(layout.segments)
        assert [s.offset for s in layout.streams] == [
            layout.num_special + 1024 * i for i in range(len(names))]
    assert coarse_stage().streams[12].offset == 6 + 12 * 1024  # semantic after the MuLan levels


@pytest.mark.parametrize("layout", small_layouts() + PAPER, ids=lambda l: f"{l.name}_{l.vocab_size}")
def test_streams_tile_the_vocabulary_without_collisions(layout):
    owner = np.full(layout.vocab_size, -1)
    owner[:layout.num_special] = 0
    assert len({PAD, NULL, EMPTY} | {layout.bos(s.name) for s in layout.segments}) == layout.num_special
    for i, st in enumerate(layout.streams, start=1):
        assert (owner[st.offset:st.offset + st.size] == -1).all(), f"{st.name} overlaps"
        owner[st.offset:st.offset + st.size] = i
    assert (owner >= 0).all()  # contiguous: no id belongs to nothing
    assert len(set(layout.stream_names)) == len(layout.stream_names)


def test_encoded_ids_stay_in_their_streams():
    rng = np.random.default_rng(0)
    for layout in small_layouts():
        lo = np.array([0] + [s.offset for s in layout.streams])
        hi = np.array([0] + [s.offset + s.size for s in layout.streams])
        for trial in range(60):
            ex = random_example(layout, rng)
            drop = bool(trial % 3 == 0 and layout.segments[0].droppable)
            f = layout.encode(ex, drop_conditioning=drop)
            ids, streams = f["decoder_target_tokens"], f["decoder_stream_ids"]
            assert ((ids >= 0) & (ids < layout.vocab_size)).all()
            code = ids >= layout.num_special
            assert (streams[code] > 0).all()
            assert ((ids[code] >= lo[streams[code]]) & (ids[code] < hi[streams[code]])).all()
            # specials only where they belong: BOS at stream 0, NULL/EMPTY in a stream's cell
            assert np.isin(ids[streams == 0], [layout.bos(s.name) for s in layout.segments]).all()
            assert np.isin(ids[(streams > 0) & ~code], [NULL, EMPTY]).all()
            assert not (ids == PAD).any()  # never inside a sequence: packing would drop it


# -- inverses ---------------------------------------------------------------------------

def test_decode_inverts_encode_exactly():
    rng = np.random.default_rng(1)
    for layout in small_layouts() + PAPER:
        for trial in range(40 if layout.vocab_size < 100 else 2):
            ex = random_example(layout, rng, full=trial == 0)
            want = layout.segment_codes(ex)
            f = layout.encode(ex, length=layout.max_length + 3)  # trailing PAD is ignored
            assert_codes_equal(layout.decode(f["decoder_target_tokens"]), want)
            if layout.segments[0].droppable:
                ids = layout.encode(ex, drop_conditioning=True)["decoder_target_tokens"]
                assert_codes_equal(layout.decode(ids), dropped(layout, want))
            # the prompt is the sequence up to the target's first code
            assert_codes_equal(layout.decode(layout.prompt(ex)),
                               {**want, layout.target.name: want[layout.target.name][:0]})


def test_every_prefix_of_a_frame_major_target_is_whole_frames_plus_a_partial_frame():
    rng = np.random.default_rng(2)
    for layout in small_layouts()[1:3]:  # coarse (3 levels), fine (levels 2..4)
        seg = layout.target
        n_levels = seg.num_levels
        for _ in range(5):
            ex = random_example(layout, rng, full=True)
            codes = layout.segment_codes(ex)[seg.name]
            ids = layout.encode(ex)["decoder_target_tokens"]
            start = layout.prompt_length
            for n in range(len(ids) - start + 1):
                got = layout.decode(ids[:start + n])[seg.name]
                whole, part = divmod(n, n_levels)
                assert got.shape == (whole + (part > 0), n_levels)
                np.testing.assert_array_equal(got[:whole], codes[:whole])
                if part:
                    np.testing.assert_array_equal(got[whole, :part], codes[whole, :part])
                    assert (got[whole, part:] == MISSING).all()
                if n < len(ids) - start:  # the next token is frame n // L, level n % L
                    slot = layout.locate(start + n)
                    assert (slot.kind, slot.frame, slot.level) == (
                        "code", whole, seg.first_level + part)


def test_delay_grid_round_trips_and_fills_the_triangles():
    rng = np.random.default_rng(3)
    for _ in range(50):
        t, k = int(rng.integers(1, 9)), int(rng.integers(1, 6))
        codes = rng.integers(0, 100, (t, k))
        grid = delay_codes(codes)
        assert grid.shape == (t + k - 1, k)
        for q in range(k):
            np.testing.assert_array_equal(grid[q:q + t, q], codes[:, q])
            assert (grid[:q, q] == MISSING).all() and (grid[q + t:, q] == MISSING).all()
        np.testing.assert_array_equal(undelay_codes(grid), codes)
    assert delay_codes(np.zeros((0, 4), int)).shape == (0, 4)


def test_delay_layout_is_the_delay_grid_flattened_and_its_prefixes_decode():
    rng = np.random.default_rng(4)
    layout = small_layouts()[3]
    seg = layout.target
    offsets = np.array([s.offset for s in layout.streams if s.segment == seg.name])
    for _ in range(10):
        ex = random_example(layout, rng)
        codes = layout.segment_codes(ex)[seg.name]
        ids = layout.encode(ex)["decoder_target_tokens"]
        start = layout.prompt_length
        want = np.where(delay_codes(codes) >= 0, delay_codes(codes) + offsets, EMPTY)
        np.testing.assert_array_equal(ids[start:], want.reshape(-1))
        for n in range(len(ids) - start + 1):  # known cells equal, the rest MISSING
            got = layout.decode(ids[:start + n])[seg.name]
            known = got != MISSING
            np.testing.assert_array_equal(got[known], codes[:len(got)][known])
            assert known.sum() == (ids[start:start + n] != EMPTY).sum()


# -- loss weights, stream ids, the LM batch ---------------------------------------------

def test_loss_weights_are_zero_exactly_on_conditioning():
    rng = np.random.default_rng(5)
    for base in small_layouts():
        on = dataclasses.replace(base, loss_on_conditioning=True)
        for _ in range(20):
            ex = random_example(base, rng)
            ids = base.encode(ex)["decoder_target_tokens"]
            start = base.prompt_length
            is_code = ids >= base.num_special
            target = np.arange(len(ids)) >= start
            np.testing.assert_array_equal(base.encode(ex)["decoder_loss_weights"], is_code & target)
            np.testing.assert_array_equal(on.encode(ex)["decoder_loss_weights"], is_code)
            if base.segments[0].droppable:  # NULL carries no loss, even with the flag
                w = on.encode(ex, drop_conditioning=True)["decoder_loss_weights"]
                assert not w[1:1 + base.segments[0].num_tokens()].any()


def test_batch_matches_the_lm_task_features_and_shift():
    from mufm.data.pipeline import DataConfig, batch_feature_names

    rng = np.random.default_rng(6)
    for layout in small_layouts():
        batch = layout.encode_batch([random_example(layout, rng) for _ in range(3)])
        names = batch_feature_names(DataConfig(pack=False, stream_names=layout.stream_names))
        assert set(batch) == set(names)
        for x in batch.values():
            assert x.shape == (3, layout.max_length) and x.dtype == np.int32
        inputs, targets = batch["decoder_input_tokens"], batch["decoder_target_tokens"]
        assert (inputs[:, 0] == PAD).all()
        np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
        assert (batch["decoder_loss_weights"][targets == PAD] == 0).all()
        assert batch["decoder_stream_ids"].max() < len(layout.stream_names)
    with pytest.raises(ValueError, match="one drop_conditioning flag each"):
        layout.encode_batch([random_example(layout, rng)] * 2, drop_conditioning=[True])


def test_stream_ids_name_each_position():
    layout = small_layouts()[1]
    f = layout.encode(random_example(layout, np.random.default_rng(7), full=True))
    names = [layout.stream_names[s] for s in f["decoder_stream_ids"]]
    slots = [layout.locate(p) for p in range(len(names))]
    assert names == [s.stream or "special" for s in slots]


def test_drop_conditioning_replaces_only_droppable_segments():
    layout = small_layouts()[1]  # [mulan][semantic] coarse: only MuLan is dropped
    ex = random_example(layout, np.random.default_rng(8), full=True)
    kept = layout.encode(ex)["decoder_target_tokens"]
    gone = layout.encode(ex, drop_conditioning=True)["decoder_target_tokens"]
    mulan = slice(1, 1 + layout.segments[0].num_tokens())
    assert (gone[mulan] == NULL).all()
    np.testing.assert_array_equal(np.delete(gone, np.r_[mulan]), np.delete(kept, np.r_[mulan]))
    np.testing.assert_array_equal(layout.prompt(ex, drop_conditioning=True), gone[:layout.prompt_length])
    with pytest.raises(ValueError, match="no segment is droppable"):
        small_layouts()[2].encode(random_example(small_layouts()[2], np.random.default_rng(0)),
                                  drop_conditioning=True)


# -- the sampler's position tables -------------------------------------------------------

def test_allowed_ranges_and_masks_admit_exactly_each_positions_ids():
    import jax.numpy as jnp

    rng = np.random.default_rng(9)
    for layout in small_layouts():
        for _ in range(10):
            ex = random_example(layout, rng, full=True)
            ids = layout.encode(ex)["decoder_target_tokens"]
            frames = len(layout.segment_codes(ex)[layout.target.name])
            lo, hi = layout.allowed_ranges(target_frames=frames)
            assert len(lo) == len(ids)
            assert ((lo <= ids) & (ids < hi)).all()
            mask = layout.logit_mask(np.arange(len(ids)), target_frames=frames)
            assert mask.shape == (len(ids), layout.vocab_size)
            np.testing.assert_array_equal(mask.sum(1), hi - lo)
            assert mask[np.arange(len(ids)), ids].all()
            for p in rng.integers(0, len(ids), 5):
                slot = layout.locate(int(p), target_frames=frames)
                r = layout.allowed_range(int(p), target_frames=frames)
                if slot.kind == "bos":
                    assert r == (layout.bos(slot.segment), layout.bos(slot.segment) + 1)
                elif slot.kind == "empty":
                    assert r == (EMPTY, EMPTY + 1)
                else:
                    st = layout.streams[layout.stream_names.index(slot.stream) - 1]
                    assert r == (st.offset, st.offset + st.size)
            with pytest.raises(ValueError, match="outside"):
                layout.locate(len(ids), target_frames=frames)
        lo, hi = layout.allowed_ranges()
        wide = layout.logit_mask(np.arange(len(lo)), vocab_size=layout.vocab_size + 7)
        assert not wide[:, layout.vocab_size:].any()  # a rounded-up model vocab stays masked
        np.testing.assert_array_equal(
            np.asarray(range_mask(jnp.asarray(lo), jnp.asarray(hi), layout.vocab_size)),
            range_mask(lo, hi, layout.vocab_size))


def test_delay_tables_mark_both_triangles_empty():
    layout = small_layouts()[3]
    k, frames = layout.target.num_levels, 3
    start = layout.prompt_length
    for p in range(start, start + (frames + k - 1) * k):
        step, q = divmod(p - start, k)
        slot = layout.locate(p, target_frames=frames)
        inside = 0 <= step - q < frames
        assert slot.kind == ("code" if inside else "empty")
        assert slot.frame == (step - q if inside else None) and slot.level == q


# -- errors -----------------------------------------------------------------------------

def test_bad_examples_raise_clear_errors():
    layout = small_layouts()[1]  # mulan 2 x 3, semantic 4 x 4, coarse 6 frames x 3 levels x 5
    good = random_example(layout, np.random.default_rng(10), full=True)
    cases = [
        ({"semantic": None}, "has no 'semantic'"),
        ({"semantic": good["semantic"][:, None]}, r"must be \[frames\]"),
        ({"acoustic": good["acoustic"][:, 0]}, r"must be \[frames, levels\]"),
        ({"acoustic": good["acoustic"].astype(np.float32)}, "integer codes"),
        ({"acoustic": good["acoustic"][:, :2]}, "needs levels 0..2"),
        ({"semantic": np.array([0, 4, 1])}, r"outside \[0, 4\)"),
        ({"mulan": np.array([0, -2])}, r"holds -2, outside \[0, 3\)"),
        ({"semantic": np.array([1, MISSING, 2])}, "after the last present"),
        ({"acoustic": np.array([[1, MISSING, 2]])}, "partly MISSING"),
        ({"acoustic": np.zeros((7, 3), int)}, "7 frames, the layout holds 6"),
    ]
    for change, message in cases:
        ex = {k: v for k, v in {**good, **change}.items() if v is not None}
        with pytest.raises(ValueError, match=message):
            layout.encode(ex)
    with pytest.raises(ValueError, match="more than length"):
        layout.encode(good, length=layout.max_length - 1)


def test_ids_outside_the_expected_stream_raise_naming_the_position():
    rng = np.random.default_rng(11)
    for layout in small_layouts():
        ids = layout.encode(random_example(layout, rng, full=True))["decoder_target_tokens"]
        lo, hi = layout.allowed_ranges()
        for _ in range(60):  # any id outside the range the position's stream (or BOS) allows
            p = int(rng.integers(0, len(ids)))
            bad = int(rng.integers(0, layout.vocab_size + 5))
            if lo[p] <= bad < hi[p] or (bad == PAD and p == len(ids) - 1):
                continue  # allowed, or a shorter sequence with trailing PAD
            if bad in (NULL, EMPTY) and (p < layout.prompt_length or bad == EMPTY
                                         and layout.target.pattern == "delay"):
                continue  # can be valid there (dropped / short conditioning, delay end): below
            corrupt = ids.copy()
            corrupt[p] = bad
            with pytest.raises(ValueError, match=rf"position {p}\b"):
                layout.decode(corrupt)
    layout = small_layouts()[1]
    ids = layout.encode(random_example(layout, rng, full=True))["decoder_target_tokens"]
    k = 1 + layout.segments[0].num_tokens()
    for corrupt, message in [
            (np.concatenate([[PAD], ids]), "expected the BOS of segment 'mulan'"),
            (np.concatenate([ids, [ids[-3]]]), "past the end of segment 'coarse'"),
            (np.where(np.arange(len(ids)) == 1, NULL, ids), "partly NULL"),
            (np.where(np.arange(len(ids)) == k + 1, EMPTY, ids), "whole trailing frames"),
            (ids[None], "1-D integer"),
            (ids.astype(float), "1-D integer")]:
        with pytest.raises(ValueError, match=message):
            layout.decode(corrupt)
    delay = small_layouts()[3]
    ids = delay.encode(random_example(delay, rng, full=True))["decoder_target_tokens"]
    start = delay.prompt_length
    k = delay.target.num_levels
    # a level-0 code in the start triangle; a level-0 code at (step 1, level 1), frame 0
    for p, message in [(start + 1, "expected EMPTY"), (start + k + 1, "acoustic_1, frame 0")]:
        corrupt = ids.copy()
        corrupt[p] = ids[start]
        with pytest.raises(ValueError, match=message):
            delay.decode(corrupt)
    corrupt = ids.copy()
    corrupt[start + k] = EMPTY  # level 0 ends after frame 0, but level 0 of step 2 is a code
    with pytest.raises(ValueError, match=f"position {start + 2 * k} .*delay triangle"):
        delay.decode(corrupt)


def test_bad_layouts_raise_clear_errors():
    m = Segment("mulan", "mulan", frames=1, num_levels=2, codebook_size=4, droppable=True)
    a = Segment("a", "acoustic", frames=3, num_levels=2, codebook_size=4)
    cases = [
        (lambda: Segment("x", "text", frames=1), "use one of"),
        (lambda: Segment("x", "mulan", frames=2), "one frame of levels"),
        (lambda: Segment("x", "semantic", frames=2, num_levels=2), "one level"),
        (lambda: Segment("x", "acoustic", frames=2, pattern="zigzag"), "pattern="),
        (lambda: Segment("x", "acoustic", frames=-1), "frames >= 0"),
        (lambda: StageLayout("s", (m, a, dataclasses.replace(a, name="b", first_level=1))),
         "acoustic_1 is in segments 'a' and 'b'"),
        (lambda: StageLayout("s", (dataclasses.replace(a, pattern="delay"), m)), "target only"),
        (lambda: StageLayout("s", (a, m)), "cannot be droppable"),
        (lambda: StageLayout("s", (m, dataclasses.replace(a, name="mulan"))), "names repeat"),
        (lambda: StageLayout("s", ()), "at least a target"),
        (lambda: fine_stage(4, 4).locate(0, target_frames=5), "target_frames=5"),
        (lambda: fine_stage(4, 4).bos("mulan"), "no segment 'mulan'"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message):
            build()


# -- configuration -----------------------------------------------------------------------

def test_gin_builds_layouts_and_stored_configs_rebuild_them():
    gin.clear_config()  # an earlier test may leave a finalized (locked) config behind
    try:
        gin.parse_config("""
            coarse_stage.semantic_frames = 100
            coarse_stage.coarse_frames = 200
            StageLayout.name = 'mine'
            StageLayout.segments = [@m/Segment(), @s/Segment()]
            m/Segment.name = 'mulan'
            m/Segment.stream = 'mulan'
            m/Segment.frames = 1
            m/Segment.num_levels = 12
            m/Segment.droppable = True
            s/Segment.name = 'semantic'
            s/Segment.stream = 'semantic'
            s/Segment.frames = 50
        """)
        coarse = coarse_stage()
        mine = StageLayout()
    finally:
        gin.clear_config()
    assert coarse.segments[1].frames == 100 and coarse.target.frames == 200
    assert mine == semantic_stage(50).__class__("mine", semantic_stage(50).segments)
    assert isinstance(mine.segments, tuple) and hash(mine)  # gin's list became a tuple
    for layout in PAPER:  # the run's stored JSON config rebuilds the same layout
        assert StageLayout(**json.loads(json.dumps(dataclasses.asdict(layout)))) == layout


def test_missing_matches_the_semantic_tokenizers_pad_id():
    from mufm.semantic.tokens import PAD_ID

    assert layouts.MISSING == PAD_ID

"""The jitted cached sampler: equal to recomputation, in range, guidance, keys, decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mufm.lm.layouts import coarse_stage, delay_stage
from mufm.lm.model import LMConfig, StageLM
from mufm.sample.decode import (SamplingConfig, generate_stage, sample, sample_uncached,
                                stage_prompts)

VOCAB = 64


def tiny_model(scan=False, seed=0):
    cfg = LMConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                   dtype="float32", scan_layers=scan)
    return StageLM(cfg, rngs=nnx.Rngs(seed))


def tiny_coarse(frames=4):
    # 2 MuLan levels, 3 semantic frames, 2 coarse levels, codebooks of 8: vocab 46 < 64,
    # so the model's ids 46..63 and the specials are never valid targets.
    return coarse_stage(semantic_frames=3, coarse_frames=frames, coarse_levels=2, mulan_levels=2,
                        mulan_codes=8, semantic_codes=8, acoustic_codes=8)


def tiny_delay():
    return delay_stage(acoustic_frames=4, acoustic_levels=2, mulan_levels=2, mulan_codes=8,
                       acoustic_codes=8)


def examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"mulan": rng.integers(0, 8, 2), "semantic": rng.integers(0, 8, 3),
             "acoustic": rng.integers(0, 8, (4, 2))} for _ in range(n)]


def case(layout, n=2, config=SamplingConfig()):
    prompts = stage_prompts(layout, examples(n), config)
    lo, hi = layout.allowed_ranges()
    return prompts, len(lo) - prompts.shape[1], lo, hi


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("config", [
    SamplingConfig(temperature=0.0),
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.8, top_k=5, top_p=0.9),
    SamplingConfig(temperature=1.0, cfg_scale=3.0),
], ids=["greedy", "sampled", "topk_topp", "cfg"])
def test_cached_equals_uncached(scan, config):
    model, layout = tiny_model(scan), tiny_coarse()
    prompts, n, lo, hi = case(layout, config=config)
    key = jax.random.key(7)
    cached = np.asarray(sample(model, prompts, n, lo, hi, config, key))
    reference = np.asarray(sample_uncached(model, prompts, n, lo, hi, config, key))
    assert cached.shape == (2, n)
    np.testing.assert_array_equal(cached, reference)


def _bias_to_invalid(model, layout):
    """Scales the output columns of every id the layout never allows at a target position
    by 100: the raw argmax then almost always picks one."""
    lo, hi = layout.allowed_ranges()
    target = slice(layout.prompt_length, None)
    valid = np.zeros(VOCAB, bool)
    for a, b in zip(lo[target], hi[target]):
        valid[a:b] = True
    kernel = model.logits.kernel
    kernel[...] = jnp.where(valid, 1.0, 100.0) * kernel[...]
    return valid


@pytest.mark.parametrize("make_layout", [tiny_coarse, tiny_delay], ids=["coarse", "delay"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_sampled_id_is_in_its_range(make_layout, temperature):
    model, layout = tiny_model(), make_layout()
    _bias_to_invalid(model, layout)
    config = SamplingConfig(temperature=temperature)
    prompts, n, lo, hi = case(layout)
    ids = np.asarray(sample(model, prompts, n, lo, hi, config, jax.random.key(0)))
    full = np.concatenate([prompts, ids], axis=1)
    raw = np.asarray(jnp.argmax(model(jnp.asarray(full)), axis=-1))[:, prompts.shape[1] - 1:-1]
    pos_lo, pos_hi = lo[prompts.shape[1]:], hi[prompts.shape[1]:]
    # The precondition: unmasked, the model would mostly put invalid ids there.
    assert ((raw < pos_lo) | (raw >= pos_hi)).mean() > 0.8
    assert ((ids >= pos_lo) & (ids < pos_hi)).all(), (ids, pos_lo, pos_hi)
    for row in full:
        layout.decode(row)  # raises on any id outside its position's stream


def test_guidance_scales_zero_and_one():
    model, layout = tiny_model(), tiny_coarse()
    exs, key = examples(2), jax.random.key(3)
    cond = stage_prompts(layout, exs, SamplingConfig())
    null = stage_prompts(layout, exs, SamplingConfig(cfg_scale=0.0))[2:]
    lo, hi = layout.allowed_ranges()
    n = len(lo) - cond.shape[1]
    plain = lambda p: np.asarray(sample(model, p, n, lo, hi, SamplingConfig(), key))
    guided = lambda s: np.asarray(sample(model, np.concatenate([cond, null]), n, lo, hi,
                                         SamplingConfig(cfg_scale=s), key))
    conditional, unconditional = plain(cond), plain(null)
    assert (conditional != unconditional).any()  # else the checks below prove nothing
    np.testing.assert_array_equal(guided(0.0), unconditional)
    strong = guided(4.0)
    assert (strong != conditional).any() and (strong != unconditional).any()
    # generate_stage at scale 1 runs the conditional rows alone; at 0 the null ones decide.
    decode = lambda ids: np.stack([layout.decode(r)["coarse"] for r in
                                   np.concatenate([cond, ids], axis=1)])
    got1 = generate_stage(model, layout, exs, None, SamplingConfig(cfg_scale=1.0), key)
    np.testing.assert_array_equal(got1, decode(conditional))
    got0 = generate_stage(model, layout, exs, None, SamplingConfig(cfg_scale=0.0), key)
    np.testing.assert_array_equal(got0, decode(unconditional))


def test_keys_and_truncation():
    model, layout = tiny_model(), tiny_coarse()
    prompts, n, lo, hi = case(layout)
    run = lambda config, seed=0: np.asarray(
        sample(model, prompts, n, lo, hi, config, jax.random.key(seed)))
    base = SamplingConfig(temperature=1.0)
    np.testing.assert_array_equal(run(base), run(base))
    assert (run(base) != run(base, seed=1)).any()
    greedy = run(SamplingConfig(temperature=0.0))
    assert (run(base) != greedy).any()
    np.testing.assert_array_equal(run(SamplingConfig(greedy=True)), greedy)
    np.testing.assert_array_equal(run(SamplingConfig(top_k=1)), greedy)
    np.testing.assert_array_equal(run(SamplingConfig(top_p=1e-6)), greedy)
    # A row's tokens depend on its prompt, the key and its index, not on the other rows.
    alone = np.asarray(sample(model, prompts[:1], n, lo, hi, base, jax.random.key(0)))
    np.testing.assert_array_equal(alone, run(base)[:1])


def test_per_row_temperatures_match_each_rows_config():
    """`sample_parts` with a temperature per row: each row draws what the whole batch
    draws under a config of that temperature (0: greedy), top-k and top-p applied after."""
    from flax import nnx

    from mufm.sample.decode import sample_parts

    model, layout = tiny_model(), tiny_coarse()
    prompts, n, lo, hi = case(layout, n=3)
    graphdef, state = nnx.split(model)
    key = jax.random.key(3)
    for base in (SamplingConfig(), SamplingConfig(top_k=5, top_p=0.9)):
        temps = [0.0, 0.7, 1.6]
        mixed = np.asarray(sample_parts(graphdef, state, jnp.asarray(prompts), jnp.asarray(lo),
                                        jnp.asarray(hi), key, jnp.asarray(temps, jnp.float32),
                                        num_tokens=n, config=base))
        for r, t in enumerate(temps):
            config = SamplingConfig(temperature=t, top_k=base.top_k, top_p=base.top_p)
            want = np.asarray(sample(model, prompts, n, lo, hi, config, key))[r]
            np.testing.assert_array_equal(mixed[r], want)
        assert len({mixed[r].tobytes() for r in range(3)}) == 3


@pytest.mark.parametrize("frames", [4, 3])
def test_generate_stage_round_trips_through_the_layout(frames):
    model, layout = tiny_model(), tiny_coarse()
    exs, key, config = examples(3), jax.random.key(5), SamplingConfig(temperature=1.0)
    codes = generate_stage(model, layout, exs, frames, config, key)
    assert codes.shape == (3, frames, 2) and codes.min() >= 0 and codes.max() < 8
    prompts = stage_prompts(layout, exs, config)
    lo, hi = layout.allowed_ranges(target_frames=frames)
    ids = np.asarray(sample(model, prompts, frames * 2, lo, hi, config, key))
    # The codes are the sampled ids less their stream's offset, frame-major.
    offsets = np.array([s.offset for s in layout.streams if s.segment == "coarse"])
    np.testing.assert_array_equal(codes.reshape(3, -1), ids - np.tile(offsets, frames))
    # And encoding them back as the example's target gives the same sequence.
    for e, c, row in zip(exs, codes, ids):
        seq = layout.encode({**e, "acoustic": c})["decoder_target_tokens"]
        np.testing.assert_array_equal(seq[layout.prompt_length:], row)


@pytest.mark.parametrize("config", [SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0),
                                    SamplingConfig(temperature=1.0, cfg_scale=3.0)],
                         ids=["greedy", "sampled", "cfg"])
def test_batch_split_over_the_data_axis_gives_the_same_tokens(config):
    """3 rows (6 with guidance) over a data axis of 4 of the 8 fake devices: padded to 4,
    each device decoding its row, the padding dropped; every row's tokens equal the
    single-device sampler's (each row's arithmetic is its own, and its noise depends on
    its index only)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    model, layout = tiny_model(), tiny_coarse()
    prompts = stage_prompts(layout, examples(3), config)
    lo, hi = layout.allowed_ranges()
    n = len(lo) - prompts.shape[1]
    key = jax.random.key(11)
    alone = np.asarray(sample(model, prompts, n, lo, hi, config, key))
    split = sample(model, prompts, n, lo, hi, config, key, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(split), alone)
    four = stage_prompts(layout, examples(4), config)  # no padding: the result stays split
    out = sample(model, four, n, lo, hi, config, key, mesh=mesh)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), 2)
    with pytest.raises(ValueError, match="no 'batch' axis"):
        sample(model, prompts, n, lo, hi, config, key, mesh=mesh, data_axis="batch")

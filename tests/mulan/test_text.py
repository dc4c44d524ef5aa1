"""MuLan text tower: the MiniLM port against a float64 numpy BERT, tokenisation, the tower."""
import numpy as np
import pytest
import scipy.special
from flax import nnx
from jax.sharding import PartitionSpec

from mufm.mulan import text, tokenizer, weights
from mufm.parallel.logical import named_shardings
from mufm.parallel.mesh import DEFAULT_RULES, MeshConfig, build_mesh

CAPTIONS = [
    "a string quartet in D minor",
    "strings playing a minor-key piece",
    "a fast drum solo",
    "Solo piano: a Bach chorale in G major, 4/4 time, slow tempo (60 bpm), Baroque era.",
    "Organ and choir; homophonic texture.",
]


@pytest.fixture(scope="module")
def tensors():
    return weights.read_safetensors()


@pytest.fixture(scope="module")
def tower(tensors):
    t = text.TextTower(text.TextTowerConfig(), nnx.Rngs(0), pretrained=False)
    text.load_minilm(t.encoder, tensors)
    return t


@pytest.fixture(scope="module")
def embed(tower):
    fn = nnx.jit(lambda m, ids, mask: m(ids, mask))
    return lambda module, texts: np.asarray(fn(module, *tokenizer.tokenize(texts)))


# -- the float64 reference: HF BertModel + sentence-transformers mean pooling + Normalize --
def _layer_norm(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu_erf(x):
    return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def reference_embedding(tensors, ids, gelu=_gelu_erf, heads=12):
    """One unpadded sentence (ids [t]) -> its 384-d sentence embedding, in float64."""
    w = {k: v.astype(np.float64) for k, v in tensors.items() if k != "embeddings.position_ids"}
    lin = lambda x, name: x @ w[name + ".weight"].T + w[name + ".bias"]
    ln = lambda x, name: _layer_norm(x, w[name + ".weight"], w[name + ".bias"])
    t = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}."
        split = lambda y: y.reshape(t, heads, -1).transpose(1, 0, 2)  # [h, t, d]
        q, k, v = (split(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(1, 0, 2).reshape(t, -1)
        x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = gelu(lin(x, p + "intermediate.dense"))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)  # no padding here: the mean over all tokens
    return pooled / np.linalg.norm(pooled)


# Tolerance 1e-5 on the unit-norm embedding's components. The port runs in fp32 (unit
# roundoff u = 6e-8); a dot product over n = 384..1536 terms errs by ~sqrt(n) u relative
# (~2e-6), and the post-LN layers renormalise every sub-layer, so the error does not compound:
# 6 layers x 2 sub-layers x ~1e-6 bound it near 1e-5 relative, i.e. 1e-5 absolute on
# components of magnitude <= 1 (measured: 1.2e-7, the bound is loose). The tolerance must
# also catch real porting mistakes: tanh-approximate GELU in place of erf moves the embedding
# by 1.3e-4..7e-4 (asserted below, so 1e-4 would barely see it); a missing pad mask, a wrong
# LayerNorm eps or a transposed kernel move it by far more.
TOLERANCE = 1e-5


def test_minilm_matches_the_float64_numpy_bert(tower, tensors, embed):
    got = embed(tower.encoder, CAPTIONS)  # one padded batch: exercises the pad mask
    ids, mask = tokenizer.tokenize(CAPTIONS)
    assert mask.sum(1).min() < ids.shape[1]  # some rows are padded
    for i, row in enumerate(ids):
        ref = reference_embedding(tensors, row[mask[i] > 0])
        np.testing.assert_allclose(got[i], ref, atol=TOLERANCE, rtol=0)
        # The tolerance is tight enough to see the wrong GELU.
        tanh_ref = reference_embedding(tensors, row[mask[i] > 0], gelu=_gelu_tanh)
        assert np.abs(tanh_ref - ref).max() > TOLERANCE
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_related_captions_are_closer_than_unrelated(tower, embed):
    quartet, minor, drums = embed(tower.encoder, CAPTIONS[:3])
    assert quartet @ minor > quartet @ drums + 0.1
    assert quartet @ minor > minor @ drums + 0.1


def test_padding_does_not_change_the_embedding(tower, embed):
    fn = nnx.jit(lambda m, ids, mask: m(ids, mask))
    short = np.asarray(fn(tower.encoder, *tokenizer.tokenize(CAPTIONS[:1])))
    long = np.asarray(fn(tower.encoder, *tokenizer.tokenize(CAPTIONS[:1], length=64)))
    np.testing.assert_allclose(short, long, atol=1e-6)


# -- tokenisation --------------------------------------------------------------------------
def test_token_ids_follow_the_shipped_vocab():
    vocab = (weights.minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert (vocab[101], vocab[102], vocab[0], vocab[100]) == ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
    ids, mask = tokenizer.tokenize(["A String Quartet in D minor"])
    words = ["a", "string", "quartet", "in", "d", "minor"]
    assert ids[0, :8].tolist() == [101] + [vocab.index(w) for w in words] + [102]
    assert mask[0].tolist() == [1] * 8 + [0] * 8  # padded to a multiple of 16
    assert ids[0, 8:].tolist() == [0] * 8


def test_truncation_matches_the_shipped_tokenizer_json():
    """Our rule (first length-2 pieces, then [SEP]) is tokenizers' own truncation."""
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(weights.minilm_dir() / "tokenizer.json"))
    ref.no_padding()
    ref.enable_truncation(max_length=12)
    ids, mask = tokenizer.tokenize(CAPTIONS, length=12)
    for row, m, caption in zip(ids, mask, CAPTIONS):
        assert row[m > 0].tolist() == ref.encode(caption).ids
    # At the default max_length, 300 words keep 254 pieces and end in [SEP].
    long = " ".join(["violin"] * 300)
    ids, mask = tokenizer.tokenize([long])
    assert ids.shape == (1, 256) and mask.all()
    assert ids[0, 0] == 101 and ids[0, -1] == 102 and set(ids[0, 1:-1].tolist()) == {ids[0, 1]}


def test_tf_text_backend_agrees_on_captions():
    a = tokenizer.tokenize(CAPTIONS + ["Café au lait — naïve 3/4 waltz!!"])
    b = tokenizer.tokenize(CAPTIONS + ["Café au lait — naïve 3/4 waltz!!"], backend="tf_text")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("caption", ["", "   ", "\x00\t"])
def test_empty_caption_is_an_error(caption):
    with pytest.raises(ValueError, match="caption 1 .* no word piece"):
        tokenizer.tokenize(["a drum solo", caption])


def test_bad_inputs_are_errors():
    with pytest.raises(TypeError, match="not one string"):
        tokenizer.tokenize("a drum solo")
    with pytest.raises(TypeError, match="caption 0 is int"):
        tokenizer.tokenize([3])
    with pytest.raises(ValueError, match="length=300"):
        tokenizer.tokenize(["a drum solo"], length=300)


def test_missing_weights_dir_names_the_files(tmp_path):
    with pytest.raises(weights.MiniLMFilesMissing, match="model.safetensors"):
        weights.minilm_dir(str(tmp_path))


# -- the tower -----------------------------------------------------------------------------
def test_tower_embeds_into_the_unit_sphere_of_the_joint_space(tower, embed):
    e = embed(tower, CAPTIONS)
    assert e.shape == (len(CAPTIONS), 128)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)


def test_every_file_tensor_fills_exactly_one_parameter(tower, tensors):
    arrays = text.minilm_arrays(tower.encoder, tensors)
    used = {k: v for k, v in tensors.items() if k not in weights.UNUSED_TENSORS}
    assert len(arrays) == len(used) == 5 + 6 * 16  # embeddings + 16 per layer
    assert sum(a.size for a in arrays.values()) == sum(v.size for v in used.values())
    bad = dict(tensors)
    bad["encoder.layer.6.output.dense.weight"] = bad["encoder.layer.5.output.dense.weight"]
    with pytest.raises(KeyError, match="layer.6"):
        text.minilm_arrays(tower.encoder, bad)
    short = {k: v for k, v in tensors.items() if "layer.5.output.dense.bias" not in k}
    with pytest.raises(KeyError, match="not in the file"):
        text.minilm_arrays(tower.encoder, short)


def test_frozen_tower_trains_only_the_projection(tower):
    def n(f):
        return sum(np.size(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(tower, f)))

    assert n(tower.trainable) == 384 * 128 + 128
    assert n(tower.pretrained) == n(nnx.Param) - n(tower.trainable)
    unfrozen = text.TextTower(text.TextTowerConfig(frozen=False), nnx.Rngs(0), pretrained=False)
    assert n(unfrozen.trainable) == n(nnx.Param)


def test_every_parameter_resolves_on_a_data_fsdp_tensor_mesh(tower):
    mesh = build_mesh(MeshConfig(ici_parallelism=(2, 2, 2)))
    params = nnx.state(tower, nnx.Param)
    flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(params)}
    axes = {name: v.get_metadata()["out_sharding"] for name, v in flat.items()}
    assert all(len(axes[name]) == np.ndim(v.get_value()) for name, v in flat.items())
    shardings = named_shardings(axes, {k: v.get_value() for k, v in flat.items()}, mesh, DEFAULT_RULES)
    assert shardings["projection/kernel"].spec == PartitionSpec("fsdp", None)
    assert shardings["encoder/word_embed/embedding"].spec == PartitionSpec("tensor", "fsdp")
    assert shardings["encoder/layers/0/query/kernel"].spec == PartitionSpec("fsdp", "tensor", None)

"""The exported SavedModel of the tiny cascade (mufm/export) and the REST front end over it
(mufm/serve): tokens exactly the JAX cascade's, audio within float tolerance, the TF Serving
conventions and the refusals. One export (clips of 0.5 and 1 s) serves every test here."""
import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

TEXTS = ["a calm piano piece", "fast drums", "a slow waltz in D minor"]


@pytest.fixture(scope="module")
def exported(cascade, tmp_path_factory):
    from mufm.export.programs import Programs
    from mufm.export.saved_model import ExportConfig, export

    out = tmp_path_factory.mktemp("export")
    path = export(Programs(cascade), str(out), ExportConfig(name="tiny", max_seconds=1.0,
                                                           bucket_seconds=0.5, verify=False))
    return str(out), path


@pytest.fixture(scope="module")
def loaded(exported):
    import tensorflow_text  # noqa: F401
    import tensorflow as tf

    return tf.saved_model.load(exported[1])


def _call(loaded, signature, texts, seconds, seeds):
    import tensorflow as tf

    out = loaded.signatures[signature](text=tf.constant(texts),
                                       seconds=tf.constant(seconds, tf.float64),
                                       seed=tf.constant(seeds, tf.int64))
    return {k: v.numpy() for k, v in out.items()}


def test_export_layout_and_signatures(exported):
    base, path = exported
    assert path.endswith("/tiny/1")
    from mufm.export.saved_model import read_meta, read_warmup

    meta = read_meta(path)
    assert meta["buckets"] == [0.5, 1.0] and meta["bucket_frames"] == [13, 25]
    assert [s for s, _ in read_warmup(f"{path}/assets.extra/tf_serving_warmup_requests")] == \
        ["serving_default"] * 2
    shown = subprocess.run([sys.executable, "-m", "mufm.export.saved_model_cli", "show", "--all",
                            "--dir", path], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for sig in ("serving_default", "generate_wav", "generate_codes", "embed_text", "embed_audio",
                "encode_audio", "decode_codes", "semantic_tokens"):
        assert f"signature_def['{sig}']" in shown.stdout


def test_tokens_exact_and_audio_close_batch_1_and_3(cascade, loaded):
    """Each row equals the JAX cascade run on that row alone at its bucket's length."""
    for texts, seeds in ((TEXTS[:1], [5]), (TEXTS, [5, 1, 9])):
        got = _call(loaded, "generate_codes", texts, [1.0] * len(texts), seeds)
        wave = _call(loaded, "serving_default", texts, [1.0] * len(texts), seeds)
        assert got["codes"].shape == (len(texts), 50, 4)
        for r, (t, s) in enumerate(zip(texts, seeds)):
            ref = cascade.generate_tokens([t], 1.0, seed=s, progress=False)
            np.testing.assert_array_equal(got["codes"][r], ref["acoustic"][0])
            audio = cascade.generate([t], 1.0, seed=s, progress=False)[0]
            # The same fp32 decoder over the same codes, chunked vs in one pass: sums in
            # another order, each output a sum of ~1e3-1e4 products through a few layers:
            # a few hundred ulps of the signal's scale.
            scale = float(np.max(np.abs(audio)))
            np.testing.assert_allclose(wave["waveform"][r], audio, rtol=0,
                                       atol=1e-4 * scale)
    # A row is cut to its own seconds and zeroed past it; its samples do not depend on
    # the other rows.
    mixed = _call(loaded, "serving_default", TEXTS[:2], [1.0, 0.75], [5, 1])
    assert mixed["lengths"].tolist() == [24000, 18000]
    assert not mixed["waveform"][1, 18000:].any()
    alone = _call(loaded, "serving_default", TEXTS[1:2], [1.0], [1])
    np.testing.assert_array_equal(mixed["waveform"][1, :18000], alone["waveform"][0, :18000])


def test_graph_checks(loaded):
    import tensorflow as tf

    for texts, seconds, seed, message in ((["  "], [1.0], [0], "no word piece"),
                                          (["x"], [3.0], [0], "seconds must be <="),
                                          (["x"], [0.0], [0], "seconds must be > 0"),
                                          (["x"], [1.0], [-1], "seed must be >= 0")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            _call(loaded, "serving_default", texts, seconds, seed)


def test_part_signatures(cascade, loaded):
    import tensorflow as tf

    emb = loaded.signatures["embed_text"](text=tf.constant(TEXTS))["embedding"].numpy()
    np.testing.assert_allclose(emb, cascade.mulan.embed_text(TEXTS), atol=1e-5)
    wave = np.random.default_rng(0).standard_normal((2, 9600)).astype(np.float32) * 0.1
    codes = loaded.signatures["encode_audio"](waveform=tf.constant(wave))["codes"].numpy()
    from mufm.codec.tokenizer import encode

    want = np.asarray(encode(*cascade.codec.parts, wave, block_frames=None))
    assert codes.shape == want.shape and (codes == want).mean() > 0.99  # ties may flip
    back = loaded.signatures["decode_codes"](codes=tf.constant(want))["waveform"].numpy()
    assert back.shape == (2, 9600) and np.all(np.isfinite(back))


@pytest.fixture(scope="module")
def server(exported):
    from mufm.serve.batching import BatchingConfig
    from mufm.serve.server import ModelServer, ServeConfig

    s = ModelServer(ServeConfig(model_dir=exported[0], port=0, max_body_bytes=4096,
                                batching=BatchingConfig(max_batch_size=4, max_enqueued_batches=2,
                                                        allowed_batch_sizes=(1, 4))),
                    log=lambda m: None)
    s.load()
    host, port = s.start()
    yield s, f"http://{host}:{port}"
    s.stop()


def test_rest_api_conventions(server):
    import soundfile as sf

    from mufm.serve.client import Client, ServingError

    s, url = server
    c = Client(url, "tiny")
    assert c.status()["model_version_status"][0]["state"] == "AVAILABLE"
    sigs = c.metadata()["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["text"]["dtype"] == "DT_STRING"
    wav = c.generate_wav(TEXTS[:2], seconds=1.0, seed=3)
    audio, sr = sf.read(io.BytesIO(wav[0]))
    assert sr == 24000 and audio.shape == (24000,)
    cols = c.predict({"text": TEXTS[:2], "seconds": 1.0, "seed": 3}, signature="generate_codes")
    assert np.asarray(cols["outputs"]["codes"]).shape == (2, 50, 4)  # 1 s: 50 frames
    with pytest.raises(ServingError) as e:
        Client(url, "nope").status()
    assert e.value.status == 404
    with pytest.raises(ServingError) as e:
        Client(url, "tiny", version=7).metadata()
    assert e.value.status == 404


def _post(url, body: bytes, headers=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + "/v1/models/tiny:predict", data=body, method="POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400),
    (b'{"instances": [{"text": 3, "seconds": 1, "seed": 0}]}', 400),
    (b'{"instances": [{"text": "", "seconds": 1, "seed": 0}]}', 400),
    (b'{"instances": [{"text": "x", "seconds": -1, "seed": 0}]}', 400),
    (b'{"instances": [{"text": "x", "seconds": 1e9, "seed": 0}]}', 400),
    (b'{"signature_name": "nope", "instances": [1]}', 400),
    (b'{"instances": [], "inputs": {}}', 400),
    (b'{"inputs": {"text": ["x"]}}', 400),
    (b'{"instances": [{"text": "x", "seconds": 1, "seed": 0}]}' + b" " * 5000, 413),
])
def test_bad_requests_refused_and_server_keeps_serving(server, body, status):
    s, url = server
    got, answer = _post(url, body)
    assert got == status and "error" in answer
    ok, _ = _post(url, b'{"signature_name": "embed_text", "instances": ["soft piano"]}')
    assert ok == 200


def test_concurrent_clients_are_batched(server):
    s, url = server
    results, before = [], dict(s.batcher.stats)

    def go(i):
        body = json.dumps({"signature_name": "generate_codes",
                           "instances": [{"text": "a calm piano piece", "seconds": 1.0,
                                          "seed": i}]}).encode()
        results.append(_post(url, body))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [200] * 4
    batches = s.batcher.stats["batches"] - before.get("batches", 0)
    assert batches < 4  # at least two requests shared a call

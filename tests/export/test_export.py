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


def _call(loaded, signature, texts, seconds, seeds, **temperatures):
    """`temperatures`: {stage: value or per-row values} of the generate_sampled signatures."""
    import tensorflow as tf

    temps = {f"{k}_temperature": tf.constant(v, tf.float32) for k, v in temperatures.items()}
    out = loaded.signatures[signature](text=tf.constant(texts),
                                       seconds=tf.constant(seconds, tf.float64),
                                       seed=tf.constant(seeds, tf.int64), **temps)
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
    for sig in ("serving_default", "generate_wav", "generate_codes", "generate_sampled",
                "generate_sampled_wav", "embed_text", "embed_audio", "encode_audio",
                "decode_codes", "semantic_tokens"):
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


def test_temperature_overrides_exact_per_row(cascade, loaded):
    """generate_sampled: each row at its own temperatures equals the JAX cascade with those
    temperatures in its SamplingConfigs; a negative one keeps the stage's own; the default
    signatures are the overrides' program fed the defaults."""
    import dataclasses

    import tensorflow as tf

    from mufm.sample.cascade import STAGES

    # Powers of two and 0 (greedy), per row: [semantic, coarse, fine].
    temps = [[0.5, -1.0, 0.0], [-1.0, 2.0, -1.0]]
    texts, seeds = TEXTS[:2], [5, 1]
    out = _call(loaded, "generate_sampled", texts, 1.0, seeds,
                **{name: [row[j] for row in temps] for j, name in enumerate(STAGES)})
    codes = out["codes"]
    assert codes.shape == (2, 50, 4) and out["waveform"].shape == (2, 24000)
    default = _call(loaded, "generate_codes", texts, [1.0, 1.0], seeds)["codes"]
    for r, (t, s) in enumerate(zip(texts, seeds)):
        configs = {name: dataclasses.replace(cascade.configs[name], temperature=temps[r][j])
                   for j, name in enumerate(STAGES) if temps[r][j] >= 0}
        ref = cascade.generate_tokens([t], 1.0, seed=s, configs=configs, progress=False)
        np.testing.assert_array_equal(codes[r], ref["acoustic"][0])
        assert (codes[r] != default[r]).any()  # the override changed the row
    unchanged = _call(loaded, "generate_sampled", texts, 1.0, seeds,
                      **{name: -1.0 for name in STAGES})
    np.testing.assert_array_equal(unchanged["codes"], default)
    with pytest.raises(tf.errors.InvalidArgumentError, match="fine_temperature must be <="):
        _call(loaded, "generate_sampled", texts[:1], 1.0, 0, semantic=1.0, coarse=1.0,
              fine=1e9)


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
    greedy_fine, _ = sf.read(io.BytesIO(c.generate_wav(TEXTS[:1], 1.0, seed=3,
                                                       temperatures={"fine": 0.0})[0]))
    assert greedy_fine.shape == (24000,) and not np.array_equal(greedy_fine, audio)
    with pytest.raises(ValueError, match="unknown stages"):
        c.generate_wav(TEXTS[:1], 1.0, temperatures={"finest": 0.5})
    health = c.health()
    assert health["status"] == "ok" and health["models"] == {"tiny/1": "AVAILABLE"}
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
    (b'{"signature_name": "generate_sampled_wav", "instances": [{"text": "x", "seconds": 1, '
     b'"seed": 0, "semantic_temperature": NaN, "coarse_temperature": -1, '
     b'"fine_temperature": -1}]}', 400),
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


# -- faults: a client gone, load, shutdown -------------------------------------------------
# The real server and batcher over the real SavedModel; only the batch thread is held at a
# gate (a ModelServer whose runner waits for an Event) so each test can put a request in a
# known state: running, queued, or in flight when stop() is called.

def _body(signature="generate_codes", seconds=0.5, seed=0) -> bytes:
    return json.dumps({"signature_name": signature, "instances": [
        {"text": "a calm piano piece", "seconds": seconds, "seed": seed}]}).encode()


def _until(cond, timeout=30.0, what="condition"):
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _gated_server(server):
    """(server, url, gate, entered): a second server over the first one's loaded versions
    whose batch thread sets `entered` and waits for `gate` before each batch."""
    from mufm.serve.batching import BatchingConfig
    from mufm.serve.server import ModelServer, ServeConfig

    gate, entered = threading.Event(), threading.Event()

    class Gated(ModelServer):
        def _run_key(self, key, arrays):
            entered.set()
            assert gate.wait(120), "the gate was never opened"
            return super()._run_key(key, arrays)

    g = Gated(ServeConfig(model_dir=server[0].cfg.model_dir, port=0,
                          batching=BatchingConfig(max_batch_size=4, max_enqueued_batches=2,
                                                  allowed_batch_sizes=(1, 4))),
              log=lambda m: None)
    g.versions = server[0].versions
    host, port = g.start()
    return g, f"http://{host}:{port}", gate, entered


@pytest.fixture
def gated(server):
    g, url, gate, entered = _gated_server(server)
    yield g, url, gate, entered
    gate.set()
    g.stop()


def _in_thread(fn, *args):
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


def _raw_predict(url: str, body: bytes):
    import socket

    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % len(body) + body)
    return s


def test_a_client_gone_while_queued_is_never_run(gated):
    g, url, gate, entered = gated
    a, got = _in_thread(_post, url, _body(seed=1))
    assert entered.wait(60)  # the batch thread holds A's batch at the gate
    sock = _raw_predict(url, _body(seed=2))  # B queues behind it ...
    _until(lambda: g.batcher.queued_rows() == 1, what="B queued")
    sock.close()  # ... and hangs up
    _until(lambda: g.stats["abandoned"] == 1, what="B noticed gone")
    rows = g.batcher.stats["rows"]
    gate.set()
    a.join(60)
    assert got[0][0] == 200
    ok, _ = _post(url, b'{"signature_name": "embed_text", "instances": ["soft piano"]}')
    assert ok == 200
    # B was dropped off the queue as cancelled, never run: only the embed_text row ran.
    assert g.batcher.stats["cancelled"] == 1 and g.batcher.stats["rows"] == rows + 1


def test_load_is_bounded_by_the_queue_and_leaves_no_heap_behind(gated):
    import tracemalloc

    g, url, gate, entered = gated
    a, first = _in_thread(_post, url, _body(seed=0))
    assert entered.wait(60)
    # A is running; the queue holds max_enqueued_batches x max_batch_size = 8 rows; of 10
    # more clients, 2 get 503 at once and the other 8 wait.
    clients = [_in_thread(_post, url, _body(seed=i)) for i in range(1, 11)]
    _until(lambda: g.batcher.queued_rows() == 8 and sum(len(o) for _, o in clients) == 2,
           what="8 queued, 2 refused")
    assert sorted(o[0][0] for _, o in clients if o) == [503, 503]
    gate.set()
    for t, _ in [(a, first), *clients]:
        t.join(120)
    assert sorted(o[0][0] for _, o in [(a, first), *clients]) == [200] * 9 + [503] * 2

    def round_of(n, seed):  # n concurrent clients, 1 s of waveform each (~96 KB of float32)
        ts = [_in_thread(_post, url, _body("generate", 1.0, seed + i)) for i in range(n)]
        for t, out in ts:
            t.join(120)
            assert out[0][0] == 200
        return len(json.dumps(ts[0][1][0][1]))

    round_of(8, 100)  # first calls at each batch size, buffers sized
    tracemalloc.start()
    try:
        round_of(8, 200)
        base = tracemalloc.get_traced_memory()[0]
        for r in range(3):
            round_of(8, 300 + 10 * r)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # Anything kept per request (its input arrays, its 96 KB waveform, its JSON) would
    # grow the heap by >= 24 x 96 KB over these 24 requests; allow half of that.
    assert grown < 12 * 96_000, f"the Python heap grew {grown} bytes over 24 requests"


def test_stop_finishes_the_requests_in_flight(server):
    """stop() (SIGTERM / Ctrl-C in the CLI) closes the port, lets the request in flight
    finish and be answered, then returns."""
    g, url, gate, entered = _gated_server(server)
    host, port = g.httpd.server_address[:2]
    try:
        a, got = _in_thread(_post, url, _body(seed=1))
        assert entered.wait(60)
        stopper, _ = _in_thread(g.stop)

        def refused():
            import socket
            try:
                socket.create_connection((host, port), timeout=5).close()
                return False
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:  # the listening socket closed mid-handshake
                return False

        _until(refused, what="the port closed")
        assert stopper.is_alive() and not got  # still waiting for the request in flight
        gate.set()
        a.join(60)
        stopper.join(60)
        assert got[0][0] == 200 and not stopper.is_alive()
    finally:
        gate.set()  # a failed assertion must not leave the batch thread waiting


def test_saved_model_cli_run_serving_default(exported, tmp_path):
    out = tmp_path / "outputs"
    run = subprocess.run([sys.executable, "-m", "mufm.export.saved_model_cli", "run", "--dir",
                          exported[1], "--tag_set", "serve", "--signature_def", "serving_default",
                          "--input_exprs", 'text=[b"a calm piano piece"];seconds=[1.0];seed=[3]',
                          "--outdir", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    wave = np.load(out / "waveform.npy")
    assert wave.shape == (1, 24000) and np.all(np.isfinite(wave)) and np.abs(wave).max() > 0
    assert np.load(out / "sample_rate.npy").tolist() == [24000]

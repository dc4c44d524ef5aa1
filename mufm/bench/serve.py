"""Serving throughput and latency: requests/s and p50/p99 latency of `generate_wav` over the
REST front end (`python -m mufm.serve`, its own process) at 1, 4 and 16 concurrent
clients, against the same signature called in-process on the same SavedModel.

    python -m mufm.bench.serve --model_dir=DIR             # an export (python -m mufm.export)
    python -m mufm.bench.serve --random_runs=cpu           # the CPU cascade's shapes, random
    python -m mufm.bench.serve --random_runs=tiny --seconds=1 --duration_s=5

`--random_runs` writes the cascade with random weights (mufm/sample/random_runs.py) and
exports it first: what the weights are changes neither latency nor throughput, since every
request generates its full length. Each client sends one request at a time (caption,
`--seconds` of audio, its own seed) for `--duration_s`, and at least `--min_requests`;
latency is from sending the request to having decoded the WAV bytes. Before each client
count is timed, each client sends one untimed request: the first batch of a new size costs
a TF XLA compile unless the export's warm-up covered that size.

Figures: in-process latency (batch 1, sequential calls) and rps, and with --random_runs
the JAX cascade's own latency on the same runs (what the export costs or saves); per
client count the served rps, p50, p99 and the mean rows per batch the server ran (from
/healthz). Last line
`serve_rps=<rps at the most clients> p99_s=<p99 there> overhead=<served p50 at 1 client /
in-process p50 - 1>`: the front end's cost (HTTP, JSON, base64, the batching queue's
timeout) as a share of the generation itself.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

TEXTS = ["a calm piano piece", "fast drums and bass", "a slow string quartet",
         "an upbeat pop song with guitar"]


def _export_random(recipe_name: str, seconds: float, root: str):
    """(model dir, cascade): random-weight runs of `recipe_name`, loaded, and exported with
    one bucket of `seconds`."""
    from mufm.export.programs import Programs
    from mufm.export.saved_model import ExportConfig, export
    from mufm.sample.cascade import Cascade
    from mufm.sample.random_runs import RECIPES, write_cascade

    t0 = time.perf_counter()
    runs = write_cascade(os.path.join(root, "runs"), RECIPES[recipe_name])
    cascade = Cascade.from_runs(runs)
    print(f"[bench] wrote and loaded random {recipe_name} runs in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    cfg = ExportConfig(name="bench", max_seconds=seconds, bucket_seconds=seconds,
                       platforms=("cpu",), verify=False)
    path = export(Programs(cascade), os.path.join(root, "export"), cfg, runs=runs,
                  log=lambda m: print(m, flush=True))
    return os.path.dirname(os.path.dirname(path)), cascade


def in_jax(cascade, seconds: float, requests: int) -> list[float]:
    """Latencies of the JAX cascade itself (`Cascade.generate`, batch 1), compiled first."""
    cascade.generate([TEXTS[0]], seconds, seed=0, progress=False)
    lat = []
    for i in range(requests):
        t0 = time.perf_counter()
        cascade.generate([TEXTS[(i + 1) % len(TEXTS)]], seconds, seed=i + 1, progress=False)
        lat.append(time.perf_counter() - t0)
    return lat


def _percentiles(lat: list[float]) -> tuple[float, float]:
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def in_process(model_dir: str, seconds: float, duration_s: float, min_requests: int) -> list[float]:
    """Latencies of sequential batch-1 calls of generate_wav on the loaded SavedModel."""
    from mufm.serve import models as M

    v = M.find_versions(model_dir)[0]
    M.load_version(v, warmup=True, log=lambda m: None)
    row = lambda i: {"text": np.array([TEXTS[i % len(TEXTS)].encode()]),
                     "seconds": np.array([seconds]), "seed": np.array([i])}
    v.run("generate_wav", row(0))  # the first call of a batch size builds TF's kernels
    lat, t_end, i = [], time.perf_counter() + duration_s, 0
    while time.perf_counter() < t_end or len(lat) < min_requests:
        t0 = time.perf_counter()
        out = v.run("generate_wav", row(i))
        assert len(out["wav_bytes"][0]) > 44, "an empty WAV"
        lat.append(time.perf_counter() - t0)
        i += 1
    return lat


def start_server(model_dir: str, extra=()) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "mufm.serve", f"--model_dir={model_dir}",
                             "--port=0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving on "):
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split()[-1]


def served(url: str, name: str, clients: int, seconds: float, duration_s: float,
           min_requests: int) -> tuple[list[float], float]:
    """(latencies, wall seconds) of `clients` closed-loop clients."""
    from mufm.serve.client import Client

    lat, errors, lock = [], [], threading.Lock()
    t_end = time.perf_counter() + duration_s

    def client(k: int):
        c, i = Client(url, name), 0
        while time.perf_counter() < t_end or i * clients + k < min_requests:
            t0 = time.perf_counter()
            try:
                wav = c.generate_wav([TEXTS[(k + i) % len(TEXTS)]], seconds, seed=k * 1000 + i)[0]
                assert len(wav) > 44, "an empty WAV"
            except Exception as e:  # noqa: BLE001 (counted and reported: a bench, not a test)
                with lock:
                    errors.append(repr(e))
                return
            with lock:
                lat.append(time.perf_counter() - t0)
            i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return lat, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mufm.bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model_dir", help="an export's base directory (DIR of DIR/NAME/<version>)")
    src.add_argument("--random_runs", choices=("tiny", "cpu"))
    p.add_argument("--seconds", type=float, default=10.0, help="audio per request")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--duration_s", type=float, default=10.0, help="per client count")
    p.add_argument("--min_requests", type=int, default=3, help="per client count, at least")
    p.add_argument("--serve_flags", default="", help="extra flags of python -m mufm.serve")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="mufm_bench_serve_") as tmp:
        model_dir, cascade = args.model_dir, None
        if args.random_runs:
            model_dir, cascade = _export_random(args.random_runs, args.seconds, tmp)
        from mufm.serve import models as M

        name = M.find_versions(model_dir)[0].name
        lat = in_process(model_dir, args.seconds, args.duration_s, args.min_requests)
        p50_in, p99_in = _percentiles(lat)
        print(f"in-process  batch 1: {len(lat)} requests  rps {1 / np.mean(lat):.3f}  "
              f"p50 {p50_in:.3f} s  p99 {p99_in:.3f} s", flush=True)
        if cascade is not None:
            lat = in_jax(cascade, args.seconds, max(args.min_requests, 2))
            print(f"JAX cascade batch 1: {len(lat)} requests  p50 {_percentiles(lat)[0]:.3f} s "
                  f"(the SavedModel in TF / JAX: {p50_in / _percentiles(lat)[0]:.2f})", flush=True)
            del cascade
        from mufm.serve.client import Client

        proc, url = start_server(model_dir, args.serve_flags.split())
        health = Client(url, name).health
        rows = []
        try:
            for c in clients:
                # Untimed: one request per client, so TF's XLA has compiled each batch size
                # this load makes (the export's warm-up covers ExportConfig.warmup_batch_sizes).
                t0 = time.perf_counter()
                served(url, name, c, args.seconds, 0.0, c)
                print(f"served {c:3d} clients: warm-up round {time.perf_counter() - t0:.1f} s",
                      flush=True)
                before = health()["stats"]
                lat, wall = served(url, name, c, args.seconds, args.duration_s, args.min_requests)
                after = health()["stats"]
                batches = after.get("batches", 0) - before.get("batches", 0)
                per_batch = (after.get("rows", 0) - before.get("rows", 0)) / max(batches, 1)
                p50, p99 = _percentiles(lat)
                rows.append((c, len(lat) / wall, p50, p99))
                print(f"served {c:3d} clients: {len(lat)} requests in {wall:.1f} s  rps "
                      f"{len(lat) / wall:.3f}  p50 {p50:.3f} s  p99 {p99:.3f} s  "
                      f"{per_batch:.2f} rows per batch", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    one = next(r for r in rows if r[0] == min(clients))
    print(f"serve_rps={rows[-1][1]:.4f} p99_s={rows[-1][3]:.4f} overhead={one[2] / p50_in - 1:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

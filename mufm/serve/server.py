"""The REST front end: TF Serving's HTTP API over the SavedModels of mufm/export, so a client
written for TF Serving works against it unchanged (and the other way round).

    GET  /v1/models/NAME[/versions/V]             version status (GetModelStatusResponse)
    GET  /v1/models/NAME[/versions/V]/metadata    signature defs (GetModelMetadataResponse)
    POST /v1/models/NAME[/versions/V]:predict     {"instances": ...} | {"inputs": ...}
    GET  /healthz                                 200 once every model is AVAILABLE

Statuses as TF Serving gives them: 400 for a bad request (bad JSON, wrong types, a check
the graph makes), 404 for an unknown model or version or path, 503 when the batching queue
is full; plus 411 / 413 for a missing / oversized body. Every error body is
{"error": "..."}. Before a generate request is queued its captions, `seconds` and seeds
are checked here, with the export's limits and --max_seconds, so a bad row is refused
alone instead of failing the batch it would join.

Concurrency: a thread per connection (at most --max_connections at once, 503 past that),
requests batched by mufm/serve/batching.py. A request whose client disconnects while it
waits is cancelled, never run. `ModelServer.stop()` (SIGTERM / SIGINT in the CLI) stops
accepting, finishes what is in flight and queued, then returns.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import http.server
import json
import math
import re
import select
import socket
import threading
import time
from typing import Any

import numpy as np

from mufm.serve import models as M
from mufm.serve.batching import Batcher, BatchingConfig, QueueFull, broadcast_rows, rows_of
from mufm.serve.rest import BadRequest, format_predict, parse_body, request_arrays

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?P<rest>/metadata|:predict)?$")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_dir: str
    model_names: tuple = ()  # () : every model under model_dir
    host: str = "127.0.0.1"  # loopback unless asked: nothing here authenticates
    port: int = 8501  # TF Serving's REST port; 0: any free port
    all_versions: bool = False  # TF Serving's default policy serves the newest only
    enable_batching: bool = True
    batching: BatchingConfig = BatchingConfig()
    max_body_bytes: int = 16 << 20
    max_seconds: float = 0.0  # the longest clip a request may ask for; 0: the export's limit
    max_connections: int = 64
    request_timeout_s: float = 600.0  # a request that has waited this long gets a 503
    warmup: bool = True
    verbose: bool = False

    def __post_init__(self):
        if self.max_body_bytes < 1 or self.max_connections < 1 or self.request_timeout_s <= 0:
            raise ValueError("--max_body_bytes, --max_connections and --request_timeout_s must "
                             "be positive")
        if self.max_seconds < 0:
            raise ValueError(f"--max_seconds={self.max_seconds}: must be >= 0 (0: the export's)")


class ModelServer:
    def __init__(self, cfg: ServeConfig, log=print):
        self.cfg, self.log = cfg, log
        self.versions: dict[str, dict[int, M.Version]] = {}
        self.stats: dict[str, int] = {"requests": 0, "abandoned": 0, "rejected_busy": 0}
        self._stats_lock = threading.Lock()
        self._active = 0
        self.httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batcher = (Batcher(self._run_key, M.cut_rows, cfg.batching)
                        if cfg.enable_batching else None)

    # -- models -----------------------------------------------------------------------------

    def load(self) -> None:
        for v in M.find_versions(self.cfg.model_dir, list(self.cfg.model_names) or None,
                                 self.cfg.all_versions):
            self.versions.setdefault(v.name, {})[v.version] = v
        for by_version in self.versions.values():
            for v in by_version.values():
                M.load_version(v, warmup=self.cfg.warmup, log=self.log)

    def _version(self, name: str, version: str | None) -> M.Version:
        by_version = self.versions.get(name)
        if version is not None and not version.isdigit():
            raise BadRequest(f"version {version!r} is not a number", 400)
        if not by_version:
            what = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise BadRequest(f"Servable not found for request: {what}", 404)
        if version is None:
            return by_version[max(by_version)]
        v = by_version.get(int(version))
        if v is None:
            raise BadRequest(f"Servable not found for request: Specific({name}, {version})", 404)
        return v

    def status(self, name: str, version: str | None) -> dict:
        if version is not None:
            return {"model_version_status": [self._version(name, version).status()]}
        self._version(name, None)
        return {"model_version_status": [v.status() for _, v in
                                         sorted(self.versions[name].items(), reverse=True)]}

    def metadata(self, name: str, version: str | None) -> dict:
        v = self._version(name, version)
        return {"model_spec": {"name": name, "signature_name": "", "version": str(v.version)},
                "metadata": {"signature_def": {"signature_def": v.signature_defs}}}

    def health(self) -> tuple[int, dict]:
        states = {f"{n}/{v.version}": v.state for n, d in self.versions.items() for v in d.values()}
        ok = bool(states) and all(s == "AVAILABLE" for s in states.values())
        body = {"status": "ok" if ok else "loading", "models": states,
                "queued_rows": self.batcher.queued_rows() if self.batcher else 0,
                "stats": dict(self.stats, **(dict(self.batcher.stats) if self.batcher else {}))}
        return (200 if ok else 503), body

    # -- predict ------------------------------------------------------------------------------

    def _run_key(self, key, arrays):
        name, version, signature = key[:3]
        return self.versions[name][version].run(signature, arrays)

    def _check_generate(self, v: M.Version, arrays: dict) -> None:
        """The cascade's own request checks (mufm/sample/requests.py), with the export's
        max_seconds and --max_seconds, on each row."""
        from mufm.sample.requests import MAX_TEMPERATURE, _check_seconds, check_inputs
        from mufm.sample.windows import CascadeError

        limits = [x for x in (M.generate_limits(v)[0], self.cfg.max_seconds) if x > 0]
        limit = min(limits) if limits else math.inf
        try:
            texts = [t.decode("utf-8") for t in np.atleast_1d(arrays["text"])]
        except UnicodeDecodeError:
            raise BadRequest("a text is not UTF-8") from None
        seed = np.asarray(arrays["seed"])
        try:
            check_inputs(texts, 1.0, limit)
            for s in np.atleast_1d(arrays["seconds"]):
                _check_seconds(float(s), limit)
        except CascadeError as e:
            raise BadRequest(str(e)) from None
        if np.any(seed < 0) or np.any(seed >= 2 ** 31):
            raise BadRequest("seed must be in [0, 2**31)")
        # The graph checks the same, but a bad row failing there would fail its whole batch.
        for key in sorted(k for k in arrays if k.endswith("_temperature")):
            t = np.asarray(arrays[key], np.float64)
            if not np.all(np.isfinite(t)) or np.any(t > MAX_TEMPERATURE):
                raise BadRequest(f"{key} must be finite and <= {MAX_TEMPERATURE:g} (0: greedy, "
                                 f"negative: the stage's own)")

    def prepare(self, name: str, version: str | None, body: bytes) -> tuple[tuple, dict, str, int]:
        """(batch key, arrays, format, rows) of a predict request, every check done."""
        v = self._version(name, version)
        if v.state != "AVAILABLE":
            raise BadRequest(f"model {name!r} version {v.version} is {v.state}", 503)
        signature, request, fmt = parse_body(body)
        signature = signature or "serving_default"
        inputs = v.inputs(signature)
        arrays = request_arrays(request, fmt, inputs)
        try:
            rows = rows_of(arrays)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        arrays = broadcast_rows(arrays, rows)
        bucket = None
        if signature in M.GENERATE and {"text", "seconds", "seed"} <= set(arrays):
            self._check_generate(v, arrays)
            bucket = M.bucket(v, arrays["seconds"])
        shapes = tuple((k, a.shape[1:]) for k, a in sorted(arrays.items()))
        return (name, v.version, signature, bucket, shapes), arrays, fmt, rows

    def predict(self, name: str, version: str | None, body: bytes, gone=lambda: False
                ) -> tuple[int, dict] | None:
        """(HTTP status, body), or None when the client went away before its answer."""
        key, arrays, fmt, rows = self.prepare(name, version, body)
        if self.batcher is None:
            return 200, format_predict(self._run_key(key, arrays), fmt)
        try:
            future = self.batcher.submit(key, arrays, rows)
        except QueueFull as e:
            raise BadRequest(str(e), 503) from None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        deadline = time.monotonic() + self.cfg.request_timeout_s
        while True:
            try:
                outputs = future.result(timeout=0.05)
                break
            except concurrent.futures.TimeoutError:
                if gone():
                    future.cancel()  # not yet running: never runs; running: result dropped
                    self._count("abandoned")
                    return None
                if time.monotonic() > deadline:
                    future.cancel()
                    raise BadRequest(f"the request waited over --request_timeout_s="
                                     f"{self.cfg.request_timeout_s:g}", 503) from None
        return 200, format_predict(outputs, fmt)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    # -- the HTTP server -----------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Serves in a background thread; returns (host, port)."""
        self.httpd = _HTTPServer((self.cfg.host, self.cfg.port), _Handler)
        self.httpd.app = self
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        host, port = self.httpd.server_address[:2]
        self.log(f"[serve] REST API on http://{host}:{port}/v1/models/"
                 f"{{{','.join(sorted(self.versions))}}}")
        return host, port

    def stop(self) -> None:
        """Stops accepting, lets every request in flight finish, then stops the batcher."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()  # joins the handler threads (block_on_close)
        if self.batcher is not None:
            self.batcher.stop()
        self.log("[serve] stopped")

    def enter(self) -> bool:
        with self._stats_lock:
            if self._active >= self.cfg.max_connections:
                self.stats["rejected_busy"] += 1
                return False
            self._active += 1
            self.stats["requests"] += 1
            return True

    def leave(self) -> None:
        with self._stats_lock:
            self._active -= 1


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight
    block_on_close = True
    allow_reuse_address = True
    app: ModelServer


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mufm-serve"
    server: _HTTPServer

    def log_message(self, fmt, *args):
        if self.server.app.cfg.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.server.app._count("abandoned")
            self.close_connection = True

    def _gone(self) -> bool:
        """Whether the client closed its side (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        if not app.enter():
            self.close_connection = True
            self._send(503, {"error": f"too many connections (--max_connections="
                                      f"{app.cfg.max_connections})"})
            return
        try:
            status, body = self._route(method)
        except BadRequest as e:
            status, body = e.status, {"error": str(e)}
        except Exception as e:  # noqa: BLE001 (the server keeps serving; the client is told)
            status, body = 500, {"error": f"{type(e).__name__}: {e}"}
        finally:
            app.leave()
        if status is not None:
            self._send(status, body)

    def _route(self, method: str) -> tuple[Any, Any]:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            if method != "GET":
                raise BadRequest("use GET /healthz", 405)
            return app.health()
        m = _PATH.match(path)
        if not m:
            raise BadRequest(f"no such path {path!r}: use /v1/models/NAME[/versions/V]"
                             f"[/metadata|:predict]", 404)
        name, version, rest = m["name"], m["version"], m["rest"]
        if rest == ":predict":
            if method != "POST":
                raise BadRequest(":predict takes POST", 405)
            body = self._body()
            got = app.predict(name, version, body, self._gone)
            if got is None:
                self.close_connection = True
                return None, None
            return got
        if method != "GET":
            raise BadRequest(f"{path} takes GET", 405)
        if rest == "/metadata":
            return 200, app.metadata(name, version)
        return 200, app.status(name, version)

    def _body(self) -> bytes:
        app = self.server.app
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise BadRequest("a predict request needs a Content-Length", 411)
        n = int(length)
        if n > app.cfg.max_body_bytes:
            self.close_connection = True  # the body is never read
            raise BadRequest(f"the request body is {n} bytes, over --max_body_bytes="
                             f"{app.cfg.max_body_bytes}", 413)
        data = self.rfile.read(n)
        if len(data) != n:
            self.close_connection = True
            raise BadRequest("the request body ended early")
        return data

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

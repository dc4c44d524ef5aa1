"""A small client of TF Serving's REST API (works against `python -m mufm.serve` and a real
TF Serving alike):

    from mufm.serve.client import Client
    c = Client("http://127.0.0.1:8501", "mufm")
    c.status()                                   # {"model_version_status": [...]}
    wavs = c.generate_wav(["a calm piano piece"], seconds=10, seed=0)   # [WAV bytes]
    emb = c.predict({"text": ["soft piano"]}, signature="embed_text")["outputs"]

Errors come back as `ServingError` (the HTTP status and the server's {"error": ...})."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request


class ServingError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    def __init__(self, url: str, model: str, version: int | None = None, timeout: float = 600):
        self.url = url.rstrip("/")
        self.base = f"{self.url}/v1/models/{model}"
        if version is not None:
            self.base += f"/versions/{version}"
        self.timeout = timeout

    def _call(self, path: str, body: dict | None = None, *, root: bool = False) -> dict:
        """GET (POST with `body`) the model's `path` (the server's with `root`)."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request((self.url if root else self.base) + path, data=data,
                                     method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw).get("error", raw.decode("utf-8", "replace"))
            except (ValueError, AttributeError):
                message = raw.decode("utf-8", "replace")
            raise ServingError(e.code, message) from None

    def status(self) -> dict:
        return self._call("")

    def health(self) -> dict:
        """`/healthz` (mufm.serve's own, not TF Serving's): state and request counters."""
        return self._call("/healthz", root=True)

    def metadata(self) -> dict:
        return self._call("/metadata")

    def predict(self, inputs=None, *, instances=None, signature: str | None = None) -> dict:
        """Columnar (`inputs`) or row (`instances`) predict; the raw response."""
        body = {"inputs": inputs} if instances is None else {"instances": instances}
        if signature:
            body["signature_name"] = signature
        return self._call(":predict", body)

    def generate_wav(self, texts, seconds: float, seed: int = 0,
                     temperatures: dict | None = None) -> list[bytes]:
        """One WAV file's bytes per caption (signature generate_wav; with `temperatures`,
        {stage: temperature} for some of semantic, coarse, fine, generate_sampled_wav)."""
        rows = [{"text": t, "seconds": seconds, "seed": seed} for t in texts]
        signature = "generate_wav"
        if temperatures:
            stages = ("semantic", "coarse", "fine")
            unknown = set(temperatures) - set(stages)
            if unknown:
                raise ValueError(f"temperatures for unknown stages {sorted(unknown)}; use {stages}")
            # -1: the stage's own temperature (the signature takes all three).
            given = {f"{s}_temperature": float(temperatures.get(s, -1.0)) for s in stages}
            rows = [dict(r, **given) for r in rows]
            signature = "generate_sampled_wav"
        out = self.predict(instances=rows, signature=signature)["predictions"]
        return [base64.b64decode(p["wav_bytes"]["b64"]) for p in out]

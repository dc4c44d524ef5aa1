"""The SavedModels a server holds: `DIR/NAME/<version>/` as `python -m mufm.export` writes
them (and TF Serving reads them), each loaded once, its warm-up requests replayed before it
is AVAILABLE, its signature defs read from saved_model.pb for the metadata API and for
converting REST inputs."""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any

import numpy as np

from mufm.serve.rest import BadRequest

# The signatures that generate, and how each output of theirs is cut to one request's
# rows when a batch held several requests: output -> the output giving each row's length
# (in the output's second axis), times a factor.
GENERATE = ("serving_default", "generate", "generate_wav", "generate_codes", "generate_sampled",
            "generate_sampled_wav")
TRIM = {"waveform": ("lengths", 1), "codes": ("frames", 2)}


@dataclasses.dataclass
class Version:
    """One loaded version of a model."""
    name: str
    version: int
    path: str
    loaded: Any = None  # the tf.saved_model.load object
    signature_defs: dict = dataclasses.field(default_factory=dict)  # name -> SignatureDef dict
    meta: dict = dataclasses.field(default_factory=dict)  # assets.extra/mufm_export.json
    state: str = "START"  # TF Serving's ModelVersionStatus states: START, LOADING, AVAILABLE, END
    error: str = ""
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def inputs(self, signature: str) -> dict[str, str]:
        """{input name: dtype name} of a signature; BadRequest when there is none."""
        sig = self.signature_defs.get(signature)
        if sig is None:
            raise BadRequest(f"signature {signature!r} not found in model {self.name!r} "
                             f"version {self.version}; it has {sorted(self.signature_defs)}")
        return {k: v["dtype"] for k, v in sig["inputs"].items()}

    def status(self) -> dict:
        code = "OK" if not self.error else "UNKNOWN"
        return {"version": str(self.version), "state": self.state,
                "status": {"error_code": code, "error_message": self.error}}

    def run(self, signature: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calls the signature; tf.errors.InvalidArgumentError (a graph check) -> BadRequest."""
        import tensorflow as tf

        fn = self.loaded.signatures[signature]
        specs = fn.structured_input_signature[1]
        feed = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in arrays.items()}
        try:
            out = fn(**feed)
        except tf.errors.InvalidArgumentError as e:
            raise BadRequest(_op_message(e)) from None
        return {k: v.numpy() for k, v in out.items()}


def _op_message(e) -> str:
    """The first line of a TF op error's message (its assertion text)."""
    text = (getattr(e, "message", None) or str(e)).strip()
    first = text.splitlines()[0] if text else "invalid argument"
    return first.replace("assertion failed: ", "").strip()


def signature_defs(path: str) -> dict:
    """{name: SignatureDef as TF Serving's JSON writes it} from DIR/saved_model.pb."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    graph = sm.meta_graphs[0]
    return {k: json_format.MessageToDict(v, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
            for k, v in graph.signature_def.items() if not k.startswith("__")}


def find_versions(model_dir: str, names: list[str] | None = None,
                  all_versions: bool = False) -> list[Version]:
    """The versions to serve under `model_dir` (the export's --out): every model directory
    (or those in `names`), its newest numeric version (TF Serving's default policy), or all."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir={model_dir}: no such directory")
    out = []
    candidates = names or sorted(d for d in os.listdir(model_dir)
                                 if os.path.isdir(os.path.join(model_dir, d))
                                 and not d.startswith("."))
    for name in candidates:
        base = os.path.join(model_dir, name)
        versions = sorted(int(v) for v in (os.listdir(base) if os.path.isdir(base) else [])
                          if v.isdigit() and os.path.isfile(os.path.join(base, v, "saved_model.pb")))
        if not versions:
            if names:
                raise FileNotFoundError(f"{base}: no version directory with a saved_model.pb")
            continue
        for v in versions if all_versions else versions[-1:]:
            out.append(Version(name, v, os.path.join(base, str(v))))
    if not out:
        raise FileNotFoundError(f"{model_dir}: no NAME/<version>/saved_model.pb under it (write "
                                f"one with `python -m mufm.export --out={model_dir}`)")
    return out


def load_version(v: Version, *, warmup: bool = True, log=print) -> Version:
    """Loads the SavedModel and replays its warm-up requests (TF Serving's behaviour): the
    first client never pays a compile."""
    import tensorflow_text  # noqa: F401  (the caption ops)
    import tensorflow as tf

    from mufm.export.saved_model import META_FILE, WARMUP_FILE, read_meta, read_warmup

    v.state = "LOADING"
    t0 = time.perf_counter()
    v.loaded = tf.saved_model.load(v.path)
    v.signature_defs = signature_defs(v.path)
    if os.path.isfile(os.path.join(v.path, "assets.extra", META_FILE)):
        v.meta = read_meta(v.path)
    warm = os.path.join(v.path, "assets.extra", WARMUP_FILE)
    n = 0
    if warmup and os.path.isfile(warm):
        for signature, arrays in read_warmup(warm):
            v.run(signature, arrays)
            n += 1
    v.state = "AVAILABLE"
    log(f"[serve] {v.name} version {v.version}: loaded in {time.perf_counter() - t0:.1f} s "
        f"({n} warm-up requests)")
    return v


def generate_limits(v: Version) -> tuple[float, list[int]]:
    """(max_seconds, bucket frames) of an export's generate signatures."""
    meta = v.meta
    return float(meta.get("max_seconds", 0) or 0), list(meta.get("bucket_frames", []))


def bucket(v: Version, seconds: np.ndarray) -> int:
    """The index of the traced clip length that a request's longest row runs in (the
    export's own choice, mufm/export/saved_model.py)."""
    from mufm.sample.requests import frames_for

    _, frames = generate_limits(v)
    longest = frames_for(float(np.max(seconds)))
    return int(sum(longest > f for f in frames[:-1]))


def cut_rows(outputs: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """One request's rows of a batch's outputs, each trimmed as that request alone would
    have got it (a waveform to its own longest row, not the batch's)."""
    out = {k: v[start:stop] for k, v in outputs.items()}
    for name, (by, factor) in TRIM.items():
        if name in out and by in out:
            out[name] = out[name][:, :factor * int(np.max(out[by]))]
    return out

"""TF Serving's REST conventions, both ways (https://www.tensorflow.org/tfx/serving/api_rest,
notes in third_party/tf_serving/README.md):

- request body: {"signature_name"?: str, "instances": [...]} (row format: one object per
  instance, or bare values for a one-input signature; every input shares the batch) or
  {"inputs": {...} | value} (columnar: each input's whole tensor; scalars allowed);
  never both;
- binary strings as {"b64": "..."}; in responses, an output whose name ends in `_bytes`
  is written as {"b64": ...} and other strings as UTF-8 text;
- responses {"predictions": [...]} (row) or {"outputs": {...} | value} (columnar), a
  one-output signature giving bare values;
- errors {"error": "..."}.

`parse_body` and `request_arrays` turn a body into numpy inputs of the signature's dtypes
(BadRequest on anything else); `format_predict` turns outputs back into the response body.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

# The signature dtypes this front end converts (TF's DataType enum names).
DTYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_INT32": np.int32,
          "DT_INT64": np.int64, "DT_STRING": object, "DT_BOOL": np.bool_}


class BadRequest(ValueError):
    """A request the server refuses with this HTTP status (400 unless said) and message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _strings(value, name: str):
    """Nested lists of str / {"b64": ...} -> the same nesting of bytes."""
    if isinstance(value, list):
        return [_strings(v, name) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {name!r}: invalid base64 in {{\"b64\": ...}}") from None
    raise BadRequest(f"input {name!r}: expected a string or {{\"b64\": ...}}, got "
                     f"{type(value).__name__}")


def to_array(value: Any, dtype_name: str, name: str) -> np.ndarray:
    """One input's JSON value as a numpy array of the signature's dtype."""
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise BadRequest(f"input {name!r}: dtype {dtype_name} is not served over REST here")
    if dtype is object:
        arr = np.array(_strings(value, name), dtype=object)
        if arr.dtype != object or (arr.ndim and any(not isinstance(x, bytes) for x in arr.flat)):
            raise BadRequest(f"input {name!r}: ragged or mixed string lists")
        return arr

    def bad(v):
        return (isinstance(v, (str, dict)) or v is None
                or (isinstance(v, bool) and dtype is not np.bool_))

    flat = value
    while isinstance(flat, list) and flat:
        flat = flat[0]
    if bad(flat) or (isinstance(value, list) and _any(value, bad)):
        raise BadRequest(f"input {name!r}: expected numbers of {dtype_name}, got "
                         f"{json.dumps(value)[:80]}")
    try:
        arr = np.array(value)
    except ValueError:
        raise BadRequest(f"input {name!r}: ragged lists") from None
    if arr.dtype == object:
        raise BadRequest(f"input {name!r}: ragged lists")
    if np.issubdtype(dtype, np.integer):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise BadRequest(f"input {name!r}: expected integers of {dtype_name}")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise BadRequest(f"input {name!r}: out of the range of {dtype_name}")
    return arr.astype(dtype)


def _any(value, bad) -> bool:
    if isinstance(value, list):
        return any(_any(v, bad) for v in value)
    return bad(value)


def parse_body(body: bytes) -> tuple[str | None, dict, str]:
    """(signature_name or None, the request object, "row" | "columnar") of a predict body,
    its shape checked; `request_arrays` then reads the inputs of the chosen signature."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request body is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest("the request body must be a JSON object")
    signature = request.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise BadRequest("signature_name must be a string")
    has_rows, has_cols = "instances" in request, "inputs" in request
    if has_rows == has_cols:
        raise BadRequest("the request must have either 'instances' or 'inputs', not both"
                         if has_rows else "the request has neither 'instances' nor 'inputs'")
    unknown = set(request) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise BadRequest(f"unknown request keys {sorted(unknown)}")
    return signature, request, "row" if has_rows else "columnar"


def request_arrays(request: dict, fmt: str, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    """The signature's inputs (name -> dtype name) from a parsed body."""
    names = sorted(inputs)
    if fmt == "row":
        rows = request["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest("'instances' must be a non-empty list")
        if all(isinstance(r, dict) and "b64" not in r for r in rows):
            keys = {frozenset(r) for r in rows}
            if len(keys) != 1 or set(next(iter(keys))) != set(names):
                raise BadRequest(f"every instance must name exactly the inputs {names}")
            columns = {n: [r[n] for r in rows] for n in names}
        elif len(names) == 1:
            columns = {names[0]: rows}
        else:
            raise BadRequest(f"instances must be objects naming the inputs {names}")
        return {n: to_array(v, inputs[n], n) for n, v in columns.items()}
    value = request["inputs"]
    if isinstance(value, dict) and "b64" not in value:
        if set(value) != set(names):
            missing, extra = set(names) - set(value), set(value) - set(names)
            raise BadRequest(f"'inputs' must name exactly {names}"
                             + (f"; missing {sorted(missing)}" if missing else "")
                             + (f"; unknown {sorted(extra)}" if extra else ""))
        return {n: to_array(value[n], inputs[n], n) for n in names}
    if len(names) != 1:
        raise BadRequest(f"'inputs' must be an object naming the inputs {names}")
    return {names[0]: to_array(value, inputs[names[0]], names[0])}


def _jsonable(name: str, arr: np.ndarray):
    if arr.dtype == object or arr.dtype.kind == "S":
        def enc(x: bytes):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(x).decode("ascii")}
            try:
                return x.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(x).decode("ascii")}
        return np.vectorize(enc, otypes=[object])(arr).tolist() if arr.ndim else enc(arr.item())
    return arr.tolist()


def format_predict(outputs: dict[str, np.ndarray], fmt: str) -> dict:
    """The response body of a predict call."""
    names = sorted(outputs)
    if fmt == "columnar":
        values = {n: _jsonable(n, outputs[n]) for n in names}
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    sizes = {outputs[n].shape[0] if outputs[n].ndim else None for n in names}
    if len(sizes) != 1 or None in sizes:
        raise BadRequest("the outputs do not share a batch size: use the columnar 'inputs' "
                         "format", 400)
    n_rows = sizes.pop()
    if len(names) == 1:
        return {"predictions": _jsonable(names[0], outputs[names[0]])}
    cols = {n: _jsonable(n, outputs[n]) for n in names}
    return {"predictions": [{n: cols[n][i] for n in names} for i in range(n_rows)]}

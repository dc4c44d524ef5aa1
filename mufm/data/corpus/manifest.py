"""Reading a built corpus directory (no music21, no TensorFlow)."""
from __future__ import annotations

import json
import os

MANIFEST = "manifest.jsonl"
REPORT = "report.json"


def read_manifest(corpus_dir: str) -> list[dict]:
    """Every clip record of a built corpus, sorted by clip id."""
    path = os.path.join(corpus_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: build the corpus first "
                                "(python -m mufm.data.corpus build --config=quick --out=DIR)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_report(corpus_dir: str) -> dict:
    with open(os.path.join(corpus_dir, REPORT)) as f:
        return json.load(f)

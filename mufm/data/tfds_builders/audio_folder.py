"""TFDS builder ``audio_folder``: a user's folder of audio + captions (JSONL/CSV/MusicCaps).

Builder arguments: ``root_dir`` (the folder), ``captions`` (path of the captions file, or
None), and the `FolderOptions` fields (``segment_seconds``, ``max_segments_per_file``,
``min_seconds``, ``pad_short``, ``split_fractions``, ``seed``, ``require_caption``). Give
each folder its own ``data_dir``. Files that cannot be used are skipped, never fatal: the
reasons land in ``<data_dir>/audio_folder/skip_report.json`` and in the log.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from mufm.data import audio_folder as folder
from mufm.data.tfds_builders import features as F


class AudioFolder(tfds.core.GeneratorBasedBuilder):
    """Your own music: decoded to mono 24 kHz, cut into segments, captioned from your file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, root_dir: str | None = None, captions: str | None = None, **kwargs):
        names = {f.name for f in dataclasses.fields(folder.FolderOptions)}
        opts = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        if "split_fractions" in opts:
            opts["split_fractions"] = tuple(opts["split_fractions"])
        self._root_dir, self._captions = root_dir, captions
        self._opts = folder.FolderOptions(**opts)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=F.clip_features(file=tfds.features.Text(),
                                     start_s=tfds.features.Scalar(dtype=np.float32)),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        if not self._root_dir:
            raise ValueError("audio_folder needs root_dir=<folder of audio files>")
        self._report: list = []
        self._clips = 0
        entries = folder.plan_files(self._root_dir, self._captions, self._opts, self._report)
        splits = sorted({e["split"] for e in entries})
        self._pending = set(splits)
        self._write_report()
        return {s: self._generate_examples(s,
                                           [e for e in entries if e["split"] == s]) for s in splits}

    def _write_report(self):
        out = folder.write_report(os.path.join(self.data_dir,
                                               "skip_report.json"), self._report, self._clips)
        self.skip_report = out
        return out

    def _generate_examples(self, split, entries):
        for clip in folder.iter_entry_clips(self._root_dir, entries, self._opts, self._report):
            self._clips += 1
            yield clip["clip_id"], {
                "waveform": F.to_int16(clip["waveform"]), "sample_rate": F.SAMPLE_RATE,
                "caption": clip["caption"], "clip_id": clip["clip_id"], "file": clip["file"],
                "start_s": np.float32(clip["start_s"]),
                "attributes": F.corpus_attributes_example(clip["attributes"]),
                "attributes_json": json.dumps(clip["attributes"], sort_keys=True)}
        self._pending.discard(split)
        out = self._write_report()
        if not self._pending:
            logging.warning("audio_folder: %d clips, %d files skipped %s", out["clips"],
                            out["skipped"],
                            out["skipped_by_reason"])

"""The evaluation's report.html (mufm/eval/report.py), rendered by headless Chromium: the
players and spectrograms are on the page, and the screenshot shows them."""
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from mufm.eval.report import write_report

SR = 24_000


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (launch/install.sh installs it)")
    return path


def results(n):
    rows = [{"id": f"p{i}", "caption": f"caption {i} <with markup & ampersand>", "seed": i,
             "wav": f"wav/{i:03d}.wav", "requested_key": "C major", "requested_bpm": 100.0,
             "estimated_key": "G major", "estimated_bpm": 98.5} for i in range(n)]
    summary = {"generated": {"key_exact": 0.0}, "chance": {"key_exact": 0.1}}
    return {"prompts": n, "seconds": 2.0, "control": summary, "rows": rows,
            "mcc": {"generated": {"matched": 0.1, "mismatched": 0.1}}}


def test_report_renders_players_spectrograms_and_curves_in_chromium(tmp_path):
    exe = chromium()
    out = str(tmp_path)
    os.makedirs(os.path.join(out, "wav"))
    t = np.arange(2 * SR) / SR
    audio = [0.3 * np.sin(2 * np.pi * f * t).astype(np.float32) for f in (220, 330, 440)]
    for i, a in enumerate(audio):
        sf.write(os.path.join(out, "wav", f"{i:03d}.wav"), a, SR)
    history = {0: results(3), 100: dict(results(3), control={"generated": {"key_exact": 0.5}})}
    path = write_report(out, results(3), audio, SR, references={1: audio[0]}, history=history)
    text = open(path, encoding="utf-8").read()
    assert "&lt;with markup &amp; ampersand&gt;" in text  # captions are escaped
    assert os.path.exists(os.path.join(out, "wav", "ref_001.wav"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--window-size=1200,1800", "--hide-scrollbars"]
    dom = subprocess.run([exe, *flags, "--dump-dom", f"file://{path}"], capture_output=True,
                         text=True, timeout=120).stdout
    assert dom.count("<audio") == 4  # 3 generated + 1 reference
    assert dom.count("data:image/png;base64") == 4 + 1  # 4 spectrograms + the curves
    shot = str(tmp_path / "shot.png")
    subprocess.run([exe, *flags, f"--screenshot={shot}", f"file://{path}"], capture_output=True,
                   timeout=120, check=True)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (1800, 1200)
    # The four magma spectrograms (~330 x 150 px each on the 1200 x 1800 page: ~9 % of it)
    # are near-black with coloured bands; a page of text on white whose images failed to
    # load has almost no dark pixels (text strokes: well under 1 %) and no colour.
    dark = pixels.max(axis=-1) < 0.15
    colour = pixels.max(axis=-1) - pixels.min(axis=-1) > 0.3
    assert dark.mean() > 0.04 and colour.mean() > 0.005, (dark.mean(), colour.mean())

"""Shared fixtures: a tiny rendered corpus (6 works x 2 variants) and a 2-work medium subset,
each built once per session."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_ARGS = ["--config=quick", "--limit=6", "--variants=2", "--jobs=2", "--no-progress"]


def run_build(out_dir, *extra, check=True, **popen):
    cmd = [sys.executable, "-m", "mufm.data.corpus", "build", f"--out={out_dir}", *TINY_ARGS,
           *extra]
    return subprocess.run(cmd, cwd=REPO, check=check, capture_output=True, text=True, **popen)


def needs_fluidsynth():
    import shutil
    if shutil.which("fluidsynth") is None or not os.path.exists("/usr/share/sounds/sf2/FluidR3_GM.sf2"):
        pytest.skip("fluidsynth + fluid-soundfont-gm not installed (launch/install.sh installs them)")


class BuildCLI:
    """The corpus CLI as tests drive it (a fixture, since test modules are not a package)."""
    repo = REPO
    tiny_args = TINY_ARGS
    run = staticmethod(run_build)
    needs_fluidsynth = staticmethod(needs_fluidsynth)


@pytest.fixture(scope="session")
def cli():
    return BuildCLI


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Directory of a corpus built by the CLI (uninterrupted): 2 Aird's airs + 4 Bach chorales."""
    needs_fluidsynth()
    out = str(tmp_path_factory.mktemp("corpus") / "tiny")
    run_build(out)
    return out


@pytest.fixture(scope="session")
def tiny_tfds(tiny_corpus, tmp_path_factory):
    """TFDS data dir with mufm_corpus/quick prepared from the tiny corpus."""
    import tensorflow_datasets as tfds
    import mufm.data.tfds_builders  # noqa: F401
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("mufm_corpus/quick", data_dir=data_dir,
                 corpus_dir=tiny_corpus).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def medium_subset(tmp_path_factory):
    """The first 2 works of the medium config (by id: 2 solo Scottish airs), 3 variants each,
    the second and third transposed."""
    needs_fluidsynth()
    out = str(tmp_path_factory.mktemp("corpus") / "medium2")
    run_build(out, "--config=medium", "--limit=2", "--variants=3")  # later flags win
    return out

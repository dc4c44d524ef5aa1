"""TFDS builders (importing this package registers them; it imports TensorFlow).

- ``mufm_corpus`` (configs ``quick`` / ``medium`` / ``full``): the rendered embedded corpus.
- ``audio_folder``: a user's folder of audio files with a captions file.
"""
from mufm.data.tfds_builders.audio_folder import AudioFolder
from mufm.data.tfds_builders.mufm_corpus import MufmCorpus

__all__ = ["AudioFolder", "MufmCorpus"]

"""Audio utilities with no model code: I/O, checked decoding, resampling, loudness, features.

Import the submodules: `mufm.audio.io`, `decode`, `resample`, `loudness`, `features`.
None of them imports TensorFlow or JAX.
"""
SAMPLE_RATE = 24000  # Hz: every waveform of the project (data, codec, metrics); defined only here

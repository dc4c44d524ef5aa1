"""mufm: a MusicLM-style music foundation model in JAX/Flax NNX."""

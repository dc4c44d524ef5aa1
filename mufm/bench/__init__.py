"""mufm.bench."""

"""mufm.audio."""

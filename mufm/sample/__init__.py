"""mufm.sample."""

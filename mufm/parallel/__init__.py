"""mufm.parallel."""

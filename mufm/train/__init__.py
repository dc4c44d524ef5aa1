"""mufm.train."""

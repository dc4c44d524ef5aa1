"""mufm.data."""

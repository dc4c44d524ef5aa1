"""mufm.export."""

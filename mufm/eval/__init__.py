"""mufm.eval."""

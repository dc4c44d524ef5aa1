"""mufm.layers."""

"""mufm.models."""

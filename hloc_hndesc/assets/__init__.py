"""Bundled sample data (the demo photos)."""

"""Pure torch networks (no file or image I/O, nothing of hloc)."""

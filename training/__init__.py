"""Self-supervised training of the project's networks (installed as ``hloc_hndesc.training``)."""

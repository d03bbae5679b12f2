"""Shipped checkpoints, their registry (registry.json) and model cards."""

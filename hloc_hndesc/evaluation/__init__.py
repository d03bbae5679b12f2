"""Evaluation library behind ``benchmarks/`` and the pipelines: dataset readers, matching,
the methods compared (our confs with any weights, and the SIFT baseline), and metrics."""

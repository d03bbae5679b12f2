"""Retrieval: ASMK and hloc pairs writers."""

"""Retrieval: ASMK and hloc pairs writers.

- :mod:`.asmk`: settings (``ASMK_DEFAULTS``), aggregation, binarisation, selectivity kernel;
- :mod:`.codebook`: k-means codebook (faiss) and quantisation;
- :mod:`.inverted_file`: the inverted file, its scoring and its files;
- :mod:`.descriptors`: local descriptors from hloc feature files;
- :mod:`.storage`: atomic, pickle-free npz files;
- :mod:`.global_search`: dot-product rankings of global descriptors (HOW global);
- :mod:`.pairs_from_asmk`: hloc's ``pairs_from_retrieval`` with local descriptors and ASMK.
"""

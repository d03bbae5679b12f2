"""End-to-end hloc pipelines (installed as ``hloc_hndesc.pipelines``).

``python -m hloc_hndesc.pipelines.<aachen_v1_1|inloc|eth_sfm> --dataset D --outputs O [options]``
and ``python -m hloc_hndesc.pipelines.download <aachen_v1_1|inloc|eth> DIR``.

- :mod:`.aachen_v1_1`, :mod:`.inloc`, :mod:`.eth_sfm`: the pipelines (defaults in
  ``configs/pipelines/<name>.yaml``);
- :mod:`.components`: ``--features`` / ``--matcher`` / ``--retrieval`` specs;
- :mod:`.layout`: dataset layout checks (one error listing every problem);
- :mod:`.steps`: resumable steps; :mod:`.runner`: options, log file, exit status;
- :mod:`.plots`, :mod:`.localization_plots`: pictures; :mod:`.scoring`: recall against known poses;
- :mod:`.download`: resumable, checksummed downloads of the public datasets.
"""

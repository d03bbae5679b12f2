"""End-to-end hloc pipelines (installed as ``hloc_hndesc.pipelines``)."""

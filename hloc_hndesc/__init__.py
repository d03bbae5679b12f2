"""hloc-hndesc: learned local features and retrieval for hloc.

Importing the package registers its extractor confs with hloc when hloc is
importable (see :mod:`hloc_hndesc.hloc_plugin`); the core works without hloc.
"""

import logging

__version__ = "0.1.0"

logger = logging.getLogger("hloc_hndesc")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(
        logging.Formatter(
            fmt="[%(asctime)s %(name)s %(levelname)s] %(message)s",
            datefmt="%Y/%m/%d %H:%M:%S",
        )
    )
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

# OpenCV must be loaded before pycolmap (which registering with hloc imports): pycolmap links the
# system libz, and once that is loaded first OpenCV's PNG writer aborts ("free(): invalid pointer").
import cv2  # noqa: E402,F401

from .hloc_plugin import register_if_available  # noqa: E402

HLOC_REGISTERED = register_if_available()

__all__ = ["HLOC_REGISTERED", "__version__", "logger"]

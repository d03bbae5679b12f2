"""Generate synthetic HPatches-layout sequences from real non-training photos.

    python -m benchmarks.make_sequences --images ../shared/data/phototourism_sample/images \
        --images ../shared/data/lightglue_pairs --images ../shared/data/scannet_sample/images \
        --out outputs/sequences --seed 0

Writes ``<out>/i_<stem>/`` and ``<out>/v_<stem>/`` (``1.ppm`` .. ``6.ppm``, ``H_1_2`` ..
``H_1_6``) per photo, and ``<out>/make_sequences.json`` (the command, settings and photos,
which ``benchmarks.homography`` quotes); see :mod:`hloc_hndesc.evaluation.synthetic` for the model. The same
seed gives byte-identical files. Photos under ``train_natural`` are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from hloc_hndesc import logger
from hloc_hndesc.evaluation.synthetic import TrainingPhotoError, generate_sequences, list_photos

#: file written beside the sequences with the command and settings that made them.
RECORD = "make_sequences.json"


def main(argv: list[str] | None = None) -> list[Path]:
    """Parse arguments and write the sequences; returns their folders."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", action="append", required=True, help="folder of photos (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("outputs/sequences"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=800, help="photos are downscaled to this longer side")
    parser.add_argument("--max-photos", type=int, default=None, help="use only this many photos (evenly spaced)")
    parser.add_argument("--kinds", nargs="+", default=["i", "v"], choices=["i", "v"])
    parser.add_argument("--format", default="ppm", choices=["ppm", "png"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        photos = list_photos(args.images, args.max_photos)
    except TrainingPhotoError as error:
        parser.error(str(error))
    folders = generate_sequences(photos, args.out, args.seed, args.max_side, tuple(args.kinds), "." + args.format)
    argv = sys.argv[1:] if argv is None else argv
    record = {
        "command": " ".join(["python", "-m", "benchmarks.make_sequences", *map(shlex.quote, argv)]),
        "seed": args.seed,
        "max_side": args.max_side,
        "kinds": args.kinds,
        "photos": [str(p) for p in photos],
        "sequences": [f.name for f in folders],
    }
    (args.out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    logger.info("Wrote %d sequences from %d photos to %s.", len(folders), len(photos), args.out)
    return folders


if __name__ == "__main__":
    main(sys.argv[1:])

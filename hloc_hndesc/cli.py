"""Command line: ``hloc-hndesc {list,extract,hloc,demo,stylize,train}``.

``hloc-hndesc hloc MODULE ARGS...`` registers this package with hloc and then runs
``python -m hloc.MODULE ARGS...`` unchanged, since hloc's own CLI never imports
plugins (e.g. ``hloc-hndesc hloc extract_features --conf hndesc-r2d2 ...``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import sys
from pathlib import Path

from . import logger
from .confs import CONFS, shipped_weights_name
from .config import ConfigError
from .hloc_plugin import hloc_available, register


def _cmd_list(_: argparse.Namespace) -> int:
    from .weights import read_registry

    shipped = read_registry()
    width = max(map(len, CONFS))
    output_width = max(len(conf["output"]) for conf in CONFS.values())
    for name, conf in CONFS.items():
        weights_name = shipped_weights_name(conf["model"])
        status = f"shipped weights ({weights_name})" if weights_name in shipped else "no shipped weights (pass --weights)"
        print(f"{name:{width}s} {conf['output']:{output_width}s} {status}")
    print(f"hloc registration: {'active' if hloc_available() else 'hloc not installed'}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract
    from .weights import WeightsError

    try:
        report = extract(
            args.conf, args.image_dir, args.output, weights=args.weights,
            overwrite=args.overwrite, as_half=args.as_half, device=args.device,
        )
    except (KeyError, ConfigError, FileNotFoundError, WeightsError) as err:
        logger.error("%s", err.args[0] if err.args else err)
        return 2
    print(
        f"{report.path}: {len(report.written)} written, {len(report.existing)} already complete, "
        f"{len(report.empty)} without keypoints, {len(report.skipped)} skipped"
    )
    return 1 if report.skipped else 0


def run_hloc_module(module: str, argv: list[str]) -> None:
    """Run ``python -m hloc.<module> argv`` with our confs registered.

    ``runpy`` would re-execute the module and rebuild its ``confs`` without ours, so
    the already imported (registered) module is used and only the body of its
    ``if __name__ == "__main__":`` block is run in its namespace.
    """
    register()
    mod = importlib.import_module(f"hloc.{module}")
    source = inspect.getsource(mod)
    blocks = [node.body for node in ast.parse(source).body if _is_main_guard(node)]
    if not blocks:
        raise SystemExit(f"hloc.{module} has no command line")
    code = compile(ast.Module(body=blocks[0], type_ignores=[]), inspect.getfile(mod), "exec")
    old_argv = sys.argv
    sys.argv = [f"hloc.{module}", *argv]
    try:
        exec(code, vars(mod))  # hloc's own installed code, as runpy would run it
    finally:
        sys.argv = old_argv


def _is_main_guard(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _cmd_hloc(args: argparse.Namespace) -> int:
    if not hloc_available():
        logger.error("hloc is not installed; see the README for how to add it.")
        return 2
    run_hloc_module(args.module, args.args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_SCENE, run_demo
    from .weights import WeightsError

    try:
        report = run_demo(
            args.method, args.scene or DEMO_SCENE, args.output, sfm=not args.no_sfm,
            retrieval=args.retrieval, num_matched=args.num_matched,
        )
    except (KeyError, ValueError, FileNotFoundError, WeightsError) as err:
        logger.error("%s", err.args[0] if err.args else err)
        return 2
    print(f"{report.method}: features {report.features}")
    if report.retrieval is not None:
        print(f"pairs: {len(report.pairs)}, each image's {args.num_matched} nearest images by {report.retrieval}")
    for pair in report.pairs:
        print(
            f"{pair.name0} - {pair.name1}: {pair.keypoints[0]}/{pair.keypoints[1]} keypoints, "
            f"{pair.matches} matches, {pair.inliers} inliers (pycolmap F), plot {pair.plot}"
        )
    if report.sfm is not None:
        s = report.sfm
        print(
            f"SfM (hloc): {s['registered']}/{s['total']} images registered, {s['points']} points, "
            f"track length {s['track_length']:.2f}, reprojection error {s['reprojection_error']:.2f} px; "
            f"top view {args.output / 'sfm' / 'model_top_view.png'}"
        )
    return 0


def _cmd_stylize(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from .io import ImageReadError
    from .training.stylization.offline import stylize_folder
    from .weights import WeightsError

    conf = OmegaConf.load(args.config) if args.config else OmegaConf.create()
    flags = {"variant": args.variant, "smoothing": args.smoothing}
    conf = OmegaConf.merge(conf, {k: v for k, v in flags.items() if v is not None})
    if args.references:
        conf = OmegaConf.merge(conf, {"references": {"image_dirs": [str(p) for p in args.references]}})
    if args.night_probability is not None:
        conf = OmegaConf.merge(conf, {"references": {"night_probability": args.night_probability}})
    try:
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(args.overrides))
        report = stylize_folder(
            args.input, args.output, conf, copies=args.copies, workers=args.workers,
            seed=args.seed, max_size=args.max_size, overwrite=args.overwrite,
        )
    except (ConfigError, FileNotFoundError, ImageReadError, WeightsError, ValueError) as err:
        logger.error("%s", err.args[0] if err.args else err)
        return 2
    print(
        f"{report.output_dir}: {len(report.written)} written, {len(report.existing)} already complete, "
        f"{len(report.failed)} failed"
    )
    for name, reason in sorted(report.failed.items()):
        print(f"failed: {name}: {reason}")
    return 1 if report.failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.tasks import load_train_config, run_task
    from .weights import WeightsError

    try:
        metrics = run_task(load_train_config(args.config, args.overrides))
    except (ConfigError, FileNotFoundError, WeightsError) as err:
        logger.error("%s", err.args[0] if err.args else err)
        return 2
    logger.info("training done: %s", {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hloc-hndesc``."""
    parser = argparse.ArgumentParser(prog="hloc-hndesc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the confs and whether weights are shipped").set_defaults(func=_cmd_list)

    ext = sub.add_parser("extract", help="extract features of an image folder into an hloc h5 file")
    ext.add_argument("--conf", required=True, help=f"one of {', '.join(CONFS)}")
    ext.add_argument("image_dir", type=Path)
    ext.add_argument("output", type=Path, help="features file (.h5), hloc layout")
    ext.add_argument("--weights", type=Path, help="checkpoint (ours or official layout)")
    ext.add_argument("--overwrite", action="store_true", help="re-extract complete entries")
    ext.add_argument("--as-half", action="store_true", help="store descriptors as float16 (keypoints stay float32)")
    ext.add_argument("--device", help="torch device (default: cuda if available)")
    ext.set_defaults(func=_cmd_extract)

    run = sub.add_parser("hloc", help="register, then run an hloc module's command line")
    run.add_argument("module", help="e.g. extract_features, match_features, pairs_from_retrieval")
    run.add_argument("args", nargs=argparse.REMAINDER)
    run.set_defaults(func=_cmd_hloc)

    demo = sub.add_parser("demo", help="extract, match, verify and plot on the bundled photos (+ SfM with hloc)")
    demo.add_argument("--method", default="hynet", help="a conf (shipped weights), CONF=WEIGHTS, or sift")
    demo.add_argument("--scene", type=Path, help="folder with an images/ subfolder (default: bundled photos)")
    demo.add_argument("--output", type=Path, default=Path("outputs/demo"))
    demo.add_argument(
        "--retrieval", help="match only shortlisted pairs: a retrieval conf (how, how-asmk) or CONF=WEIGHTS"
    )
    demo.add_argument("--num-matched", type=int, default=5, help="shortlist length per image (with --retrieval)")
    demo.add_argument("--no-sfm", action="store_true", help="skip the reconstruction even if hloc is installed")
    demo.set_defaults(func=_cmd_demo)

    sty = sub.add_parser("stylize", help="write photorealistically stylized copies of an image folder")
    sty.add_argument("input", type=Path, help="folder of content images (searched recursively)")
    sty.add_argument("output", type=Path, help="folder for the PNG outputs and manifest.jsonl")
    sty.add_argument("--variant", choices=("pixel", "feature"), help="WCT space (default: pixel)")
    sty.add_argument("--smoothing", choices=("matting", "guided", "none"), help="default: matting (exact)")
    sty.add_argument("--references", type=Path, action="append", help="reference photo folder (repeatable; default: INPUT)")
    sty.add_argument("--night-probability", type=float, help="share of rendered night references")
    sty.add_argument("--copies", type=int, default=1, help="stylized copies per image")
    sty.add_argument("--workers", type=int, default=1, help="parallel processes")
    sty.add_argument("--seed", type=int, default=0)
    sty.add_argument("--max-size", type=int, help="downscale content images to this longer side first")
    sty.add_argument("--overwrite", action="store_true", help="redo outputs that are already complete")
    sty.add_argument("--config", type=Path, help="YAML of stylization settings")
    sty.add_argument("overrides", nargs="*", help="key=value stylization settings (e.g. guided.radius=8)")
    sty.set_defaults(func=_cmd_stylize)

    train = sub.add_parser("train", help="train a model from a config in configs/train/ (or a YAML path)")
    train.add_argument("--config", required=True, help="bundled name (e.g. stylizer_ae) or YAML path")
    train.add_argument("overrides", nargs="*", help="key=value overrides (e.g. train.steps=100)")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hloc-hndesc`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

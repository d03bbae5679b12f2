"""Command line: ``hloc-hndesc {list,extract,hloc}``.

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
from .confs import CONFS, extractor_class
from .config import ConfigError
from .hloc_plugin import hloc_available, register


def _cmd_list(_: argparse.Namespace) -> int:
    from .weights import read_registry

    shipped = read_registry()
    for name, conf in CONFS.items():
        weights_name = extractor_class(conf["model"]["name"]).weights_name
        status = f"shipped weights ({weights_name})" if weights_name in shipped else "no shipped weights (pass --weights)"
        print(f"{name:12s} {conf['output']:38s} {status}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hloc-hndesc`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

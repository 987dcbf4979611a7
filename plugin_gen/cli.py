"""The ``plugin-gen`` command.

    plugin-gen build --gpu a10 [--db URL | --winners FILE] [--kernels K ...]
                     [--tensorrt-include DIR] [--cuda-include DIR] [--cxx CXX] --out DIR
    plugin-gen manifest DIR/libconformer_trt.so

Exit status 0 on success, 2 with a one-paragraph reason on bad input or a failed build.
"""
from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plugin-gen", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the plugin library for one GPU from its winners")
    b.add_argument("--gpu", required=True,
                   help="target GPU: a10, l4, a100, h100, h200, the device name of another GPU the "
                        "tuner ran on, or auto (this machine's)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--db", help="winners database (SQLAlchemy URL; default: the tuner's, "
                                  "$CONFORMER_TRT_DB or sqlite:///conformer_trt.db)")
    src.add_argument("--winners", help="an `autotune export` JSON file instead of a database")
    b.add_argument("--kernels", nargs="+", help="only these kernels (default: every kernel with "
                                                "winners)")
    b.add_argument("--tensorrt-include", help="TensorRT's include directory (default: "
                                              "$TENSORRT_ROOT/include or the usual install paths)")
    b.add_argument("--cuda-include", help="directory with cuda.h (default: $CUDA_HOME/include, "
                                          "the cuda-toolkit wheel, /usr/local/cuda/include)")
    b.add_argument("--cxx", help="C++ compiler (default: $CXX or g++)")
    b.add_argument("--out", required=True, help="output directory")
    m = sub.add_parser("manifest", help="print the manifest embedded in a built library")
    m.add_argument("library")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "manifest":
        from .loader import Library

        try:
            print(json.dumps(Library(args.library).manifest, indent=1, sort_keys=True))
        except OSError as exc:
            print(f"plugin-gen: error: cannot load {args.library}: {exc}", file=sys.stderr)
            return 2
        return 0
    from cache.winner import InvalidWinner

    from .builder import build
    from .winners import BuildError

    try:
        build(args.gpu, args.out, db=args.db, winners_file=args.winners,
              kernel_names=args.kernels, tensorrt_include=args.tensorrt_include,
              cuda_include=args.cuda_include, cxx=args.cxx, progress=sys.stderr.isatty())
        return 0
    except (BuildError, InvalidWinner, OSError, ValueError) as exc:
        print(f"plugin-gen: error: {exc}", file=sys.stderr)
        return 2

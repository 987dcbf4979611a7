"""``conformer-trt onnx-rewrite MODEL --out OUT [--plugins DIR] [--report FILE]
[--ffn-gemm int4|sparse24 [--int4-group G] [--int4-sym]]``.

Reads MODEL (never writes it), writes the rewritten model to OUT and prints the report (JSON in
FILE with --report). ``--plugins`` is the folder ``plugin-gen build`` wrote: only plugins its
manifest lists, tuned for the model's sizes and dtype, are emitted; without it every kernel of
the contract is assumed. Exit status: 0 written, 2 bad input (not ONNX, an opset outside
13..onnx's newest, a matched LayerNorm or conv module whose sizes or dtype no plugin takes, a bad
manifest). ``--ffn-gemm`` also replaces the feed-forward modules' Linears by the INT4
(quantised here) or 2:4 (weights already 2:4) GEMM plugin.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from .rewrite import INT4_GROUPS, Library, RewriteError, ffn_gemm_forms, rewrite


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conformer-trt onnx-rewrite",
                                description="map an ONNX Conformer's subgraphs to ct_* plugins")
    p.add_argument("model", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--plugins", type=Path, help="the plugin-gen build folder (its manifest.json)")
    p.add_argument("--report", type=Path, help="also write the report here, as JSON")
    p.add_argument("--ffn-gemm", choices=ffn_gemm_forms(),
                   help="also replace the FFN Linears: INT4 weight-only or 2:4 sparse")
    p.add_argument("--int4-group", type=int, default=128, choices=INT4_GROUPS,
                   help="input channels per INT4 scale (default 128)")
    p.add_argument("--int4-sym", action="store_true",
                   help="symmetric INT4 (no zero points)")
    return p


def load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise RewriteError(f"{path}: no such file")
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - protobuf and the checker raise many kinds
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RewriteError(f"{path}: not a valid ONNX model ({first})") from None
    return model


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.out.resolve() == args.model.resolve():
            raise RewriteError("--out must not be the input model (it is never modified)")
        library = Library.load(args.plugins) if args.plugins else None
        model, report = rewrite(load(args.model), library, args.ffn_gemm, args.int4_group,
                                args.int4_sym)
    except RewriteError as err:
        print(f"onnx-rewrite: error: {err}", file=sys.stderr)
        return 2
    onnx.save(model, args.out)
    print(report.text())
    print(f"onnx-rewrite: wrote {args.out}")
    if args.report:
        args.report.write_text(json.dumps({"model": str(args.model), "out": str(args.out),
                                           "plugins": str(args.plugins or ""),
                                           "ffn_gemm": args.ffn_gemm,
                                           **report.to_json()}, indent=1) + "\n")
    return 0

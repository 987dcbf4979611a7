"""The ``conformer-trt`` command.

    conformer-trt build-engine --checkpoint ckpt.pt --source espnet --plugins out/ --out model.engine
        [--prefix encoder.] [--num-heads H] [--input-dim F] [--ln-eps E] [--causal]
        [--dtype float16|bfloat16] [--chunk-size N --num-left-chunks L]
        [--min-batch 1 --opt-batch 16 --max-batch 32 --min-frames 16 --opt-frames 1000 --max-frames 2000]

    conformer-trt onnx-rewrite model.onnx --plugins out/ --out model.plugins.onnx [--report FILE]

The checkpoint is a state_dict (or a dict holding one under "state_dict" or "model") saved with
torch.save; its keys and shapes are checked against the config read from it before anything
else, and every missing, unexpected or mis-shaped key is reported. ``--plugins`` is the folder
``plugin-gen build`` wrote (or its libconformer_trt.so). Exit status: 0 built, 1 failed,
2 bad arguments or checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .weights import SOURCES, from_espnet, from_torchaudio, from_wenet, infer_config_from_state_dict

LOADERS = {"wenet": from_wenet, "espnet": from_espnet, "torchaudio": from_torchaudio}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conformer-trt", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-engine", help="a TensorRT engine of a Conformer checkpoint")
    b.add_argument("--checkpoint", required=True, type=Path)
    b.add_argument("--source", required=True, choices=SOURCES)
    b.add_argument("--prefix", default="", help="key prefix of the encoder (e.g. 'encoder.')")
    b.add_argument("--plugins", required=True, type=Path)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--num-heads", type=int)
    b.add_argument("--input-dim", type=int)
    b.add_argument("--ln-eps", type=float)
    b.add_argument("--causal", action="store_true")
    b.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    b.add_argument("--chunk-size", type=int)
    b.add_argument("--num-left-chunks", type=int, default=-1)
    for name, default in (("min-batch", 1), ("opt-batch", 16), ("max-batch", 32),
                          ("min-frames", 16), ("opt-frames", 1000), ("max-frames", 2000)):
        b.add_argument(f"--{name}", type=int, default=default)
    sub.add_parser("onnx-rewrite", add_help=False,
                   help="rewrite an exported ONNX Conformer to run the ct_* plugins")
    return p


def load_checkpoint(path: Path, source: str, prefix: str, **overrides):
    """The eval-mode reference encoder of a checkpoint file (ValueError on any mismatch)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds for a bad file
        raise ValueError(f"{path}: not a torch.save'd state_dict ({type(err).__name__}: {err})")
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: holds a {type(sd).__name__}, not a state_dict")
    config = infer_config_from_state_dict(sd, source, prefix=prefix,
                                          **{k: v for k, v in overrides.items() if v is not None})
    return LOADERS[source](sd, config, prefix=prefix)


def _build_engine(args) -> int:
    from .tensorrt_backend import Profile, build_engine

    encoder = load_checkpoint(args.checkpoint, args.source, args.prefix,
                              num_heads=args.num_heads, input_dim=args.input_dim,
                              ln_eps=args.ln_eps, causal=args.causal or None)
    library = args.plugins / "libconformer_trt.so" if args.plugins.is_dir() else args.plugins
    if not library.is_file():
        raise ValueError(f"{library}: no plugin library; build one with plugin-gen build")
    profile = Profile(args.min_batch, args.opt_batch, args.max_batch, args.min_frames,
                      args.opt_frames, args.max_frames)
    engine = build_engine(encoder, library, profile, getattr(torch, args.dtype),
                          args.chunk_size, args.num_left_chunks)
    args.out.write_bytes(engine)
    print(f"{args.out}: {len(engine)} bytes, {encoder.config.num_layers} layers, "
          f"batch {profile.min_batch}..{profile.max_batch}, frames "
          f"{profile.min_frames}..{profile.max_frames}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["onnx-rewrite"]:
        from onnx_rewrite.cli import main as onnx_rewrite

        return onnx_rewrite(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _build_engine(args)
    except ValueError as err:        # the checkpoint, the config, the profile
        print(f"conformer-trt: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:      # TensorRT missing or failing
        print(f"conformer-trt: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""What a matcher finds: a subgraph a plugin computes, or a candidate left as it was."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx


@dataclass
class Left:
    """A candidate left as it was."""
    kind: str
    nodes: list[str]
    reason: str


@dataclass
class Match:
    """A subgraph one plugin computes. ``emit(graph, plugin, base)`` returns the nodes that
    replace it (named under ``base``), where ``plugin(inputs, outputs)`` makes the plugin node
    itself (inputs and outputs in the kernel's declaration order). ``fallback`` is the match to
    try when this one cannot be used (a LayerNorm without the residual add it could absorb)."""
    kind: str
    kernel: str
    nodes: list[onnx.NodeProto]
    shape: dict[str, int]            # the kernel's static dims
    scalars: dict[str, float]
    dtype: str                       # of the activations
    emit: Callable[..., list[onnx.NodeProto]]
    note: str = ""
    fallback: Match | None = None

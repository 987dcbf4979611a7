"""The feed-forward modules' Linears -> ``ct_int4_gemm`` (weight-only INT4, quantised here) or
``ct_sparse24_gemm`` (2:4 structured sparsity, for weights that already are 2:4), only when
asked for: ``rewrite(model, ffn_gemm="int4" | "sparse24")``, since both change the weights.

A feed-forward module is ``Linear -> activation -> Linear``, a Linear being ``MatMul(x, W)`` with
W a constant [K, N] (torch's export of ``nn.Linear`` stores the weight transposed) and, when it
has a bias, the ``Add`` of a constant [N] right after; the activation is Swish
(``Mul(h, Sigmoid(h))``) or ``Relu`` and stays as it was. Other MatMuls (the attention's
projections) are not touched. Each Linear becomes one plugin node between reshapes to [-1, K]
and back (the plugins are 2-D). The kernels take fp16/bf16 activations: in a float32 graph
each plugin node gets Casts to float16 around it, and the report says so (bfloat16 graphs are
left: their packed weights would need a bfloat16 numpy type).

INT4 quantises W^T per group of ``group`` input channels along K (asymmetric, with zero points,
unless ``int4_sym``), ``kernels/int4_gemm/packing.py``; 2:4 compresses W^T as it is and leaves a
weight that is not 2:4 with the reason (pruning changes the model: prune and fine-tune first,
``kernels.sparse24_gemm.prune_24``).
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from kernels.int4_gemm import packing as int4_packing
from kernels.sparse24_gemm import packing as sparse_packing

from .graph import Graph, label
from .match import Left, Match

KIND = "ffn_gemm"
KERNELS = {"int4": "int4_gemm", "sparse24": "sparse24_gemm"}
PLUGIN_DTYPES = ("float16",)   # bfloat16 graphs: the packed weights would need ml_dtypes


def find(g: Graph, form: str, group: int = 128, asym: bool = True) -> list[Match | Left]:
    out = []
    for first in (n for n in g.nodes if n.op_type == "MatMul" and _weight(g, n) is not None):
        end = _linear_end(g, first)
        act = _activation(g, end.output[0])
        second = None if act is None else next(
            (c for c in g.consumers(act.output[0]) if c.op_type == "MatMul"
             and c.input[0] == act.output[0] and _weight(g, c) is not None), None)
        if second is not None:
            out += [_linear(g, m, form, group, asym) for m in (first, second)]
    return out


def _weight(g: Graph, matmul) -> np.ndarray | None:
    w = g.const(matmul.input[1])
    return w if w is not None and w.ndim == 2 and w.dtype.kind == "f" else None


def _linear_end(g: Graph, matmul):
    """The bias Add right after the MatMul, if it adds a constant [N]; else the MatMul."""
    users = g.consumers(matmul.output[0])
    n = _weight(g, matmul).shape[1]
    if len(users) == 1 and users[0].op_type == "Add" and len(users[0].input) == 2:
        other = [i for i in users[0].input if i != matmul.output[0]]
        bias = g.const(other[0]) if len(other) == 1 else None
        if bias is not None and bias.shape == (n,):
            return users[0]
    return matmul


def _activation(g: Graph, h: str):
    """The node whose output is act(h) for Swish or ReLU, else None."""
    users = g.consumers(h)
    relu = next((u for u in users if u.op_type == "Relu"), None)
    if relu is not None:
        return relu
    sig = next((u for u in users if u.op_type == "Sigmoid"), None)
    if sig is None:
        return None
    return next((u for u in g.consumers(sig.output[0]) if u.op_type == "Mul"
                 and sorted(u.input) == sorted([h, sig.output[0]])), None)


def _linear(g: Graph, matmul, form: str, group: int, asym: bool) -> Match | Left:
    end = _linear_end(g, matmul)
    nodes = [matmul] if end is matmul else [matmul, end]

    def left(reason):
        return Left(KIND, [label(n) for n in nodes], reason)

    x, w = matmul.input[0], _weight(g, matmul)
    k, n = w.shape
    dtype = g.dtype(x)
    if dtype not in (*PLUGIN_DTYPES, "float32") or g.dtype(matmul.input[1]) != dtype:
        return left(f"activations {dtype} and weight {g.dtype(matmul.input[1])}: the rewrite "
                    "takes float16 (or float32, cast around the plugin) with a weight of that type")
    dims = g.dims(x)
    if dims is None or not dims or dims[-1] != k:
        return left(f"x's last dim is not known to be the weight's K={k}")
    reason = g.used_outside(nodes, {end.output[0]})
    if reason:
        return left(reason)
    act = dtype if dtype in PLUGIN_DTYPES else "float16"
    wt = torch.from_numpy(np.ascontiguousarray(w.T)).double()
    bias = None
    if end is not matmul:
        bias = next(g.const(i) for i in end.input if i != matmul.output[0])
    shape = {"N": n, "K": k, "with_bias": int(bias is not None)}
    try:
        if form == "int4":
            int4_packing.check_dims(n, k, group)
            packed = int4_packing.pack_weight(wt.float(), group, asym, getattr(torch, act))
            shape.update(group=group, asym=int(asym))
        else:
            packed = sparse_packing.compress(wt.float(), getattr(torch, act))
    except ValueError as err:
        return left(str(err))
    tensors = {name: t.numpy() for name, t in packed.items()}
    if bias is not None:
        tensors["bias"] = bias.astype(np.dtype(act))
    note = "" if act == dtype else f"{dtype} activations cast to {act} around the plugin"
    return Match(KIND, KERNELS[form], nodes, shape, {}, act,
                 _emitter(x, k, n, tensors, end.output[0], dtype != act), note=note)


def _emitter(x: str, k: int, n: int, tensors: dict[str, np.ndarray], y: str, cast: bool):
    """Reshape x to [-1, K] (Cast it), the plugin, (Cast back) and reshape to x's leading dims
    by N."""
    def emit(g: Graph, plugin, base: str):
        rows = g.add_initializer(f"{base}/rows_by_k", np.array([-1, k], np.int64))
        ends = [g.add_initializer(f"{base}/{s}", np.array([v], np.int64))
                for s, v in (("zero", 0), ("minus_one", -1), ("n", n))]
        shape, lead, out_shape = (g.fresh(f"{base}/{s}") for s in ("x_shape", "lead", "y_shape"))
        flat, y2 = g.fresh(f"{base}/x_2d"), g.fresh(f"{base}/y_2d")
        nodes = [g.node("Shape", [x], [shape], f"{base}/Shape"),
                 g.node("Slice", [shape, ends[0], ends[1]], [lead], f"{base}/Slice"),
                 g.node("Concat", [lead, ends[2]], [out_shape], f"{base}/Concat", axis=0),
                 g.node("Reshape", [x, rows], [flat], f"{base}/Reshape")]
        if cast:
            half = g.fresh(f"{base}/x_2d_half")
            nodes.append(g.node("Cast", [flat], [half], f"{base}/Cast", to=TensorProto.FLOAT16))
            flat = half
        weights = [g.add_initializer(f"{base}/{name}", value) for name, value in tensors.items()]
        nodes.append(plugin([flat, *weights], [y2]))
        if cast:
            back = g.fresh(f"{base}/y_2d_float")
            nodes.append(g.node("Cast", [y2], [back], f"{base}/Cast", to=TensorProto.FLOAT))
            y2 = back
        nodes.append(g.node("Reshape", [y2, out_shape], [y], f"{base}/Reshape"))
        return nodes
    return emit

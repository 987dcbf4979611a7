"""LayerNorm over the last axis -> ``ct_layernorm``, in both forms exporters write:

* the ``LayerNormalization`` op (opset >= 17);
* its decomposition ``ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div ->
  Mul(weight) -> Add(bias)`` (torch's exporter below opset 17).

The weight and bias must be constants of shape [hidden] and eps a constant scalar. A residual
``Add`` of two same-shaped tensors right before it is absorbed (``with_residual=1``, the plugin's
``sum`` output replaces the add's); the plugin is 2-D, so x goes in as [-1, hidden] and the
outputs come back in x's shape.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, attr, label
from .match import Left, Match

KIND = "layernorm"


def find(g: Graph) -> list[Match | Left]:
    out = []
    for n in g.nodes:
        if n.op_type == "LayerNormalization":
            out.append(_layer_normalization(g, n))
        elif n.op_type == "ReduceMean" and _deviation(g, n) is not None:
            out.append(_decomposed(g, n, _deviation(g, n)))
    return out


def _deviation(g: Graph, mean):
    """The ``Sub(x, mean)`` of a ReduceMean of x: where a decomposed LayerNorm starts."""
    return next((c for c in g.consumers(mean.output[0]) if c.op_type == "Sub"
                 and list(c.input) == [mean.input[0], mean.output[0]]), None)


def _only_consumer(g: Graph, name: str, op_type: str):
    users = g.consumers(name)
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _other_const(g: Graph, node, name: str) -> str | None:
    """The input of a binary ``node`` other than ``name``, if it is a constant."""
    if node is None or len(node.input) != 2 or name not in node.input:
        return None
    other = node.input[1] if node.input[0] == name else node.input[0]
    return other if g.const(other) is not None else None


def _last_axis(g: Graph, x: str, axes: list[int] | None) -> str | None:
    dims = g.dims(x)
    if axes == [-1] or (dims is not None and axes == [len(dims) - 1]):
        return None
    if dims is None:
        return f"axes {axes} of a tensor of unknown rank: not known to be the last axis"
    return f"axes {axes} of a rank-{len(dims)} tensor are not the last axis alone"


def _layer_normalization(g: Graph, n) -> Match | Left:
    def left(reason):
        return Left(KIND, [label(n)], reason)

    reason = _last_axis(g, n.input[0], [attr(n, "axis", -1)])
    if reason:
        return left(reason)
    if len(n.input) < 3 or not n.input[2]:
        return left("no bias input (B): the plugin takes a weight and a bias")
    if any(g.consumers(o) or o in g.graph_outputs for o in n.output[1:] if o):
        return left("its Mean or InvStdDev output is used")
    if attr(n, "stash_type", 1) != 1:
        return left("stash_type is not float32 (the plugin's statistics are)")
    return _finish(g, [n], n.input[0], n.input[1], n.input[2], attr(n, "epsilon", 1e-5),
                   n.output[0])


def _decomposed(g: Graph, mean, sub) -> Match | Left:
    x, dev = mean.input[0], sub.output[0]
    nodes = [mean, sub]

    def left(reason):
        return Left(KIND, [label(n) for n in nodes], reason)

    axes = g.axes(mean, 1)
    reason = _last_axis(g, x, axes)
    if reason:
        return left(reason)
    if attr(mean, "keepdims", 1) != 1:
        return left("the mean does not keep the reduced axis (keepdims=0)")
    users = {c.op_type: c for c in g.consumers(dev)}
    square, div = users.get("Pow"), users.get("Div")
    if square is None or square.input[0] != dev or g.const(square.input[1]) is None \
            or g.const(square.input[1]).size != 1 or float(g.const(square.input[1])) != 2.0:
        return left("x - mean is not squared by Pow(x - mean, 2)")
    nodes.append(square)
    var = _only_consumer(g, square.output[0], "ReduceMean")
    if var is None or g.axes(var, 1) != axes or attr(var, "keepdims", 1) != 1:
        return left("the squared deviation is not averaged over the same axis")
    nodes.append(var)
    add_eps = _only_consumer(g, var.output[0], "Add")
    eps = _other_const(g, add_eps, var.output[0])
    if eps is None or g.const(eps).size != 1:
        users = [c.op_type for c in g.consumers(var.output[0])]
        return left(f"eps is not added to the variance inside the sqrt (the variance feeds "
                    f"{', '.join(users) or 'nothing'}, not Add(variance, scalar eps))")
    nodes.append(add_eps)
    sqrt = _only_consumer(g, add_eps.output[0], "Sqrt")
    if sqrt is None:
        return left("variance + eps is not followed by Sqrt")
    nodes.append(sqrt)
    if div is None or list(div.input) != [dev, sqrt.output[0]]:
        return left("x - mean is not divided by sqrt(variance + eps)")
    nodes.append(div)
    mul = _only_consumer(g, div.output[0], "Mul")
    weight = _other_const(g, mul, div.output[0])
    if weight is None:
        return left("no affine: the normalized tensor is not multiplied by a constant weight")
    nodes.append(mul)
    add = _only_consumer(g, mul.output[0], "Add")
    bias = _other_const(g, add, mul.output[0])
    if bias is None:
        return left("no affine bias: the weighted tensor is not followed by Add(constant bias)")
    nodes.append(add)
    return _finish(g, nodes, x, weight, bias, float(g.const(eps)), add.output[0])


def _finish(g: Graph, nodes, x: str, weight: str, bias: str, eps: float, y: str) -> Match | Left:
    """The checks both forms share, and the match (with the residual add, if there is one)."""
    def left(reason):
        return Left(KIND, [label(n) for n in nodes], reason)

    dims = g.dims(x)
    values = {"weight": g.const(weight), "bias": g.const(bias)}
    if any(v is None for v in values.values()):
        return left("the weight or bias is not a constant")
    w = values["weight"]
    hidden = dims[-1] if dims and isinstance(dims[-1], int) else (w.shape[-1] if w.ndim else 1)
    for what, v in values.items():
        if v.shape != (hidden,):
            return left(f"the {what} has shape {list(v.shape)}, not [{hidden}]: it broadcasts "
                        "over another axis than the normalized one")
    dtype = g.dtype(x) or g.dtype(weight)
    if g.dtype(weight) != dtype or g.dtype(bias) != dtype:
        return left(f"the weight and bias are {g.dtype(weight)}/{g.dtype(bias)}, x is {dtype}")
    reason = g.used_outside(nodes, {y})
    if reason:
        return left(reason)
    plain = Match(KIND, "layernorm", nodes, {"hidden": hidden, "with_residual": 0},
                  {"eps": float(eps)}, dtype, _emitter(hidden, x, None, weight, bias, y, None))
    add = _residual(g, x, hidden, dtype)
    if add is None:
        return plain
    plain.note = f"the residual add {label(add)} stays outside"
    total = add.output[0]
    read = total in g.graph_outputs or any(all(c is not n for n in nodes)
                                           for c in g.consumers(total))
    return Match(KIND, "layernorm", [add, *nodes], {"hidden": hidden, "with_residual": 1},
                 {"eps": float(eps)}, dtype,
                 _emitter(hidden, *add.input, weight, bias, y, total if read else None),
                 fallback=plain)


def _residual(g: Graph, x: str, hidden: int, dtype: str):
    """The Add producing x, if it adds two tensors of one shape (no broadcasting: equal ranks,
    the last dim ``hidden``, no dim known to differ or to be 1 on one side only)."""
    add = g.produced_by(x, "Add")
    if add is None or len(add.input) != 2:
        return None
    a, b = (g.dims(i) for i in add.input)
    if a is None or b is None or len(a) != len(b) or a[-1] != hidden or b[-1] != hidden:
        return None
    if any((isinstance(p, int) and isinstance(q, int) and p != q) or ((p == 1) != (q == 1))
           for p, q in zip(a, b)):
        return None
    return add if all(g.dtype(i) == dtype for i in add.input) else None


def _emitter(hidden: int, x: str, residual: str | None, weight: str, bias: str, y: str,
             total: str | None):
    """The plugin between reshapes to [-1, hidden] and back; ``total`` names the sum output
    where something reads it."""
    def emit(g: Graph, plugin, base: str):
        rows = g.add_initializer(f"{base}/rows_by_hidden", np.array([-1, hidden], np.int64))
        shape = g.fresh(f"{base}/x_shape")
        nodes = [g.node("Shape", [x], [shape], f"{base}/Shape")]
        ins = {"x": x, "residual": residual} if residual else {"x": x}
        flat = [g.fresh(f"{base}/{k}_2d") for k in ins]
        nodes += [g.node("Reshape", [t, rows], [f], f"{base}/Reshape")
                  for t, f in zip(ins.values(), flat)]
        ends = [y] + ([total] if total else [])
        outs = [g.fresh(f"{base}/{k}_2d") for k in ("y", "sum")[:len(ins)]]
        nodes.append(plugin([*flat, weight, bias], outs))
        nodes += [g.node("Reshape", [o, shape], [e], f"{base}/Reshape") for o, e in zip(outs, ends)]
        return nodes
    return emit

"""The Conformer convolution module -> ``ct_conv_module``, as torch exports
``conformer.convolution.ConvolutionModule`` (channels first, between two transposes)::

    x [B, T, D] -> Transpose(0, 2, 1) -> [Where(pad, 0, .)] -> [Pad]   (mask_after_glu=0 site)
      -> Conv 1x1 (D -> 2D) -> Split(2, axis 1) -> a * Sigmoid(b)      (GLU)
      -> [Where(pad, 0, .)] -> [Pad]                                   (mask_after_glu=1 site)
      -> Conv depthwise (group D, kernel K) -> [BatchNormalization] -> h * Sigmoid(h)
      -> Conv 1x1 (D -> D) -> Where(pad, 0, .) -> Transpose(0, 2, 1) -> y [B, T, D]

The padding mask ``pad = Not(Unsqueeze(valid, 1))`` (valid bool [B, T]) is applied at exactly
one of the two input sites and at the output. A causal module pads K-1 zero frames in front, at
the mask's site, and its depthwise conv has no padding; otherwise the conv pads (K-1)/2 frames on
each side. A BatchNormalization is folded into the depthwise weight and bias (torch's exporter
has usually folded it already). The plugin's ``lengths`` is the count of valid frames,
``ReduceSum(valid, 1)``: the same mask exactly when ``valid`` is a length (prefix) mask, which is
what ``make_pad_mask`` and the subsampling's slicing of it give.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from kernels.conv_module import fold_batchnorm

from .graph import Graph, attr, label
from .match import Left, Match

KIND = "conv_module"


class NoMatch(Exception):
    pass


def need(condition, reason: str) -> None:
    if not condition:
        raise NoMatch(reason)


def find(g: Graph) -> list[Match | Left]:
    return [_match(g, n) for n in g.nodes if n.op_type == "Conv" and attr(n, "group", 1) > 1]


def _match(g: Graph, dw) -> Match | Left:
    nodes = [dw]
    try:
        return _walk(g, dw, nodes)
    except NoMatch as err:
        return Left(KIND, [label(n) for n in nodes], str(err))


def _plain(conv) -> bool:
    return attr(conv, "auto_pad", b"NOTSET") == b"NOTSET" \
        and set(attr(conv, "strides", [1])) == {1} and set(attr(conv, "dilations", [1])) == {1}


def _bias(g: Graph, conv, n: int, dtype) -> np.ndarray:
    if len(conv.input) < 3 or not conv.input[2]:
        return np.zeros(n, dtype)
    b = g.const(conv.input[2])
    need(b is not None and b.shape == (n,), f"{label(conv)} has a non-constant bias")
    return b


def _pointwise(g: Graph, conv, out_ch: int, in_ch: int) -> tuple[np.ndarray, np.ndarray]:
    w = None if conv is None else g.const(conv.input[1])
    need(w is not None and w.shape == (out_ch, in_ch, 1) and attr(conv, "group", 1) == 1
         and _plain(conv) and not any(attr(conv, "pads", [0, 0])),
         f"no 1x1 Conv {in_ch} -> {out_ch} with constant weights "
         f"({label(conv) if conv is not None else 'missing'})")
    return w.reshape(out_ch, in_ch), _bias(g, conv, out_ch, w.dtype)


def only_consumer(g: Graph, name: str, op_type: str, what: str):
    users = g.consumers(name)
    need(len(users) == 1 and users[0].op_type == op_type,
         f"{what} is not followed by {op_type} alone (it feeds "
         f"{', '.join(u.op_type for u in users) or 'nothing'})")
    return users[0]


def _valid(g: Graph, cond: str) -> str | None:
    """valid, for a Where condition ``Not(Unsqueeze(valid, 1))`` (through casts to bool)."""
    n = g.producer.get(cond)
    while n is not None and n.op_type == "Cast" and attr(n, "to") == TensorProto.BOOL:
        n = g.producer.get(n.input[0])
    if n is None or n.op_type != "Not":
        return None
    u = g.produced_by(n.input[0], "Unsqueeze")
    if u is None or g.axes(u, 1) != [1]:
        return None
    v = u.input[0]
    return v if g.dtype(v) == "bool" and len(g.dims(v) or []) == 2 else None


def _unmask(g: Graph, t: str, nodes: list) -> tuple[str | None, str]:
    """(valid, the masked tensor) if t is ``Where(pad, 0, tensor)``, else (None, t)."""
    w = g.produced_by(t, "Where")
    if w is None:
        return None, t
    zero, valid = g.const(w.input[1]), _valid(g, w.input[0])
    need(zero is not None and zero.size == 1 and float(zero) == 0.0 and valid is not None,
         f"{label(w)} is not a padding mask Where(Not(Unsqueeze(valid, 1)), 0, x)")
    nodes.append(w)
    return valid, w.input[2]


def _unpad(g: Graph, t: str, nodes: list) -> tuple[int, str]:
    """(frames, the padded tensor) if t is a Pad of zero frames in front of the time axis of
    [B, C, T], else (0, t)."""
    pad = g.produced_by(t, "Pad")
    if pad is None:
        return 0, t
    pads = g.const(pad.input[1])
    value = g.const(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
    ok = attr(pad, "mode", b"constant") == b"constant" and (len(pad.input) < 4
                                                            or not pad.input[3])
    ok = ok and pads is not None and value is not None and not value.any()
    need(ok and list(pads) == [0, 0, int(pads[2]), 0, 0, 0] and pads[2] > 0,
         f"{label(pad)} does not pad zero frames in front of the time axis only")
    nodes.append(pad)
    return int(pads[2]), pad.input[0]


def _glu(g: Graph, t: str, nodes: list):
    """The Split whose halves a and b make ``t = a * Sigmoid(b)``."""
    mul = g.produced_by(t, "Mul")
    need(mul is not None, "the depthwise conv's input is not a GLU (a * Sigmoid(b))")
    nodes.append(mul)
    a, b = mul.input
    sig = g.produced_by(b, "Sigmoid") or g.produced_by(a, "Sigmoid")
    need(sig is not None, "the depthwise conv's input is not a GLU (a * Sigmoid(b))")
    a = a if sig.output[0] == b else b
    nodes.append(sig)
    split = g.produced_by(a, "Split")
    need(split is not None and list(split.output) == [a, sig.input[0]]
         and attr(split, "axis", 0) in (1, -2),
         "the GLU's halves are not the two outputs of one Split over channels")
    parts = g.axes(split, 1) if attr(split, "split") is None else list(attr(split, "split"))
    need(parts is not None and len(set(parts)) <= 1, "the GLU's Split is not into equal halves")
    nodes.append(split)
    return split


def _walk(g: Graph, dw, nodes: list) -> Match:
    w = g.const(dw.input[1])
    group = attr(dw, "group", 1)
    need(w is not None and w.ndim == 3 and w.shape[:2] == (group, 1) and _plain(dw),
         "the grouped Conv is not a 1-D depthwise conv with constant weights, stride 1")
    d, k = w.shape[0], w.shape[2]
    dw_b = _bias(g, dw, d, w.dtype)

    # back from the depthwise conv to the module's input
    pad_glu, t = _unpad(g, dw.input[0], nodes)
    valid_glu, t = _unmask(g, t, nodes)
    split = _glu(g, t, nodes)
    pw1 = g.produced_by(split.input[0], "Conv")
    w1, b1 = _pointwise(g, pw1, 2 * d, d)
    nodes.append(pw1)
    pad_in, t = _unpad(g, pw1.input[0], nodes)
    valid_in, t = _unmask(g, t, nodes)
    tin = g.produced_by(t, "Transpose")
    need(tin is not None and list(attr(tin, "perm", [])) == [0, 2, 1],
         "the module's input is not x [B, T, D] transposed to [B, D, T]")
    nodes.append(tin)
    x = tin.input[0]

    # on from the depthwise conv to the module's output
    h = dw.output[0]
    users = g.consumers(h)
    bn = users[0] if len(users) == 1 and users[0].op_type == "BatchNormalization" else None
    if bn is not None:
        stats = [g.const(i) for i in bn.input[1:5]]
        need(all(s is not None and s.shape == (d,) for s in stats) and len(bn.output) == 1
             and not attr(bn, "training_mode", 0),
             f"{label(bn)} is not an inference BatchNorm with constant statistics")
        dw_w, dw_b = (v.numpy() for v in fold_batchnorm(
            torch.from_numpy(w.astype(np.float64)), torch.from_numpy(dw_b.astype(np.float64)),
            *(torch.from_numpy(s.astype(np.float64)) for s in stats),
            eps=attr(bn, "epsilon", 1e-5)))
        nodes.append(bn)
        h = bn.output[0]
    else:
        dw_w, dw_b = w[:, 0].astype(np.float32), dw_b.astype(np.float32)
    by_op = {u.op_type: u for u in g.consumers(h)}
    sig, mul = by_op.get("Sigmoid"), by_op.get("Mul")
    need(len(g.consumers(h)) == 2 and sig is not None and mul is not None
         and sorted(mul.input) == sorted([h, sig.output[0]]),
         "the depthwise conv (and norm) is not followed by SiLU, h * Sigmoid(h)")
    nodes += [sig, mul]
    pw2 = only_consumer(g, mul.output[0], "Conv", "the SiLU")
    w2, b2 = _pointwise(g, pw2, d, d)
    nodes.append(pw2)
    where = only_consumer(g, pw2.output[0], "Where",
                           "the last conv (the plugin zeroes padded output frames)")
    valid_out, t = _unmask(g, where.output[0], nodes)
    need(t == pw2.output[0], f"{label(where)} does not zero the last conv's padded frames")
    tout = only_consumer(g, where.output[0], "Transpose", "the output mask")
    need(list(attr(tout, "perm", [])) == [0, 2, 1], "the output is not transposed back to "
         "[B, T, D]")
    nodes.append(tout)
    y = tout.output[0]

    # the variant, and the rest of the checks
    need((valid_in is None) != (valid_glu is None),
         "the input is masked at both or neither of the two sites (module input, GLU output)")
    mask_after_glu = int(valid_glu is not None)
    need(valid_out == (valid_glu or valid_in), "the input and output masks differ")
    need(not (pad_in if mask_after_glu else pad_glu),
         "the causal padding is not where the input mask is")
    frames = pad_in + pad_glu
    pads = list(attr(dw, "pads", [0, 0]))
    if frames:
        need(frames == k - 1 and pads == [0, 0],
             f"causal padding of {frames} frames for a kernel of {k} (K-1 needed), conv pads "
             f"{pads}")
    else:
        need(k % 2 == 1 and pads == [(k - 1) // 2] * 2,
             f"the depthwise conv's pads {pads} are not 'same' for its kernel {k}")
    reason = g.used_outside(nodes, {y})
    need(reason is None, reason)
    dtype = g.dtype(x) or str(w1.dtype)
    need(all(str(a.dtype) == dtype for a in (w1, b1, w2, b2)),
         f"the pointwise weights are {w1.dtype}, x is {dtype}")
    weights = {"w1": w1, "b1": b1, "dw_w": dw_w, "dw_b": dw_b, "w2": w2, "b2": b2}
    return Match(KIND, "conv_module", nodes,
                 {"D": d, "K": k, "causal": int(frames > 0), "mask_after_glu": mask_after_glu},
                 {}, dtype, _emitter(x, valid_out, weights, y),
                 note=f"lengths = ReduceSum({valid_out!r}, axis 1), the count of valid frames")


def lengths_of(g: Graph, valid: str) -> tuple[str, list]:
    """int32 [B] valid frames of a [B, T] bool mask, made once per mask."""
    if ("lengths", valid) in g.memo:
        return g.memo["lengths", valid], []
    as_float, total, lengths = (g.fresh(f"{valid}/lengths_{s}") for s in ("f", "sum", "i32"))
    axis = g.add_initializer(f"{valid}/lengths_axis", np.array([1], np.int64))
    nodes = [g.node("Cast", [valid], [as_float], f"{valid}/lengths_Cast", to=TensorProto.FLOAT),
             g.node("ReduceSum", [as_float, axis], [total], f"{valid}/lengths_ReduceSum",
                    keepdims=0),
             g.node("Cast", [total], [lengths], f"{valid}/lengths_Cast", to=TensorProto.INT32)]
    g.memo["lengths", valid] = lengths
    return lengths, nodes


def _emitter(x: str, valid: str, weights: dict, y: str):
    def emit(g: Graph, plugin, base: str):
        lengths, nodes = lengths_of(g, valid)
        names = [g.add_initializer(f"{base}/{k}", v) for k, v in weights.items()]
        return nodes + [plugin([x, lengths, *names], [y])]
    return emit

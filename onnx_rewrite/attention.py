"""Multi-head self-attention -> ``ct_relpos_attention``, as torch exports ESPnet/WeNet's
``RelPositionMultiHeadedAttention`` (and ``MultiHeadedAttention``, plain attention)::

    q, k, v = linear_q/k/v(x)            [B, T, D] each, viewed [B, T, H, d_k], heads first
    ac = (q + u) @ k^T                   (plain attention: q @ k^T, and no bd)
    bd = shift((q + v) @ p^T)            p = linear_pos(pos_emb): [(1,) 2T-1 or T, D]
    attn = Softmax(Where(mask, -big, (ac + bd) / sqrt(d_k)))  [-> Where(mask, 0, .)]
    context = (attn @ v) -> heads last -> [B, T, D]           -> linear_out

It is found from each Softmax by these anchors: the two score MatMuls and the attention-times-v
MatMul, each operand traced through its Transposes and head Reshape to q, k, v and p, the bias
constants u and v, the ``Where`` mask traced to the valid-frame mask ``valid`` [B, T], and the
scale. The rest (the rel_shift's pad-and-reshape, the masking's casts, the shape arithmetic) is
dozens of shape-dependent ops that exporters spell differently, so it is not matched op by op:
the subgraph from (q, k, v, p, valid) to the context is cut out and run in onnx's reference
evaluator on random inputs at two sequence lengths against the kernel's own reference, for each
form the plugin computes (ESPnet's shifted position term, WeNet's un-shifted one, plain
attention). The form that agrees to 1e-4 on every valid frame is the match; if none does, or
the subgraph reads anything else (a chunk mask, say, which is not a length mask), the candidate
is left with the reason.

The plugin's ``lengths`` is ``ReduceSum(valid, 1)``, as for the conv module. Query rows at or
past a sequence's length come out as zeros (the original attends them to the valid keys); the
Conformer's later ops never let padded frames reach a valid one.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from kernels.relpos_attention import HEAD_DIMS
from kernels.relpos_attention import reference as attention_reference

from .conv_module import NoMatch, lengths_of, need
from .graph import Graph, attr, label
from .match import Left, Match

KIND = "relpos_attention"
CHECK_T = (5, 9)          # sequence lengths of the numeric check
CHECK_TOL = 1e-4
FORMS = {1: "ESPnet's shifted position term", 2: "WeNet's un-shifted position term",
         0: "plain attention"}


def find(g: Graph) -> list[Match | Left]:
    return [_match(g, n) for n in g.nodes if n.op_type == "Softmax"]


def _match(g: Graph, softmax) -> Match | Left:
    nodes = [softmax]
    try:
        return _walk(g, softmax, nodes)
    except NoMatch as err:
        return Left(KIND, [label(n) for n in nodes], str(err))


def _heads_source(g: Graph, name: str, nodes: list):
    """Through Transposes (and one Add of a constant bias) to the head Reshape: (its input,
    the bias or None, the Reshape)."""
    bias = None
    while True:
        n = g.producer.get(name)
        need(n is not None, f"{name!r} does not come from a head Reshape")
        nodes.append(n)
        if n.op_type == "Transpose":
            name = n.input[0]
        elif n.op_type == "Add" and bias is None:
            consts = [g.const(i) for i in n.input]
            need(sum(c is not None for c in consts) == 1, f"{label(n)} is not a bias Add")
            bias = next(c for c in consts if c is not None)
            name = n.input[0] if consts[1] is not None else n.input[1]
        elif n.op_type == "Reshape":
            return n.input[0], bias, n
        else:
            raise NoMatch(f"{label(n)} ({n.op_type}) lies between a head Reshape and a MatMul")


def _next(g: Graph, name: str, op_type: str, what: str):
    """The one consumer of ``name`` that is not a Shape (shape arithmetic may read it too)."""
    users = [u for u in g.consumers(name) if u.op_type != "Shape"]
    need(len(users) == 1 and users[0].op_type == op_type,
         f"{what} is not followed by {op_type} alone (it feeds "
         f"{', '.join(u.op_type for u in users) or 'nothing'})")
    return users[0]


def _mask_source(g: Graph, cond: str, nodes: list) -> str:
    """The bool [B, T] frame mask behind a Where's condition (through Cast, Not, Unsqueeze)."""
    name = cond
    while (n := g.producer.get(name)) is not None and n.op_type in ("Cast", "Not", "Unsqueeze"):
        dims = g.dims(name)
        if dims is not None and len(dims) == 2 and g.dtype(name) == "bool":
            break
        name = n.input[0]
    dims = g.dims(name)
    need(dims is not None and len(dims) == 2 and g.dtype(name) == "bool",
         f"the mask {cond!r} is not a [B, T] frame mask unsqueezed (a chunk mask?)")
    return name


def _walk(g: Graph, softmax, nodes: list) -> Match:
    need(attr(softmax, "axis", -1) in (-1, 3), "Softmax over another axis than the keys")
    # forward: [Where(mask, 0, .)] [Cast] -> MatMul(attn, v) -> Transpose -> Reshape = context
    t = softmax.output[0]
    while True:
        users = [u for u in g.consumers(t) if u.op_type != "Shape"]
        need(len(users) == 1, f"the attention weights feed {len(users)} nodes")
        if users[0].op_type not in ("Where", "Cast"):
            break
        nodes.append(users[0])
        t = users[0].output[0]
    attend = users[0]
    need(attend.op_type == "MatMul" and attend.input[0] == t,
         "the attention weights do not meet v in a MatMul")
    nodes.append(attend)
    v_lin, _, _ = _heads_source(g, attend.input[1], nodes)
    out_t = _next(g, attend.output[0], "Transpose", "attn @ v")
    ctx_node = _next(g, out_t.output[0], "Reshape", "the heads-last Transpose")
    ctx = ctx_node.output[0]
    # backward: [Cast] Where(mask, -big, .) [Cast] <- Div/Mul(scale) <- Add(ac, bd) | ac
    x, valid = softmax.input[0], None
    n = g.producer.get(x)
    while n is not None and n.op_type in ("Where", "Cast"):
        nodes.append(n)
        if n.op_type == "Where":
            need(g.const(n.input[1]) is not None, f"{label(n)} fills with a non-constant")
            valid = _mask_source(g, n.input[0], nodes)
            x = n.input[2]
        else:
            x = n.input[0]
        n = g.producer.get(x)
    need(valid is not None, "no key-padding mask before the Softmax")
    need(n is not None and n.op_type in ("Div", "Mul") and g.const(n.input[1]) is not None,
         "the scores are not scaled by a constant")
    nodes.append(n)
    score = g.producer.get(n.input[0])
    need(score is not None and score.op_type in ("Add", "MatMul"), "no score MatMul")
    p_lin = u = vb = None
    if score.op_type == "Add":
        nodes.append(score)
        ac = next((g.producer.get(i) for i in score.input
                   if g.produced_by(i, "MatMul") is not None), None)
        need(ac is not None, "neither addend of the scores is a MatMul")
        bd_name = next(i for i in score.input if g.producer.get(i) is not ac)
    else:
        ac, bd_name = score, None
    nodes.append(ac)
    q_lin, u, q_reshape = _heads_source(g, ac.input[0], nodes)
    k_lin, _, _ = _heads_source(g, ac.input[1], nodes)
    if bd_name is not None:
        need(u is not None, "the position term has no pos_bias_u on q")
        bd = _first_matmul(g, bd_name)
        need(bd is not None, "the position term has no MatMul")
        q2, vb, _ = _heads_source(g, bd.input[0], nodes)
        need(q2 == q_lin and vb is not None, "the position term is not (q + pos_bias_v) @ p^T")
        p_lin, _, _ = _heads_source(g, bd.input[1], nodes)
    h, dk = _head_dims(g, q_reshape, u)
    need(dk in HEAD_DIMS, f"head dim d_k={dk}; ct_relpos_attention takes {list(HEAD_DIMS)}")
    if u is not None:
        need(u.size == h * dk and vb.size == h * dk, "pos_bias_u/v are not [H, d_k]")
    inputs = [q_lin, k_lin, v_lin] + ([p_lin] if p_lin else [])
    sub, masks, consts, shape_only = _subgraph(g, ctx, set(inputs), valid)
    reason = g.used_outside(sub, {ctx})
    need(reason is None, f"cannot replace the attention: {reason}")
    form = _form(g, sub, inputs, masks, consts, shape_only, ctx, h, dk, u, vb)
    dtype = g.dtype(q_lin)
    return Match(KIND, "relpos_attention", sub,
                 {"H": h, "DK": dk, "chunk": 0, "left_chunks": -1, "packed": 0, "rel": form}, {}, dtype,
                 _emitter(q_lin, k_lin, v_lin, p_lin, u, vb, h, dk, valid, ctx, dtype),
                 note=f"{FORMS[form]}, checked by numbers at T={CHECK_T}; lengths = "
                      f"ReduceSum({valid!r}, axis 1); query rows past a length become zeros")


def _head_dims(g: Graph, reshape, u) -> tuple[int, int]:
    """H and d_k of the head split: from shape inference, the bias constant [H, d_k], or the
    constant tail of the Reshape's target shape."""
    dims = g.dims(reshape.output[0])
    if dims is not None and len(dims) == 4 and all(isinstance(d, int) and d > 0
                                                   for d in dims[2:]):
        return dims[2], dims[3]
    if u is not None and u.ndim == 2:
        return int(u.shape[0]), int(u.shape[1])
    target = g.const(reshape.input[1])
    if target is None:
        concat = g.produced_by(reshape.input[1], "Concat")
        tail = [g.const(i) for i in concat.input[-2:]] if concat is not None else [None]
        if all(t is not None and t.size == 1 for t in tail) and len(concat.input) == 4:
            target = np.array([0, 0, *(int(t.ravel()[0]) for t in tail)])
    need(target is not None and len(target) == 4 and min(target[2:]) > 0,
         "the head split's H and d_k are not known")
    return int(target[2]), int(target[3])


def _first_matmul(g: Graph, name: str):
    """The MatMul nearest to ``name`` upstream (breadth first over data inputs)."""
    queue, seen = [name], set()
    while queue:
        n = g.producer.get(queue.pop(0))
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type == "MatMul":
            return n
        if n.op_type not in ("Shape", "Constant"):
            queue += [i for i in n.input if i]
    return None


def _mask_polarity(g: Graph, name: str, valid: str) -> bool | None:
    """Whether ``name`` is ``valid`` (True) or its negation (False) through Cast, Not and
    Unsqueeze only; None when it is not derived from ``valid`` that way."""
    flips = 0
    while name != valid:
        n = g.producer.get(name)
        if n is None or n.op_type not in ("Cast", "Not", "Unsqueeze"):
            return None
        flips += n.op_type == "Not"
        name = n.input[0]
    return flips % 2 == 0


def _subgraph(g: Graph, ctx: str, inputs: set[str], valid: str):
    """The nodes on the way from ``inputs`` and the frame mask to ``ctx`` (graph order), the
    masks it reads (name -> polarity: True where ``valid``), the constants it reads, and the
    outside tensors it reads only for their shapes."""
    seen, stack, masks, consts = set(), [ctx], {}, set()
    while stack:
        name = stack.pop()
        if not name or name in inputs or name in masks or name in consts:
            continue
        polarity = _mask_polarity(g, name, valid)
        if polarity is not None:
            masks[name] = polarity
            continue
        if name in g.inits or g.const(name) is not None:
            consts.add(name)
            continue
        n = g.producer.get(name)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type != "Shape":      # a Shape reads only its input's shape
            stack += list(n.input)
    nodes = [n for n in g.nodes if id(n) in seen]
    reads = {i for n in nodes for i in n.input if i}
    produced = {o for n in nodes for o in n.output}
    shape_only = []
    for name in sorted(reads - produced - inputs - set(masks) - consts):
        users = [n for n in nodes if name in n.input]
        need(all(u.op_type == "Shape" for u in users),
             f"the attention reads {name!r}, which is not q, k, v, p or the frame mask")
        dims = g.dims(name)
        need(dims is not None and len(dims) == 3 and isinstance(dims[2], int),
             f"{name!r}, read for its shape, is not [B, T, C]")
        shape_only.append((name, dims[2]))
    for name in masks:
        need(g.dims(name) is not None and len(g.dims(name)) >= 2,
             f"the mask {name!r} has no known rank")
    return nodes, masks, consts, shape_only


def _form(g, nodes, inputs, masks, consts, shape_only, ctx, h, dk, u, vb) -> int:
    """The plugin form whose reference the subgraph agrees with on random inputs."""
    model = _standalone(g, nodes, inputs + list(masks) + [n for n, _ in shape_only], consts, ctx)
    ev = ReferenceEvaluator(model)
    rng = np.random.default_rng(0)
    dtype = np.float32
    d = h * dk
    rel = len(inputs) == 4
    p_rank = len(g.dims(inputs[3]) or [0, 0]) if rel else 0
    tried = []
    for form in ((1, 2) if rel else (0,)):
        ok = True
        for t in CHECK_T:
            lengths = np.array([t, t - 2])
            valid = np.arange(t)[None, :] < lengths[:, None]
            q, k, v = (rng.standard_normal((2, t, d)).astype(dtype) for _ in range(3))
            feeds = {inputs[0]: q, inputs[1]: k, inputs[2]: v}
            for name, polarity in masks.items():
                rank = len(g.dims(name))
                m = (valid if polarity else ~valid).reshape(2, *[1] * (rank - 2), t)
                feeds[name] = m.astype(helper.tensor_dtype_to_np_dtype(g.types[name].elem_type))
            if rel:
                p = rng.standard_normal(((2 * t - 1) if form == 1 else t, d)).astype(dtype)
                feeds[inputs[3]] = p[None] if p_rank == 3 else p
            feeds.update({n: rng.standard_normal((2, t, c)).astype(dtype) for n, c in shape_only})
            try:
                got = ev.run(None, feeds)[0]
            except Exception as err:  # noqa: BLE001 - a shape this form cannot feed
                ok, why = False, f"fails to run ({type(err).__name__})"
                break
            want = _reference(q, k, v, lengths, h, dk, p if rel else None, u, vb, form)
            diff = np.linalg.norm((got - want)[valid]) / max(np.linalg.norm(want[valid]), 1e-30)
            if not diff <= CHECK_TOL:
                ok, why = False, f"differs by {diff:.2g}"
                break
        if ok:
            return form
        tried.append(f"{FORMS[form]}: {why}")
    raise NoMatch("the subgraph computes none of the plugin's forms (" + "; ".join(tried) + ")")


def _reference(q, k, v, lengths, h, dk, p, u, vb, form):
    import torch

    t = torch.from_numpy
    out = attention_reference.attention(
        t(q).double(), t(k).double(), t(v).double(), t(lengths), h,
        None if p is None else t(p).double(),
        None if u is None else t(np.array(u, np.float64).reshape(h, dk)),
        None if vb is None else t(np.array(vb, np.float64).reshape(h, dk)),
        legacy=form == 2)
    return out.numpy()


def _standalone(g: Graph, nodes, inputs, consts, output) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(g.const(c)), c) for c in sorted(consts)]
    values = [helper.make_tensor_value_info(i, g.types[i].elem_type, None) for i in inputs]
    graph = helper.make_graph(nodes, "attention", values,
                              [helper.make_tensor_value_info(output, 0, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])


def _emitter(q, k, v, p_lin, u, vb, h, dk, valid, ctx, dtype):
    def emit(g: Graph, plugin, base: str):
        lengths, nodes = lengths_of(g, valid)
        ins = [q, k, v]
        if p_lin is not None:
            np_dtype = helper.tensor_dtype_to_np_dtype(g.types[q].elem_type)
            shape = g.add_initializer(f"{base}/p_rows", np.array([-1, h * dk], np.int64))
            p2 = g.fresh(f"{base}/p")
            nodes.append(g.node("Reshape", [p_lin, shape], [p2], f"{base}/p_Reshape"))
            ins += [p2, g.add_initializer(f"{base}/pos_bias_u",
                                          np.asarray(u, np_dtype).reshape(h, dk)),
                    g.add_initializer(f"{base}/pos_bias_v",
                                      np.asarray(vb, np_dtype).reshape(h, dk))]
        return nodes + [plugin(ins + [lengths], [ctx])]
    return emit

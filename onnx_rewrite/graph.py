"""A mutable view of an ONNX graph for pattern matching: who produces and who consumes each
tensor, constant values (initializers, ``Constant`` nodes and small constant sub-expressions),
inferred types and shapes, and a ``replace`` that swaps a subgraph for new nodes, drops what that
left dead, and keeps the node list topologically sorted.
"""
from __future__ import annotations

import heapq
import itertools
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# Ops folded when all their inputs are constant (shape and index arithmetic an exporter leaves,
# e.g. the pads of a causal Pad); anything else is a tensor, never a constant.
FOLDABLE = {"Cast", "Concat", "ConstantOfShape", "Reshape", "Slice", "Transpose", "Unsqueeze",
            "Squeeze", "Gather", "Shape", "Mul", "Add", "Sub", "Div", "Neg", "Identity"}
DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16",
          TensorProto.BFLOAT16: "bfloat16"}


def dtype_name(elem_type: int) -> str:
    return DTYPES.get(elem_type) or TensorProto.DataType.Name(elem_type).lower()


def label(node: onnx.NodeProto) -> str:
    """A node's name, or a stand-in for an unnamed one."""
    return node.name or f"<{node.op_type} -> {node.output[0]}>"


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class Graph:
    """``model`` is edited in place; ``typed`` (the same model after shape inference) is only
    read, for the types and shapes of tensors."""

    def __init__(self, model: onnx.ModelProto, typed: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.types = {v.name: v.type.tensor_type
                      for v in itertools.chain(typed.graph.value_info, typed.graph.input,
                                               typed.graph.output)}
        for i in g.initializer:
            self.types.setdefault(i.name, helper.make_tensor_type_proto(i.data_type, i.dims)
                                  .tensor_type)
        self.graph_outputs = {o.name for o in g.output}
        self._names = {n.name for n in self.nodes} | {o for n in self.nodes for o in n.output} \
            | set(self.inits) | {i.name for i in g.input}
        self._consts: dict[str, np.ndarray | None] = {}
        self.memo: dict = {}         # for matchers: subgraphs shared between replacements
        self._index()

    def _index(self):
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self._consumers = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    self._consumers[i].append(n)

    # ---- reading -----------------------------------------------------------------------------
    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return self._consumers.get(name, [])

    def produced_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op_type and n.domain in ("", "ai.onnx") \
            else None

    def dtype(self, name: str) -> str | None:
        t = self.types.get(name)
        return dtype_name(t.elem_type) if t is not None and t.elem_type else None

    def dims(self, name: str) -> list[int | str | None] | None:
        """Dims as ints (known), strings (symbolic) or None (unknown); None if the rank is."""
        t = self.types.get(name)
        if t is None or not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim]

    def const(self, name: str) -> np.ndarray | None:
        """The value of a tensor that does not depend on the graph's inputs, else None."""
        if name not in self._consts:
            self._consts[name] = self._fold(name)
        return self._consts[name]

    def _fold(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is None or n.domain not in ("", "ai.onnx"):
            return None
        if n.op_type == "Constant":
            return ReferenceEvaluator(n).run(None, {})[0]
        if n.op_type not in FOLDABLE:
            return None
        inputs = {i: self.const(i) for i in n.input if i}
        if any(v is None for v in inputs.values()):
            return None
        ev = ReferenceEvaluator(helper.make_graph(
            [n], "fold", [helper.make_tensor_value_info(i, TensorProto.UNDEFINED, None)
                          for i in inputs], [helper.make_value_info(o, onnx.TypeProto())
                                             for o in n.output]),
            opsets={"": self.opset})
        return dict(zip(n.output, ev.run(None, inputs)))[name]

    def axes(self, node: onnx.NodeProto, input_index: int) -> list[int] | None:
        """A node's ``axes``, an attribute before its opset moved it to input ``input_index``;
        None when it is not a constant, [] when absent."""
        a = attr(node, "axes")
        if a is not None:
            return list(a)
        if len(node.input) > input_index and node.input[input_index]:
            v = self.const(node.input[input_index])
            return None if v is None else [int(x) for x in np.ravel(v)]
        return []

    def used_outside(self, nodes: list[onnx.NodeProto], keep: set[str]) -> str | None:
        """Why the subgraph ``nodes`` cannot be replaced as a whole: a tensor it computes, other
        than those in ``keep`` (what the replacement produces), is read elsewhere."""
        inside = {id(n) for n in nodes}
        for n in nodes:
            for o in n.output:
                if not o or o in keep:
                    continue
                if o in self.graph_outputs:
                    return f"its intermediate tensor {o!r} is a graph output"
                other = [c for c in self.consumers(o) if id(c) not in inside]
                if other:
                    return f"its intermediate tensor {o!r} is also read by {label(other[0])}"
        return None

    # ---- writing -----------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A tensor or node name not used in the graph yet."""
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(value, name)
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str], name: str,
             **attrs) -> onnx.NodeProto:
        return helper.make_node(op_type, inputs, outputs, name=self.fresh(name), **attrs)

    def replace(self, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> list[str]:
        """Put ``new`` where the last of ``old`` was, drop ``old`` and every node and initializer
        that only they read (transitively); returns the labels of the nodes dropped that way."""
        position = max(self.nodes.index(n) for n in old)
        self.nodes[position + 1:position + 1] = new
        gone = {id(n) for n in old}
        self.nodes = [n for n in self.nodes if id(n) not in gone]
        self._index()
        dead: list[str] = []
        suspects = [i for n in old for i in n.input if i]
        while suspects:
            name = suspects.pop()
            if self.consumers(name) or name in self.graph_outputs:
                continue
            if name in self.inits:
                del self.inits[name]
                continue
            n = self.producer.get(name)
            if n is None or any(self.consumers(o) or o in self.graph_outputs for o in n.output):
                continue
            dead.append(label(n))
            self.nodes.remove(n)
            self._index()
            suspects += [i for i in n.input if i]
        return dead

    def finish(self) -> onnx.ModelProto:
        """Write the nodes (topologically sorted, otherwise in their current order) and the
        initializers back to the model; drop value_info of tensors that no longer exist."""
        g = self.model.graph
        known = {i.name for i in g.input} | set(self.inits) | {""}
        order = {id(n): k for k, n in enumerate(self.nodes)}
        waiting = {id(n): sum(1 for i in set(n.input) if i not in known) for n in self.nodes}
        ready = [(order[id(n)], n) for n in self.nodes if waiting[id(n)] == 0]
        heapq.heapify(ready)
        out = []
        while ready:
            _, n = heapq.heappop(ready)
            out.append(n)
            for o in n.output:
                for c in {id(c): c for c in self.consumers(o)}.values():
                    waiting[id(c)] -= 1
                    if waiting[id(c)] == 0:
                        heapq.heappush(ready, (order[id(c)], c))
        if len(out) != len(self.nodes):
            raise RuntimeError("the rewritten graph has a cycle or a dangling input")
        tensors = {o for n in out for o in n.output} | known
        g.ClearField("node")
        g.node.extend(out)
        g.ClearField("initializer")
        g.initializer.extend(self.inits.values())
        kept = [v for v in g.value_info if v.name in tensors]
        g.ClearField("value_info")
        g.value_info.extend(kept)
        return self.model

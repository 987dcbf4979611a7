"""A stand-in for the ``tensorrt`` Python package: the part of the network-definition API that
conformer/tensorrt_backend.py uses, recorded as a graph and evaluated on the CPU in float64
(constants as TensorRT would hold them: rounded to their declared dtype).

It checks what a real engine build would reject in the back end's use of the API: tensor
shapes through every layer, and each ``ct_*`` plugin's fields (exactly the kernel's static dims
and known scalars, as the generated IPluginV3 creators require) and inputs (the kernel's present
tensors, in declaration order, with the extents its TensorSpec expressions give). A plugin runs
the kernel's float64 reference, so a network evaluates to what TensorRT with correct plugins
would compute, up to rounding. It does not model TensorRT's builder, tactics, formats or
precision: those need TensorRT itself (tests/gpu and the ONNX-rewrite GPU tests, where it
imports).

    fake = FakeTensorRT()                       # monkeypatch.setitem(sys.modules, "tensorrt", fake)
    engine = build_engine(encoder, lib, profile)   # bytes naming the recorded network
    out, out_lengths = fake.run(engine, {"feats": feats, "lengths": lengths})
"""
from __future__ import annotations

import ctypes
import enum
import types
from pathlib import Path

import numpy as np
import torch

import kernels
from kernels import expr

DTYPES = ("float16", "bfloat16", "float32", "int32", "int64")
_NP = {"float16": np.float16, "bfloat16": np.int16, "float32": np.float32, "int32": np.int32,
       "int64": np.int64}


class _Names:
    """An enum-like namespace whose members are their own names."""

    def __init__(self, *names):
        for n in names:
            setattr(self, n, n)


class Weights:
    def __init__(self, dtype: str, ptr: int, count: int):
        raw = np.ctypeslib.as_array((ctypes.c_byte * (count * np.dtype(_NP[dtype]).itemsize))
                                    .from_address(ptr)).copy()
        t = torch.from_numpy(raw.view(_NP[dtype]))
        self.value = (t.view(torch.bfloat16) if dtype == "bfloat16" else t)
        self.value = self.value.double() if dtype in ("float16", "bfloat16", "float32") \
            else self.value.long()


class Tensor:
    def __init__(self, layer, index: int):
        self.layer, self.index, self.name = layer, index, f"{layer.kind}:{index}"


class Layer:
    def __init__(self, kind: str, inputs: list, n_outputs: int = 1, **attrs):
        self.kind, self.inputs = kind, list(inputs)
        self.outputs = [Tensor(self, i) for i in range(n_outputs)]
        self.__dict__.update(attrs)

    def get_output(self, i: int) -> Tensor:
        return self.outputs[i]

    def set_input(self, i: int, tensor: Tensor) -> None:
        self.inputs += [None] * (i + 1 - len(self.inputs))
        self.inputs[i] = tensor


class Network:
    def __init__(self):
        self.layers: list[Layer] = []
        self.outputs: list[Tensor] = []

    def _add(self, kind, inputs, n_outputs=1, **attrs) -> Layer:
        layer = Layer(kind, inputs, n_outputs, **attrs)
        self.layers.append(layer)
        return layer

    def add_input(self, name, dtype, shape):
        t = self._add("input", [], name=name, dtype=dtype, shape=tuple(shape)).get_output(0)
        t.name = name
        return t

    def add_constant(self, shape, weights):
        return self._add("constant", [], value=weights.value.reshape(tuple(shape)))

    def add_shape(self, x):
        return self._add("shape", [x])

    def add_gather(self, data, indices, axis):
        return self._add("gather", [data, indices], axis=axis)

    def add_elementwise(self, a, b, op):
        return self._add("elementwise", [a, b], op=op)

    def add_activation(self, x, kind):
        return self._add("activation", [x], op=kind)

    def add_matrix_multiply(self, a, op_a, b, op_b):
        return self._add("matmul", [a, b], op_a=op_a, op_b=op_b)

    def add_shuffle(self, x):
        return self._add("shuffle", [x], first_transpose=None, reshape_dims=None,
                         second_transpose=None)

    def add_slice(self, x, start, shape, stride):
        return self._add("slice", [x], start=tuple(start), shape=tuple(shape),
                         stride=tuple(stride))

    def add_concatenation(self, tensors):
        return self._add("concatenation", tensors, axis=0)

    def add_convolution_nd(self, x, num_outputs, kernel_shape, kernel, bias):
        return self._add("convolution", [x], num_outputs=num_outputs,
                         kernel_shape=tuple(kernel_shape), kernel=kernel.value,
                         bias=bias.value, stride_nd=(1, 1), padding_nd=(0, 0))

    def add_plugin_v3(self, inputs, shape_inputs, plugin):
        if shape_inputs:
            raise AssertionError("the ct_* plugins take no shape inputs")
        return self._add("plugin", inputs, len(plugin.outputs), plugin=plugin)

    def mark_output(self, t):
        self.outputs.append(t)


class Plugin:
    """A ct_<kernel> plugin: its kernel, static dims and scalars from the fields."""

    def __init__(self, kernel, fields: dict):
        self.kernel = kernel
        statics = set(kernel.static_dims)
        missing, unknown = statics - set(fields), set(fields) - statics - set(kernel.scalars)
        if missing or unknown:
            raise AssertionError(f"ct_{kernel.name}: fields missing {sorted(missing)}, "
                                 f"unknown {sorted(unknown)}")
        self.statics = {d: int(fields[d]) for d in statics}
        self.scalars = {**kernel.scalars, **{s: float(fields[s]) for s in kernel.scalars
                                             if s in fields}}
        self.inputs = [t for t in kernel.present(self.statics) if t.role == "in"]
        self.outputs = [t for t in kernel.present(self.statics) if t.role == "out"]

    def run(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        k = self.kernel
        if len(values) != len(self.inputs):
            raise AssertionError(f"ct_{k.name}: {len(values)} inputs, the kernel takes "
                                 f"{[t.name for t in self.inputs]}")
        shape = dict(self.statics)
        for d in k.dynamic_dims:    # as the generated plugin does: a present input's plain axis
            spec, axis = next((t, a) for t in self.inputs for a, e in enumerate(t.dims) if e == d)
            shape[d] = values[self.inputs.index(spec)].shape[axis]
        named = {}
        for spec, v in zip(self.inputs, values):
            want = tuple(expr.evaluate(e, shape) for e in spec.dims)
            if tuple(v.shape) != want:
                raise AssertionError(f"ct_{k.name}: input {spec.name} has shape "
                                     f"{tuple(v.shape)}, the kernel expects {want} for {shape}")
            named[spec.name] = v.to(torch.int32) if spec.dtype == "int32" else v
        out = k.reference(named, shape, self.scalars)
        return [out[t.name].double() for t in self.outputs]


class Creator:
    def __init__(self, kernel):
        self.kernel = kernel

    def create_plugin(self, name, fields, phase):
        assert name == f"ct_{self.kernel.name}" and phase == "BUILD"
        ctype = {d.name: d.ctype for d in self.kernel.dims}
        for f in fields.fields:    # the generated creator reads each field as its declared type
            want = "FLOAT32" if f.name in self.kernel.scalars else \
                "INT64" if ctype.get(f.name) == "i64" else "INT32"
            if f.kind != want:
                raise AssertionError(f"ct_{self.kernel.name}: field {f.name} is {f.kind}, "
                                     f"the plugin reads {want}")
        return Plugin(self.kernel, {f.name: f.value for f in fields.fields})


class Registry:
    def load_library(self, path):
        return object() if Path(path).exists() else None

    def get_creator(self, name, version, namespace):
        short = name.removeprefix("ct_")
        return Creator(kernels.get(short)) if short in kernels.registry() and version == "1" \
            else None


class PluginField:
    def __init__(self, name, array, kind):
        self.name, self.value, self.kind = name, np.asarray(array).reshape(-1)[0], kind


class PluginFieldCollection:
    def __init__(self, fields):
        self.fields = list(fields)


class _Config:
    def __init__(self):
        self.profiles, self.pools = [], {}

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


def _eval_shuffle(layer, x, dims):
    if layer.first_transpose is not None:
        x = x.permute(*layer.first_transpose)
    if dims is not None:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        x = x.reshape(dims)
    if layer.second_transpose is not None:
        x = x.permute(*layer.second_transpose)
    return x


_EW = {"SUM": torch.add, "SUB": torch.sub, "PROD": torch.mul, "MAX": torch.maximum,
       "MIN": torch.minimum, "DIV": torch.div, "FLOOR_DIV": torch.floor_divide}
_ACT = {"RELU": torch.relu, "SIGMOID": torch.sigmoid}


class FakeTensorRT(types.ModuleType):
    """The module object: install it as sys.modules["tensorrt"]."""

    def __init__(self):
        super().__init__("tensorrt")
        self.__version__ = "fake"
        for d in DTYPES:
            setattr(self, d, d)
        self.ElementWiseOperation = _Names(*_EW)
        self.ActivationType = _Names(*_ACT)
        self.MatrixOperation = _Names("NONE", "TRANSPOSE")
        self.PluginFieldType = _Names("INT32", "INT64", "FLOAT32")
        self.TensorRTPhase = _Names("BUILD", "RUNTIME")
        self.MemoryPoolType = _Names("WORKSPACE")
        self.NetworkDefinitionCreationFlag = enum.IntEnum("Flag", {"STRONGLY_TYPED": 5})
        self.Weights, self.PluginField = Weights, PluginField
        self.PluginFieldCollection = PluginFieldCollection
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level=2: None})
        self.networks: dict[bytes, tuple[Network, _Config]] = {}
        registry = Registry()
        self.get_plugin_registry = lambda: registry
        fake = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                assert flags == 1 << 5, "the back end builds a strongly typed network"
                return Network()

            create_builder_config = staticmethod(_Config)
            create_optimization_profile = staticmethod(_Profile)

            def build_serialized_network(self, network, config):
                key = f"fake engine {len(fake.networks)}".encode()
                fake.networks[key] = (network, config)
                return key

        self.Builder = Builder

    def run(self, engine: bytes, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The network's marked outputs for ``inputs`` (by input name), float64 or int64."""
        net, config = self.networks[engine]
        for name, t in inputs.items():
            lo, _, hi = config.profiles[0].shapes[name]
            if not all(a <= n <= b for a, n, b in zip(lo, t.shape, hi)):
                raise ValueError(f"{name} {tuple(t.shape)} is outside the profile {lo} .. {hi}")
        values: dict[int, list[torch.Tensor]] = {}

        def value(t: Tensor) -> torch.Tensor:
            if id(t.layer) not in values:
                values[id(t.layer)] = evaluate(t.layer)
            return values[id(t.layer)][t.index]

        def evaluate(layer: Layer) -> list[torch.Tensor]:
            ins = [None if t is None else value(t) for t in layer.inputs]
            k = layer.kind
            if k == "input":
                x = inputs[layer.name]
                return [x.double() if x.is_floating_point() else x.long()]
            if k == "constant":
                return [layer.value]
            if k == "shape":
                return [torch.tensor(ins[0].shape, dtype=torch.long)]
            if k == "gather":
                return [torch.index_select(ins[0], layer.axis, ins[1].long())]
            if k == "elementwise":
                return [_EW[layer.op](ins[0], ins[1])]
            if k == "activation":
                return [_ACT[layer.op](ins[0])]
            if k == "matmul":
                a, b = (x.transpose(-1, -2) if op == "TRANSPOSE" else x
                        for x, op in ((ins[0], layer.op_a), (ins[1], layer.op_b)))
                return [torch.matmul(a, b)]
            if k == "shuffle":
                dims = ins[1].tolist() if len(ins) > 1 and ins[1] is not None \
                    else layer.reshape_dims
                return [_eval_shuffle(layer, ins[0], dims)]
            if k == "slice":
                start, shape, stride = (ins[i].tolist() if len(ins) > i and ins[i] is not None
                                        else getattr(layer, n)
                                        for i, n in ((1, "start"), (2, "shape"), (3, "stride")))
                x = ins[0]
                for axis, (s0, n, st) in enumerate(zip(start, shape, stride)):
                    if s0 < 0 or n < 0 or (n and s0 + (n - 1) * st >= x.shape[axis]):
                        raise AssertionError(f"slice {start} {shape} {stride} of {tuple(x.shape)}")
                    x = x.index_select(axis, torch.arange(n) * st + s0)
                return [x]
            if k == "concatenation":
                return [torch.cat(ins, dim=layer.axis)]
            if k == "convolution":
                x, w = ins[0], layer.kernel
                w = w.reshape(layer.num_outputs, -1, *layer.kernel_shape)
                return [torch.nn.functional.conv2d(x, w, layer.bias, layer.stride_nd,
                                                   layer.padding_nd)]
            if k == "plugin":
                return layer.plugin.run(ins)
            raise AssertionError(f"layer {k} is not modelled")

        return [value(t) for t in net.outputs]

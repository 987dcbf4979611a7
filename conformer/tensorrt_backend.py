"""The TensorRT back end: the recipe emitted onto a TensorRT network with the generated plugins.

    engine = build_engine(encoder, "out/libconformer_trt.so", Profile(1, 16, 32, 64, 1000, 2000))
    runner = Runner(engine)                        # serialized bytes or a path
    out, out_lengths = runner(feats, lengths)      # torch CUDA tensors

Native layers where TensorRT is good (matrix multiply, elementwise, shuffle, slice, the front
end's convolutions); ``add_plugin_v3`` with the library's ``ct_layernorm``,
``ct_relpos_attention`` and ``ct_conv_module`` plugins for the fused ops. The network is strongly
typed: activations are fp16 (or bf16) from the input on, the plugins' formats follow. Batch and
frames are dynamic, bounded by one optimization profile; the projected relative-position table
is a constant for the profile's longest T, sliced per call.

Needs the ``tensorrt`` package (``pip install .[tensorrt]``) and a GPU; where it does not import,
:func:`build_engine` raises a clear error and the eager back end (:mod:`conformer.eager`) runs the
same recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import kernels

from . import recipe
from .config import ConformerConfig, conv_stack_length
from .positional import abs_pos_table, rel_pos_table
from .reference import ConformerEncoder


def _trt():
    try:
        import tensorrt
    except ImportError as err:
        raise RuntimeError("the TensorRT back end needs the tensorrt package (pip install "
                           "'conformer-trt[tensorrt]'), which does not import here "
                           f"({err}); the eager back end (conformer.eager) needs no TensorRT"
                           ) from err
    return tensorrt


@dataclass(frozen=True)
class Profile:
    """The optimization profile: batch and input frames, min / opt / max."""
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 32
    min_frames: int = 16
    opt_frames: int = 1000
    max_frames: int = 2000

    def __post_init__(self):
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch
                and 1 <= self.min_frames <= self.opt_frames <= self.max_frames):
            raise ValueError(f"profile needs 1 <= min <= opt <= max for batch and frames: {self}")


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(dtype).cpu().numpy())


class TrtBuilder:
    """:class:`conformer.recipe.Builder` onto a TensorRT network definition."""

    def __init__(self, trt, network, weights: dict[str, torch.Tensor], config: ConformerConfig,
                 plugins: dict[str, object], dtype: torch.dtype, max_t: int):
        self.trt, self.net, self.config, self.dtype, self.max_t = trt, network, config, dtype, max_t
        self.w, self.plugins = weights, plugins
        self._consts: dict[str, object] = {}
        self._keep: list[np.ndarray] = []    # TensorRT keeps pointers into these until built

    # -- helpers ---------------------------------------------------------------------------
    def _array(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
        dtype = dtype or self.dtype
        if dtype == torch.bfloat16:          # numpy has no bf16: hand TensorRT the raw bits
            a = np.ascontiguousarray(t.detach().to(dtype).view(torch.int16).cpu().numpy())
        else:
            a = _np(t, dtype)
        self._keep.append(a)
        return a

    def _weights(self, a: np.ndarray, dtype: torch.dtype):
        trt = self.trt
        kinds = {torch.float16: trt.float16, torch.bfloat16: trt.bfloat16,
                 torch.float32: trt.float32, torch.int32: trt.int32}
        return trt.Weights(kinds[dtype], a.ctypes.data, a.size)

    def const(self, key: str, t: torch.Tensor, dtype: torch.dtype | None = None):
        if key not in self._consts:
            dtype = dtype or self.dtype
            a = self._array(t, dtype)
            self._consts[key] = self.net.add_constant(tuple(t.shape),
                                                      self._weights(a, dtype)).get_output(0)
        return self._consts[key]

    def _w(self, name: str, shape=None, dtype=None):
        t = self.w[name]
        return self.const(name + str(shape), t if shape is None else t.reshape(shape), dtype)

    def _shape_of(self, x, dim: int):
        """A 1-element int64 shape tensor holding x's dimension ``dim``."""
        s = self.net.add_shape(x).get_output(0)
        idx = self.const(f"index{dim}", torch.tensor([dim], dtype=torch.int32), torch.int32)
        return self.net.add_gather(s, idx, 0).get_output(0)

    def _int64(self, key: str, values):
        if key not in self._consts:
            a = np.asarray(values, dtype=np.int64)
            self._keep.append(a)
            self._consts[key] = self.net.add_constant(
                a.shape, self.trt.Weights(self.trt.int64, a.ctypes.data, a.size)).get_output(0)
        return self._consts[key]

    def _ew(self, a, b, op):
        return self.net.add_elementwise(a, b, op).get_output(0)

    def _plugin(self, kernel: str, inputs: list, fields: dict[str, float | int]):
        trt = self.trt
        k = kernels.get(kernel)
        ctype = {d.name: d.ctype for d in k.dims}
        pf = []
        for name, value in fields.items():
            if name in k.scalars:
                a = np.array([value], dtype=np.float32)
                kind = trt.PluginFieldType.FLOAT32
            else:
                a = np.array([value], dtype=np.int64 if ctype[name] == "i64" else np.int32)
                kind = trt.PluginFieldType.INT64 if ctype[name] == "i64" else trt.PluginFieldType.INT32
            self._keep.append(a)
            pf.append(trt.PluginField(name, a, kind))
        creator = self.plugins[kernel]
        plugin = creator.create_plugin(f"ct_{kernel}", trt.PluginFieldCollection(pf),
                                       trt.TensorRTPhase.BUILD)
        if plugin is None:
            raise RuntimeError(f"ct_{kernel}: createPlugin failed for fields {fields} (TensorRT's "
                               "log holds the library's message)")
        return self.net.add_plugin_v3(inputs, [], plugin)

    # -- the recipe's ops ------------------------------------------------------------------
    def linear(self, x, weight, bias):
        w = self.w[weight]
        y = self.net.add_matrix_multiply(
            x, self.trt.MatrixOperation.NONE, self._w(weight, (1, *w.shape)),
            self.trt.MatrixOperation.TRANSPOSE).get_output(0)
        if bias is None:
            return y
        return self._ew(y, self._w(bias, (1, 1, -1)), self.trt.ElementWiseOperation.SUM)

    def linear_silu(self, x, weight, bias):
        """Native layers (matmul, bias, sigmoid, product), which TensorRT's builder may fuse."""
        y = self.linear(x, weight, bias)
        s = self.net.add_activation(y, self.trt.ActivationType.SIGMOID).get_output(0)
        return self._ew(y, s, self.trt.ElementWiseOperation.PROD)

    def relu(self, x):
        return self.net.add_activation(x, self.trt.ActivationType.RELU).get_output(0)

    def cmvn(self, x, mean, istd):
        ew = self.trt.ElementWiseOperation
        return self._ew(self._ew(x, self._w(mean, (1, 1, -1)), ew.SUB),
                        self._w(istd, (1, 1, -1)), ew.PROD)

    def _rows(self, x, d):
        sh = self.net.add_shuffle(x)
        sh.reshape_dims = (-1, d)
        return sh.get_output(0)

    def _unrows(self, y, like):
        sh = self.net.add_shuffle(y)
        sh.set_input(1, self.net.add_shape(like).get_output(0))
        return sh.get_output(0)

    def layer_norm(self, x, weight, bias, eps, residual):
        d = self.config.d_model
        ins = [self._rows(x, d)] + ([self._rows(residual, d)] if residual is not None else [])
        ins += [self._w(weight), self._w(bias)]
        layer = self._plugin("layernorm", ins, {"hidden": d, "with_residual": int(residual is not None),
                                                "eps": eps})
        y = self._unrows(layer.get_output(0), x)
        return (y, self._unrows(layer.get_output(1), x)) if residual is not None else (y, x)

    def layer_norm_chain(self, x, residual, first, second, eps):
        y, _ = self.layer_norm(x, first + ".weight", first + ".bias", eps, residual)
        return y, self.layer_norm(y, second + ".weight", second + ".bias", eps, None)[0]

    def conv2d(self, x, weight, bias, stride):
        w = self.w[weight]
        layer = self.net.add_convolution_nd(x, w.shape[0], tuple(w.shape[2:]),
                                            self._weights(self._array(w), self.dtype),
                                            self._weights(self._array(self.w[bias]), self.dtype))
        layer.stride_nd = (stride, stride)
        return layer.get_output(0)

    def to_image(self, x):
        sh = self.net.add_shuffle(x)
        sh.reshape_dims = (0, 1, -1, self.config.input_dim)
        return sh.get_output(0)

    def to_frames(self, x):
        sh = self.net.add_shuffle(x)
        sh.first_transpose = (0, 2, 1, 3)
        c, f = self.config.d_model, conv_stack_length(self.config.input_dim,
                                                      self.config.subsampling)
        sh.reshape_dims = (0, 0, c * f)
        return sh.get_output(0)

    def subsample_lengths(self, lengths, kernel, stride):
        ew = self.trt.ElementWiseOperation

        def i32(v):
            return self.const(f"i32:{v}", torch.tensor([v], dtype=torch.int32), torch.int32)

        n = self._ew(self._ew(lengths, i32(kernel), ew.SUB), i32(stride), ew.FLOOR_DIV)
        return self._ew(self._ew(n, i32(1), ew.SUM), i32(0), ew.MAX)

    def _slice_rows(self, table, start, size, width):
        """table[start : start + size, :width] with start and size 1-element int64 tensors."""
        zero, one = self._int64("zero", [0]), self._int64("one", [1])
        cat = self.net.add_concatenation
        sl = self.net.add_slice(table, (0, 0), (1, width), (1, 1))
        sl.set_input(1, cat([start, zero]).get_output(0))
        sl.set_input(2, cat([size, self._int64(f"w{width}", [width])]).get_output(0))
        sl.set_input(3, cat([one, one]).get_output(0))
        return sl.get_output(0)

    def add_abs_pos(self, x):
        d = self.config.d_model
        table = self.const("abs_table", abs_pos_table(self.max_t, d))
        rows = self._slice_rows(table, self._int64("zero", [0]), self._shape_of(x, 1), d)
        sh = self.net.add_shuffle(rows)
        sh.reshape_dims = (1, -1, d)
        return self._ew(x, sh.get_output(0), self.trt.ElementWiseOperation.SUM)

    def rel_pos(self, x, weight, legacy):
        d, tmax = self.config.d_model, self.max_t
        t = self._shape_of(x, 1)
        if legacy:   # rows: positions 0 ... tmax-1, of which the first T
            full = torch.nn.functional.linear(abs_pos_table(tmax, d).double(),
                                              self.w[weight].double())
            return self._slice_rows(self.const(weight + ":legacy_table", full),
                                    self._int64("zero", [0]), t, d)
        full = torch.nn.functional.linear(rel_pos_table(tmax, d).double(), self.w[weight].double())
        table = self.const(weight + ":table", full)         # rows: positions tmax-1 ... -(tmax-1)
        ew = self.trt.ElementWiseOperation
        start = self._ew(self._int64(f"t{tmax}", [tmax]), t, ew.SUB)
        size = self._ew(self._ew(t, t, ew.SUM), self._int64("one", [1]), ew.SUB)
        return self._slice_rows(table, start, size, d)

    def attention(self, qkv, lengths, heads, p, pos_bias_u, pos_bias_v, chunk_size,
                  num_left_chunks, legacy):
        rel = p is not None   # the plugin reads q, k and v from the one packed tensor
        ins = [qkv] * 3 + ([p, self._w(pos_bias_u), self._w(pos_bias_v)] if rel else []) + [lengths]
        return self._plugin("relpos_attention", ins, {
            "H": heads, "DK": self.config.d_k, "chunk": chunk_size or 0,
            "left_chunks": max(num_left_chunks, -1), "packed": 1,
            "rel": (2 if legacy else 1) if rel else 0}).get_output(0)

    def conv_module(self, x, lengths, prefix, causal, mask_after_glu):
        w = {n: self._w(prefix + n, dtype=torch.float32 if n in ("dw_w", "dw_b") else None)
             for n in ("w1", "b1", "dw_w", "dw_b", "w2", "b2")}
        ins = [x, lengths, w["w1"], w["b1"], w["dw_w"], w["dw_b"], w["w2"], w["b2"]]
        return self._plugin("conv_module", ins, {
            "D": self.config.d_model, "K": self.config.conv_kernel_size, "causal": int(causal),
            "mask_after_glu": int(mask_after_glu)}).get_output(0)


def build_engine(encoder: ConformerEncoder, library: str | Path, profile: Profile = Profile(),
                 dtype: torch.dtype = torch.float16, chunk_size: int | None = None,
                 num_left_chunks: int = -1, workspace_bytes: int = 1 << 30) -> bytes:
    """A serialized engine of ``encoder`` using the plugins of ``library`` (plugin-gen build)."""
    trt = _trt()
    config = encoder.config
    recipe.check_supported(config)
    if profile.min_frames < config.min_input_frames:
        raise ValueError(f"profile min_frames={profile.min_frames} is below the front end's "
                         f"{config.min_input_frames} frames")
    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    if registry.load_library(str(library)) is None:
        raise RuntimeError(f"TensorRT could not load the plugin library {library}")
    plugins = {}
    for name in ("layernorm", "relpos_attention", "conv_module"):
        creator = registry.get_creator(f"ct_{name}", "1", "")
        if creator is None:
            raise RuntimeError(f"{library} has no ct_{name} plugin: build it with plugin-gen "
                               f"from winners that include {name} (autotune run --kernels {name})")
        plugins[name] = creator
    builder = trt.Builder(logger)
    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    kind = trt.float16 if dtype == torch.float16 else trt.bfloat16
    feats = net.add_input("feats", kind, (-1, -1, config.input_dim))
    lengths = net.add_input("lengths", trt.int32, (-1,))
    b = TrtBuilder(trt, net, recipe.prepare(encoder), config, plugins, dtype,
                   profile.max_frames if config.subsampling is None
                   else conv_stack_length(profile.max_frames, config.subsampling))
    out, out_lengths = recipe.emit(b, config, feats, lengths, chunk_size, num_left_chunks)
    out.name, out_lengths.name = "out", "out_lengths"
    net.mark_output(out)
    net.mark_output(out_lengths)
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    opt = builder.create_optimization_profile()
    opt.set_shape("feats", (profile.min_batch, profile.min_frames, config.input_dim),
                  (profile.opt_batch, profile.opt_frames, config.input_dim),
                  (profile.max_batch, profile.max_frames, config.input_dim))
    opt.set_shape("lengths", (profile.min_batch,), (profile.opt_batch,), (profile.max_batch,))
    cfg.add_optimization_profile(opt)
    engine = builder.build_serialized_network(net, cfg)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (its log above says why)")
    return bytes(engine)


class Runner:
    """Runs a serialized engine on torch CUDA tensors, on the current stream."""

    def __init__(self, engine: bytes | str | Path):
        trt = _trt()
        data = Path(engine).read_bytes() if isinstance(engine, (str, Path)) else engine
        self.trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another "
                               "TensorRT version, or for another GPU?)")
        self.context = self.engine.create_execution_context()
        lo, _, hi = self.engine.get_tensor_profile_shape("feats", 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor):
        if feats.dim() != 3 or not all(a <= n <= b for a, n, b in
                                       zip(self.min_shape, feats.shape, self.max_shape)):
            raise ValueError(f"feats {tuple(feats.shape)} is outside the engine's optimization "
                             f"profile {self.min_shape} .. {self.max_shape}: rebuild the engine "
                             "with a larger profile (conformer-trt build-engine --max-frames ...)")
        kind = self.engine.get_tensor_dtype("feats")
        dtype = torch.float16 if kind == self.trt.float16 else torch.bfloat16
        feats = feats.to("cuda", dtype).contiguous()
        lengths = lengths.to("cuda", torch.int32).contiguous()
        self.context.set_input_shape("feats", tuple(feats.shape))
        self.context.set_input_shape("lengths", tuple(lengths.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape("out")), device="cuda", dtype=dtype)
        out_lengths = torch.empty(tuple(self.context.get_tensor_shape("out_lengths")),
                                  device="cuda", dtype=torch.int32)
        for name, t in (("feats", feats), ("lengths", lengths), ("out", out),
                        ("out_lengths", out_lengths)):
            self.context.set_tensor_address(name, t.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed (its log says why)")
        return out, out_lengths

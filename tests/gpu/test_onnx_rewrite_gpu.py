"""onnx_rewrite on the GPU: the tiny exported Conformer (ESPnet, WeNet and plain attention) is
rewritten (against the manifest of a plugin library built here for this GPU, where TensorRT's
headers are there: heuristic configs as winners, at the graph's own static shapes, fp32 as
exported; fp16 for the FFN GEMMs), and every replaced node runs through that library's C ABI
(``ct_launch``) inside onnx's reference evaluator: the rewritten graph gives the original's
outputs (onnxruntime) on every valid frame; with the FFN Linears as INT4 or 2:4 GEMMs, the
outputs of the original holding the weights the plugins encode."""
import collections

import numpy as np
import pytest
import torch

import kernels
from kernels import gpu, launch
from plugin_gen import build
from plugin_gen.builder import LIBRARY
from plugin_gen.loader import Library as CLibrary
from tests.test_plugin_gen import CUDA_INCLUDE, HAS_TRT, TRT_INCLUDE, make_winners

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402

from onnx_rewrite import DOMAIN, Library, rewrite  # noqa: E402
from tests.test_onnx_rewrite import EXPORTS, _attrs, _export, _inputs, _run_original  # noqa: E402
from tests.test_onnx_rewrite_ffn import _compare as compare  # noqa: E402
from tests.test_onnx_rewrite_ffn import _dequantised as dequantised  # noqa: E402
from tests.test_onnx_rewrite_ffn import _export as export_ffn  # noqa: E402

pytestmark = pytest.mark.gpu
LENGTHS, T_IN = [40, 31], 40         # 9 frames after the ÷4 front end, batch 2


def _static_shapes(model) -> dict[str, list[dict]]:
    """Per kernel, the shapes its plugin nodes ask for (dynamic dims at this test's sizes)."""
    dynamic = {"rows": len(LENGTHS) * 9, "M": len(LENGTHS) * 9, "B": len(LENGTHS), "T": 9}
    shapes = collections.defaultdict(list)
    for n in model.graph.node:
        if n.domain == DOMAIN:
            k = kernels.get(n.op_type[3:])
            attrs = _attrs(n)
            shape = {**{d: int(attrs[d]) for d in k.static_dims},
                     **{d: dynamic[d] for d in k.dynamic_dims}}
            if shape not in shapes[k.name]:
                shapes[k.name].append(shape)
    return shapes


def _c_abi_op(lib: CLibrary, name: str) -> type:
    k = kernels.get(name)

    def _run(self, *arrays, **attrs):
        shape = {d: int(attrs[d]) for d in k.static_dims}
        present = k.present({**shape, **{d: 1 for d in k.dynamic_dims}})
        ins = [t for t in present if t.role == "in"]
        for t, a in zip(ins, arrays):
            shape.update({e: n for e, n in zip(t.dims, a.shape) if e in k.dynamic_dims})
        tensors = {t.name: torch.from_numpy(np.ascontiguousarray(a)).cuda()
                   for t, a in zip(ins, arrays)}
        dtype = launch.dtype_name(tensors[ins[0].name].dtype)
        outs = launch.empty_outputs(k, shape, dtype, "cuda", poison=True)
        scalars = {s: float(attrs[s]) for s in k.scalars}
        lib.launch(name, {**tensors, **outs}, shape, scalars)
        torch.cuda.synchronize()
        return tuple(outs[t.name].cpu().numpy() for t in present if t.role == "out")

    return type(f"ct_{name}", (OpRun,), {"op_domain": DOMAIN, "_run": _run})


GEMMS = ("int4_gemm", "sparse24_gemm")     # fp16 only: the rewrite casts around them


def _build(model, tmp_path):
    """A plugin library for this GPU with heuristic winners at exactly the model's plugin
    shapes (fp32, the export's dtype; fp16 for the FFN GEMMs) and its C ABI."""
    running = gpu.running()
    spec = running.spec
    winners = []
    for name, shapes in _static_shapes(model).items():
        winners += make_winners(spec.name, [name],
                                dtypes=("float16",) if name in GEMMS else ("float32",),
                                shapes=shapes, statics=len(shapes), scales=(1,), spec=spec,
                                device_name=running.device_name,
                                cc=f"{running.cc[0]}.{running.cc[1]}")
    result = build(spec.name, tmp_path / "plugins", winners=winners, cuda_include=CUDA_INCLUDE,
                   tensorrt_include=TRT_INCLUDE if HAS_TRT else None, log=print)
    lib = CLibrary(result.library)
    return [_c_abi_op(lib, name) for name in
            ("layernorm", "conv_module", "relpos_attention", *GEMMS)]


@pytest.mark.parametrize("export", ["opset17", "opset17-wenet", "opset17-abs"])
def test_replaced_nodes_run_through_the_c_abi(export, tmp_path):
    opset, overrides, kw = EXPORTS[export]
    before = onnx.load(_export(tmp_path / "model.onnx", opset, overrides, kw))
    plain, _ = rewrite(before)
    ops = _build(plain, tmp_path)
    after = plain
    if HAS_TRT:   # the library's manifest then lists the plugins, at exactly these shapes
        after, report = rewrite(before, Library.load(tmp_path / "plugins"))
        assert not report.left, report.text()
    feeds = _inputs(LENGTHS, T_IN)
    want = _run_original(before, feeds)
    got = ReferenceEvaluator(after, new_ops=ops).run(None, feeds)
    np.testing.assert_array_equal(got[1], want[1])
    for b, n in enumerate(want[1]):
        np.testing.assert_allclose(got[0][b, :n], want[0][b, :n], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", ["int4", "sparse24"])
def test_ffn_gemm_nodes_run_through_the_c_abi(form, tmp_path):
    """The FFN Linears as INT4 / 2:4 plugin nodes (fp16 between Casts) through the library,
    against onnxruntime on the original with the weights the plugins hold."""
    before = export_ffn(tmp_path / "model.onnx", prune=form == "sparse24")
    after, report = rewrite(before, ffn_gemm=form, int4_group=32)
    ops = _build(after, tmp_path)
    feeds = _inputs(LENGTHS, T_IN)
    oracle = dequantised(before, after, report) if form == "int4" else before
    compare(ReferenceEvaluator(after, new_ops=ops).run(None, feeds),
            _run_original(oracle, feeds), 3e-3)


def test_tensorrt_onnx_parser_turns_every_plugin_node_into_a_plugin_layer(tmp_path):
    """Where TensorRT imports: its ONNX parser, with the library loaded, maps each ct_* node of
    the rewritten model (all kernels, the FFN Linears as INT4) to one IPluginV3 layer."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package does not import "
                              "here, so its ONNX parser cannot be run on the rewritten model")
    if not HAS_TRT:
        pytest.skip("no TensorRT headers: the library is built without its plugins")
    before = export_ffn(tmp_path / "model.onnx", prune=False)
    after, report = rewrite(before, ffn_gemm="int4", int4_group=32)
    _build(after, tmp_path)
    after, report = rewrite(before, Library.load(tmp_path / "plugins"), ffn_gemm="int4",
                            int4_group=32)
    assert not report.left, report.text()
    logger = trt.Logger(trt.Logger.WARNING)
    assert trt.get_plugin_registry().load_library(
        str(tmp_path / "plugins" / LIBRARY)) is not None
    network = trt.Builder(logger).create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(after.SerializeToString())
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_layers = [layer for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    assert len(plugin_layers) == sum(n.domain == DOMAIN for n in after.graph.node)

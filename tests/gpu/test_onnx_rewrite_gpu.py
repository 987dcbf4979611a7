"""onnx_rewrite on the GPU: the tiny exported Conformer (ESPnet, WeNet and plain attention) is
rewritten (against the manifest of a plugin library built here for this GPU, where TensorRT's
headers are there: heuristic configs as winners, at the graph's own static shapes, fp32 as
exported), and every replaced node runs through that library's C ABI (``ct_launch``) inside onnx's reference evaluator: the rewritten graph gives the
original's outputs (onnxruntime) on every valid frame."""
import collections

import numpy as np
import pytest
import torch

import kernels
from kernels import gpu, launch
from plugin_gen import build
from plugin_gen.loader import Library as CLibrary
from tests.test_plugin_gen import CUDA_INCLUDE, HAS_TRT, TRT_INCLUDE, make_winners

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402

from onnx_rewrite import DOMAIN, Library, rewrite  # noqa: E402
from tests.test_onnx_rewrite import EXPORTS, _attrs, _export, _inputs, _run_original  # noqa: E402

pytestmark = pytest.mark.gpu
LENGTHS, T_IN = [40, 31], 40         # 9 frames after the ÷4 front end, batch 2


def _static_shapes(model) -> dict[str, list[dict]]:
    """Per kernel, the shapes its plugin nodes ask for (dynamic dims at this test's sizes)."""
    dynamic = {"rows": len(LENGTHS) * 9, "B": len(LENGTHS), "T": 9}
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


@pytest.mark.parametrize("export", ["opset17", "opset17-wenet", "opset17-abs"])
def test_replaced_nodes_run_through_the_c_abi(export, tmp_path):
    opset, overrides, kw = EXPORTS[export]
    before = onnx.load(_export(tmp_path / "model.onnx", opset, overrides, kw))
    plain, _ = rewrite(before)
    running = gpu.running()
    spec = running.spec
    winners = []
    for name, shapes in _static_shapes(plain).items():
        winners += make_winners(spec.name, [name], dtypes=("float32",), shapes=shapes,
                                statics=len(shapes), scales=(1,), spec=spec,
                                device_name=running.device_name,
                                cc=f"{running.cc[0]}.{running.cc[1]}")
    result = build(spec.name, tmp_path / "plugins", winners=winners, cuda_include=CUDA_INCLUDE,
                   tensorrt_include=TRT_INCLUDE if HAS_TRT else None, log=print)
    after = plain
    if HAS_TRT:   # the library's manifest then lists the plugins, at exactly these shapes
        after, report = rewrite(before, Library.load(tmp_path / "plugins"))
        assert not report.left, report.text()
    lib = CLibrary(result.library)
    ops = [_c_abi_op(lib, name) for name in ("layernorm", "conv_module", "relpos_attention")]
    feeds = _inputs(LENGTHS, T_IN)
    want = _run_original(before, feeds)
    got = ReferenceEvaluator(after, new_ops=ops).run(None, feeds)
    np.testing.assert_array_equal(got[1], want[1])
    for b, n in enumerate(want[1]):
        np.testing.assert_allclose(got[0][b, :n], want[0][b, :n], rtol=1e-4, atol=1e-4)

"""onnx_rewrite on the CPU: the reference Conformer exported to ONNX at tiny sizes, rewritten, and
checked three ways: every LayerNorm, conv module and attention became one plugin node; every other node is
byte-for-byte what it was; and the rewritten graph computes the original's outputs, with each
plugin node evaluated by its kernel's own float64 reference (``Kernel.reference``, the semantics
the plugins are tested against) in onnx's reference evaluator, against onnxruntime on the original.
Near misses built by hand are left alone with a reason; bad input exits 2 and no input file
changes.
"""
from __future__ import annotations

import collections
import hashlib
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import kernels
from conformer import ConformerConfig, ConformerEncoder
from onnx_rewrite import DOMAIN, Library, rewrite
from onnx_rewrite.cli import main
from tests.test_conformer_reference import _randomize

TINY = dict(input_dim=20, d_model=64, num_heads=2, ffn_dim=96, num_layers=2, conv_kernel_size=7)
EXPORTS = {
    # LayerNormalization ops, the WeNet mask at the module input, BatchNorm folded by torch
    "opset17": (17, {}, {}),
    # decomposed LayerNorms, causal, mask after the GLU, BatchNormalization kept
    "opset14-causal": (14, dict(num_layers=1, causal=True, conv_mask="glu"),
                       dict(do_constant_folding=False)),
    # opset 18's Split(num_outputs) and input axes, convs without biases
    "opset18-nobias": (18, dict(num_layers=1, conv_bias=False), {}),
    # WeNet's un-shifted position term, and plain attention (torchaudio's architecture)
    "opset17-wenet": (17, dict(num_layers=1, pos_enc="rel_legacy"), {}),
    "opset17-abs": (17, dict(num_layers=1, pos_enc="abs"), {}),
}
ATTENTION_FORM = {"rel": 1, "rel_legacy": 2, "abs": 0}


def _export(path, opset, overrides, export_kw):
    enc = _randomize(ConformerEncoder(ConformerConfig(**{**TINY, **overrides})))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(enc, (torch.randn(2, 40, 20), torch.tensor([40, 31])), str(path),
                          dynamo=False, opset_version=opset, input_names=["feats", "lengths"],
                          output_names=["out", "out_lengths"],
                          dynamic_axes={"feats": {0: "B", 1: "T"}, "lengths": {0: "B"}},
                          **export_kw)
    return path


@pytest.fixture(scope="module", params=list(EXPORTS))
def exported(request, tmp_path_factory):
    opset, overrides, export_kw = EXPORTS[request.param]
    path = _export(tmp_path_factory.mktemp(request.param) / "model.onnx", opset, overrides,
                   export_kw)
    return path, ConformerConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def opset17(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("lib") / "model.onnx", *EXPORTS["opset17"])


# ---- the oracle: plugin nodes evaluated by their kernels' references -------------------------

def _plugin_op(name: str, eps_offset: float = 0.0) -> type:
    k = kernels.get(name)

    def _run(self, *arrays, **attrs):
        shape = {d: int(attrs[d]) for d in k.static_dims}
        present = k.present({**shape, **{d: 1 for d in k.dynamic_dims}})
        ins = [t for t in present if t.role == "in"]
        assert len(arrays) == len(ins)
        for t, a in zip(ins, arrays):
            shape.update({e: n for e, n in zip(t.dims, a.shape) if e in k.dynamic_dims})
        scalars = {s: float(attrs[s]) + eps_offset for s in k.scalars}
        out = k.reference({t.name: torch.from_numpy(np.array(a)) for t, a in zip(ins, arrays)},
                          shape, scalars)
        return tuple(out[t.name].numpy().astype(arrays[0].dtype)
                     for t in present if t.role == "out")

    return type(f"ct_{name}", (OpRun,), {"op_domain": DOMAIN, "_run": _run})


def _inputs(batch_lengths, t_in, seed=3):
    gen = np.random.default_rng(seed)
    return {"feats": gen.standard_normal((len(batch_lengths), t_in, 20)).astype(np.float32),
            "lengths": np.array(batch_lengths, np.int64)}


def _run_original(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _run_rewritten(model, feeds, eps_offset=0.0):
    ops = [_plugin_op(n, eps_offset) for n in ("layernorm", "conv_module", "relpos_attention",
                                                "int4_gemm", "sparse24_gemm")]
    return ReferenceEvaluator(model, new_ops=ops).run(None, feeds)


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _node_bytes(nodes):
    return collections.Counter(n.SerializeToString() for n in nodes)


# ---- the exported Conformer ------------------------------------------------------------------

def test_every_layernorm_conv_module_and_attention_becomes_a_plugin(exported):
    path, config = exported
    before = onnx.load(path)
    after, report = rewrite(before)
    onnx.checker.check_model(after, full_check=True)
    layers = config.num_layers
    plugins = [n for n in after.graph.node if n.domain == DOMAIN]
    kinds = collections.Counter((n.op_type, _attrs(n)["with_residual"])
                                if n.op_type == "ct_layernorm" else (n.op_type,) for n in plugins)
    # per layer: macaron FFN, MHSA, conv, FFN and final norms (all but the first take the
    # residual add before them), and the encoder's after_norm
    assert kinds == {("ct_layernorm", 1): 4 * layers, ("ct_layernorm", 0): layers + 1,
                     ("ct_conv_module",): layers, ("ct_relpos_attention",): layers}
    assert report.left == []
    assert not {"Softmax"} & {n.op_type for n in after.graph.node}

    # nothing but the replaced subgraphs (and what only they read) changed
    by_name = {n.name: n for n in before.graph.node}
    removed = [by_name[name] for r in report.replaced for name in (*r["nodes"], *r["dead"])]
    added = {name for r in report.replaced for name in r["added"]}
    assert len(added) == sum(len(r["added"]) for r in report.replaced)
    kept = _node_bytes(before.graph.node) - _node_bytes(removed)
    assert kept == _node_bytes(n for n in after.graph.node if n.name not in added)
    gone = collections.Counter(n.op_type for n in removed)
    if config.conv_mask == "glu":
        assert gone["Pad"] == layers and gone["BatchNormalization"] == layers
    assert not {"LayerNormalization", "ReduceMean", "Sqrt", "Split", "BatchNormalization",
                "Pad"} & {n.op_type for n in after.graph.node}
    assert gone["LayerNormalization"] + gone["Sqrt"] == 5 * layers + 1

    # the fields each plugin creator declares, typed as TensorRT's parser passes them
    for n in plugins:
        k = kernels.get(n.op_type[3:])
        types = {a.name: a.type for a in n.attribute}
        assert types == {**{d: onnx.AttributeProto.INT for d in k.static_dims},
                         **{s: onnx.AttributeProto.FLOAT for s in k.scalars},
                         "plugin_version": onnx.AttributeProto.STRING,
                         "plugin_namespace": onnx.AttributeProto.STRING}

    attrs = _attrs(next(n for n in plugins if n.op_type == "ct_conv_module"))
    assert (attrs["D"], attrs["K"], attrs["causal"], attrs["mask_after_glu"]) == \
        (64, 7, int(config.causal), int(config.conv_mask == "glu"))
    attrs = _attrs(next(n for n in plugins if n.op_type == "ct_relpos_attention"))
    assert (attrs["H"], attrs["DK"], attrs["rel"], attrs["chunk"]) == \
        (2, 32, ATTENTION_FORM[config.pos_enc], 0)


@pytest.mark.parametrize("lengths, t_in", [([40, 31], 40), ([57, 30, 13], 57)])
def test_rewritten_graph_computes_the_original_outputs(exported, lengths, t_in):
    path, _ = exported
    before = onnx.load(path)
    after, _ = rewrite(before)
    feeds = _inputs(lengths, t_in)
    want = _run_original(before, feeds)
    got = _run_rewritten(after, feeds)
    assert got[0].shape == want[0].shape
    np.testing.assert_array_equal(got[1], want[1])
    for b, n in enumerate(want[1]):   # frames past out_lengths are padding (attention: zeros)
        np.testing.assert_allclose(got[0][b, :n], want[0][b, :n], rtol=1e-4, atol=1e-4)


def test_the_oracle_sees_a_wrong_eps(opset17):
    """The equivalence check is sharp enough to catch a plugin eps off by 1e-3."""
    before = onnx.load(opset17)
    after, _ = rewrite(before)
    feeds = _inputs([40, 31], 40)
    want = _run_original(before, feeds)[0]
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(_run_rewritten(after, feeds, eps_offset=1e-3)[0], want,
                                   rtol=1e-4, atol=1e-4)


def test_an_attention_that_computes_something_else_is_left(opset17):
    """The numbers decide: a score scale off by 10 % matches every anchor, and is left."""
    before = onnx.load(opset17)
    div = next(n for n in before.graph.node if n.name == "/encoders.0/self_attn/Div")
    const = next(n for n in before.graph.node if div.input[1] in n.output)
    value = numpy_helper.to_array(const.attribute[0].t) * 1.1
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(value.astype(np.float32)))
    after, report = rewrite(before)
    left, = [e for e in report.left if e["kind"] == "relpos_attention"]
    assert "computes none of the plugin's forms" in left["reason"]
    assert "differs by" in left["reason"] and left["nodes"][0] == "/encoders.0/self_attn/Softmax"
    assert _count(after, "ct_relpos_attention") == 1     # the other layer's


# ---- near misses, built by hand --------------------------------------------------------------

def _const(name, value):
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(np.asarray(value, np.float32), name))


def _layernorm_graph(variant: str, hidden: int = 64, elem=TensorProto.FLOAT,
                     opset: int = 17) -> onnx.ModelProto:
    """x [2, 5, hidden] -> a LayerNorm ``variant`` -> y."""
    np_type = helper.tensor_dtype_to_np_dtype(elem)
    gamma = np.linspace(0.5, 1.5, hidden).astype(np_type)
    beta = np.linspace(-0.2, 0.2, hidden).astype(np_type)
    if variant == "broadcast":
        gamma = np.linspace(0.5, 1.5, 5).astype(np_type).reshape(5, 1)
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")]
    axes = [1] if variant == "axis1" else [-1]
    if variant.startswith("op"):
        nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="ln",
                                  axis=1 if variant == "op_axis1" else -1, epsilon=1e-5)]
    else:
        nodes = [
            helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=axes),
            helper.make_node("Sub", ["x", "mean"], ["dev"], name="sub"),
            _const("two", 2.0), _const("eps", 1e-5),
            helper.make_node("Pow", ["dev", "two"], ["sq"], name="pow"),
            helper.make_node("ReduceMean", ["sq"], ["var"], name="var", axes=axes)]
        if variant == "eps_outside":
            nodes += [helper.make_node("Sqrt", ["var"], ["std"], name="sqrt"),
                      helper.make_node("Add", ["std", "eps"], ["den"], name="add_eps")]
        else:
            nodes += [helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
                      helper.make_node("Sqrt", ["ve"], ["den"], name="sqrt")]
        nodes.append(helper.make_node("Div", ["dev", "den"],
                                      ["y" if variant == "no_affine" else "normed"], name="div"))
        if variant != "no_affine":
            nodes += [helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="mul"),
                      helper.make_node("Add", ["scaled", "beta"], ["y"], name="add")]
    graph = helper.make_graph(nodes, variant, [helper.make_tensor_value_info("x", elem,
                                                                             [2, 5, hidden])],
                              [helper.make_tensor_value_info("y", elem, [2, 5, hidden])], inits)
    # the IR version its opset needs, not the newest onnx knows: onnxruntime 1.23.2 (what pip
    # installs on Python 3.10) reads IR ≤ 11, and onnx 1.23's make_model writes 14
    return helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("variant", ["decomposed", "op"])
def test_hand_built_layernorms_are_replaced(variant):
    """The controls for the near misses below: the same builder, the exact pattern."""
    model = _layernorm_graph(variant)
    after, report = rewrite(model)
    assert [n.op_type for n in after.graph.node] == ["Shape", "Reshape", "ct_layernorm",
                                                     "Reshape"]
    assert not report.left and len(report.replaced) == 1
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    np.testing.assert_allclose(_run_rewritten(after, {"x": x})[0],
                               _run_original(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant, reason", [
    ("eps_outside", "eps is not added to the variance inside the sqrt"),
    ("no_affine", "no affine"),
    ("axis1", "axes [1] of a rank-3 tensor are not the last axis alone"),
    ("broadcast", "the weight has shape [5, 1], not [64]: it broadcasts over another axis"),
    ("op_axis1", "axes [1] of a rank-3 tensor are not the last axis alone"),
])
def test_near_misses_are_left_alone_with_the_reason(variant, reason):
    model = _layernorm_graph(variant)
    after, report = rewrite(model)
    assert _node_bytes(after.graph.node) == _node_bytes(model.graph.node)
    assert not report.replaced
    assert len(report.left) == 1 and report.left[0]["kind"] == "layernorm"
    assert reason in report.left[0]["reason"]


# ---- the plugin library --------------------------------------------------------------------

def _library(tmp_path, variants: dict[str, list[tuple[str, dict]]], skipped=()):
    """A manifest as plugin-gen writes it, with only the fields the rewrite reads."""
    doc = {"kernels": {name: {
        "tensorrt_plugin": None if name in skipped else
        {"name": f"ct_{name}", "version": "1", "namespace": ""},
        "tensorrt_skipped": "no TensorRT headers" if name in skipped else None,
        "variants": [{"dtype": dtype, "bucket": bucket} for dtype, bucket in vs]}
        for name, vs in variants.items()}}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    return Library.load(tmp_path)


LN = [("float32", {"rows": 64, "hidden": 64, "with_residual": r}) for r in (0, 1)]
CONV = [("float32", {"B": 2, "T": 16, "D": 64, "K": 7, "causal": 0, "mask_after_glu": 0})]


def _count(model, op_type):
    return sum(n.op_type == op_type for n in model.graph.node)


def test_library_with_everything_replaces_everything(opset17, tmp_path):
    after, report = rewrite(onnx.load(opset17), _library(tmp_path, {"layernorm": LN,
                                                                    "conv_module": CONV}))
    assert (_count(after, "ct_layernorm"), _count(after, "ct_conv_module")) == (11, 2)


def test_a_kernel_the_library_lacks_is_not_emitted(opset17, tmp_path):
    after, report = rewrite(onnx.load(opset17), _library(tmp_path, {"layernorm": LN}))
    assert (_count(after, "ct_layernorm"), _count(after, "ct_conv_module")) == (11, 0)
    conv = [e for e in report.left if e["kind"] == "conv_module"]
    assert len(conv) == 2 and all("has no conv_module kernel" in e["reason"] for e in conv)


def test_a_library_without_the_plugin_or_the_sizes(opset17, tmp_path):
    after, report = rewrite(onnx.load(opset17), _library(
        tmp_path, {"layernorm": [("float16", b) for _, b in LN], "conv_module": CONV},
        skipped=("conv_module",)))
    assert not any(n.domain == DOMAIN for n in after.graph.node)
    reasons = collections.Counter(e["reason"].split(";")[0] for e in report.left
                                  if e["kind"] != "relpos_attention")
    assert len(reasons) == 3 and sum(reasons.values()) == 13
    assert any("no layernorm variant for hidden=64 with_residual=1 float32" in r for r in reasons)
    assert any("no TensorRT plugin for conv_module: no TensorRT headers" in r for r in reasons)


def test_no_residual_variant_falls_back_to_the_plain_layernorm(opset17, tmp_path):
    after, report = rewrite(onnx.load(opset17), _library(
        tmp_path, {"layernorm": LN[:1], "conv_module": CONV}))
    lns = [n for n in after.graph.node if n.op_type == "ct_layernorm"]
    assert len(lns) == 11 and all(len(n.output) == 1 for n in lns)
    assert _count(after, "Add") == _count(onnx.load(opset17), "Add")
    notes = [r["note"] for r in report.replaced if r["kind"] == "layernorm" and r["note"]]
    assert len(notes) == 8 and all("with_residual=1" in n and "stays outside" in n
                                   for n in notes)
    feeds = _inputs([40, 31], 40)
    np.testing.assert_allclose(_run_rewritten(after, feeds)[0],
                               _run_original(onnx.load(opset17), feeds)[0], rtol=1e-4, atol=1e-4)


# ---- the command -----------------------------------------------------------------------------

def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_writes_the_model_and_the_report(opset17, tmp_path, capsys):
    _library(tmp_path, {"layernorm": LN, "conv_module": CONV})
    digest = _digest(opset17)
    out, report = tmp_path / "model.plugins.onnx", tmp_path / "report.json"
    assert main([str(opset17), "--plugins", str(tmp_path), "--out", str(out),
                 "--report", str(report)]) == 0
    assert _digest(opset17) == digest
    text = capsys.readouterr().out
    assert "13 replaced, 2 left" in text and "ct_conv_module D=64 K=7" in text
    doc = json.loads(report.read_text())
    assert len(doc["replaced"]) == 13 and doc["replaced"][0]["attributes"] == \
        {"hidden": 64, "with_residual": 0, "eps": pytest.approx(1e-5)}
    assert _count(onnx.load(out), "ct_conv_module") == 2


def _save(tmp_path, model, name="bad.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("not_onnx", "not a valid ONNX model"),
    ("opset12", "opset 12 is outside the supported 13.."),
    ("opset_too_new", "opset"),
    ("hidden16", "hidden=16 is outside ct_layernorm's supported [32, 8192]"),
    ("hidden16_decomposed", "hidden=16 is outside"),
    ("float64", "dtype double; ct_layernorm takes float16, bfloat16, float32"),
    ("out_is_input", "--out must not be the input model"),
    ("bad_manifest", "not a plugin-gen manifest"),
])
def test_bad_input_exits_2_and_changes_no_file(tmp_path, capsys, case, message):
    if case == "not_onnx":
        path = tmp_path / "model.onnx"
        path.write_text("this is not a protobuf\n" * 10)
    elif case in ("opset12", "opset_too_new"):
        opset = 12 if case == "opset12" else onnx.defs.onnx_opset_version() + 1
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        path = _save(tmp_path, helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)]))
    elif case.startswith("hidden16"):
        path = _save(tmp_path, _layernorm_graph("op" if case == "hidden16" else "decomposed",
                                                hidden=16))
    elif case == "float64":
        path = _save(tmp_path, _layernorm_graph("op", elem=TensorProto.DOUBLE))
    else:
        path = _save(tmp_path, _layernorm_graph("op"))
    digest = _digest(path)
    out = path if case == "out_is_input" else tmp_path / "out.onnx"
    args = [str(path), "--out", str(out)]
    if case == "bad_manifest":
        (tmp_path / "manifest.json").write_text('{"gpu": "a10"}')
        args += ["--plugins", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("onnx-rewrite: error: ")
    assert _digest(path) == digest
    assert case == "out_is_input" or not out.exists()

"""onnx_rewrite's FFN GEMMs on the CPU (``ffn_gemm="int4" | "sparse24"``): on the exported tiny
Conformer every feed-forward Linear (and nothing else: the attention's projections stay MatMuls)
becomes one INT4 or 2:4 plugin node, and the rewritten graph, its plugin nodes evaluated by their
kernels' float64 references, computes what onnxruntime computes on the original with the weights
the plugins hold (INT4: the dequantised ones; 2:4: the model was pruned before export, so they
are the original's). Weights the plugins cannot take are left with the reason.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conformer import ConformerConfig, ConformerEncoder
from kernels.int4_gemm import packing
from kernels.sparse24_gemm import prune_24
from onnx_rewrite import DOMAIN, rewrite
from onnx_rewrite.cli import main
from tests.test_conformer_reference import _randomize
from tests.test_onnx_rewrite import EXPORTS, TINY, _attrs, _inputs, _run_original, _run_rewritten

FFN_LINEARS = 8          # 2 layers x (macaron FFN + FFN) x 2 Linears
GEMMS = ("int4_gemm", "sparse24_gemm")


def _export(path, prune: bool):
    opset, overrides, kw = EXPORTS["opset17"]
    enc = _randomize(ConformerEncoder(ConformerConfig(**{**TINY, **overrides})))
    if prune:
        with torch.no_grad():
            for name, p in enc.named_parameters():
                if "feed_forward" in name and name.endswith("weight"):
                    p.copy_(prune_24(p))
    torch.onnx.export(enc, (torch.randn(2, 40, 20), torch.tensor([40, 31])), str(path),
                      dynamo=False, opset_version=opset, input_names=["feats", "lengths"],
                      output_names=["out", "out_lengths"],
                      dynamic_axes={"feats": {0: "B", 1: "T"}, "lengths": {0: "B"}}, **kw)
    return onnx.load(path)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ffn") / "dense.onnx", prune=False)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ffn") / "pruned.onnx", prune=True)


def _ffn_entries(report):
    return [r for r in report.replaced if r["kind"] == "ffn_gemm"]


def _check_structure(before, after, report, plugin):
    onnx.checker.check_model(after, full_check=True)
    entries = _ffn_entries(report)
    assert len(entries) == FFN_LINEARS and all(r["plugin"] == plugin for r in entries)
    assert all("float32 activations cast to float16" in r["note"] for r in entries)
    assert all(r["nodes"][0].endswith("/MatMul") and "feed_forward" in r["nodes"][0]
               for r in entries)
    count = collections.Counter(n.op_type for n in after.graph.node)
    assert count[plugin] == FFN_LINEARS
    plain = collections.Counter(n.op_type for n in rewrite(before)[0].graph.node)
    assert count["MatMul"] == plain["MatMul"] - FFN_LINEARS   # q, k, v, out, pos projections stay
    assert plain["MatMul"] >= 5 * 2


def _compare(got, want, rtol):
    np.testing.assert_array_equal(got[1], want[1])
    for b, n in enumerate(want[1]):
        err = np.linalg.norm(got[0][b, :n] - want[0][b, :n]) / np.linalg.norm(want[0][b, :n])
        assert err < rtol, (b, err)


def _dequantised(before, after, report):
    """The original model with each replaced Linear's weight set to what its plugin encodes."""
    model = onnx.ModelProto()
    model.CopyFrom(before)
    inits = {i.name: i for i in model.graph.initializer}
    matmul = {n.name: n for n in model.graph.node}
    plugins = {n.name: n for n in after.graph.node if n.domain == DOMAIN}
    values = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    for r in _ffn_entries(report):
        node = plugins[r["node"]]
        a = _attrs(node)
        q, scales = (torch.from_numpy(values[i].copy()) for i in node.input[1:3])
        zeros = torch.from_numpy(values[node.input[3]].copy()) if a["asym"] else None
        w = packing.dequantize(q, scales, zeros, a["N"], a["K"], a["group"]).numpy()
        name = matmul[r["nodes"][0]].input[1]
        inits[name].CopyFrom(numpy_helper.from_array(w.T.astype(np.float32), name))
    return model


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_int4_replaces_the_ffn_linears_and_computes_the_dequantised_model(dense, sym):
    after, report = rewrite(dense, ffn_gemm="int4", int4_group=32, int4_sym=sym)
    _check_structure(dense, after, report, "ct_int4_gemm")
    node = next(n for n in after.graph.node if n.op_type == "ct_int4_gemm")
    assert {k: _attrs(node)[k] for k in ("N", "K", "group", "asym", "with_bias")} == \
        {"N": 96, "K": 64, "group": 32, "asym": int(not sym), "with_bias": 1}
    feeds = _inputs([40, 31], 40)
    got = _run_rewritten(after, feeds)
    _compare(got, _run_original(_dequantised(dense, after, report), feeds), 3e-3)
    # and the quantisation is real: the original's own weights give a visibly different output
    with pytest.raises(AssertionError):
        _compare(got, _run_original(dense, feeds), 3e-3)


def test_sparse24_replaces_pruned_ffn_linears_and_computes_the_original(pruned):
    after, report = rewrite(pruned, ffn_gemm="sparse24")
    _check_structure(pruned, after, report, "ct_sparse24_gemm")
    feeds = _inputs([57, 30, 13], 57)
    _compare(_run_rewritten(after, feeds), _run_original(pruned, feeds), 3e-3)


def test_weights_the_plugins_cannot_take_are_left_with_the_reason(dense):
    after, report = rewrite(dense, ffn_gemm="sparse24")
    assert not _ffn_entries(report) and not any(n.op_type == "ct_sparse24_gemm"
                                                for n in after.graph.node)
    left = [e for e in report.left if e["kind"] == "ffn_gemm"]
    assert len(left) == FFN_LINEARS and all("not 2:4 sparse" in e["reason"] for e in left)
    # K = 96 (the second Linear's input) is not a multiple of 64; K = 64 is
    after, report = rewrite(dense, ffn_gemm="int4", int4_group=64)
    left = [e for e in report.left if e["kind"] == "ffn_gemm"]
    assert len(_ffn_entries(report)) == len(left) == FFN_LINEARS // 2
    assert all("K=96 must be a positive multiple of the group size 64" in e["reason"]
               for e in left)


def test_without_ffn_gemm_the_linears_stay(dense):
    after, report = rewrite(dense)
    assert not _ffn_entries(report) and not any(n.op_type in {f"ct_{g}" for g in GEMMS}
                                                for n in after.graph.node)


def test_cli_ffn_gemm(dense, tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "m.plugins.onnx"
    onnx.save(dense, src)
    assert main([str(src), "--out", str(out), "--ffn-gemm", "int4", "--int4-group", "32"]) == 0
    assert "ct_int4_gemm" in capsys.readouterr().out
    assert sum(n.op_type == "ct_int4_gemm" for n in onnx.load(out).graph.node) == FFN_LINEARS
    with pytest.raises(SystemExit):
        main([str(src), "--out", str(out), "--ffn-gemm", "int4", "--int4-group", "48"])
    assert "invalid choice" in capsys.readouterr().err

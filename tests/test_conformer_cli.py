"""``conformer-trt build-engine`` up to TensorRT: the checkpoint is read and checked first (bad
files and key mismatches exit 2 with the full report); without the tensorrt package it exits 1
saying so. Through the stand-in for TensorRT (tests/fake_tensorrt.py) the command writes an
engine whose network, evaluated on the CPU, is the checkpoint's encoder; a real engine needs
TensorRT, which is tested where it imports."""
import importlib.util
import sys

import pytest
import torch

from conformer import cli
from tests.fake_tensorrt import FakeTensorRT
from tests.test_conformer_reference import _encoder, _espnet_names

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _checkpoint(tmp_path, mutate=None):
    sd = _espnet_names(_encoder(seed=2, pos_enc="rel", ln_eps=1e-12).state_dict())
    if mutate:
        mutate(sd)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": sd}, path)
    return path


def _run(tmp_path, ckpt, capsys, *extra):
    lib = tmp_path / "libconformer_trt.so"
    lib.write_bytes(b"")
    code = cli.main(["build-engine", "--checkpoint", str(ckpt), "--source", "espnet",
                     "--plugins", str(lib), "--out", str(tmp_path / "m.engine"),
                     "--input-dim", "40", *extra])
    return code, capsys.readouterr().err


def test_key_mismatches_are_reported_in_full(tmp_path, capsys):
    def mutate(sd):
        del sd["encoders.1.norm_ff.weight"]
        sd["encoders.0.extra"] = torch.zeros(1)
        sd["encoders.0.feed_forward.w_1.bias"] = torch.zeros(5)
    code, err = _run(tmp_path, _checkpoint(tmp_path, mutate), capsys)
    assert code == 2
    for text in ("1 missing, 1 unexpected, 1 mis-shaped", "encoders.1.norm_ff.weight",
                 "encoders.0.extra", "encoders.0.feed_forward.w_1.bias: expected [64], got [5]"):
        assert text in err, err
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("content, match", [(None, "no such checkpoint"),
                                            (b"not a pickle", "not a torch.save'd state_dict")])
def test_bad_checkpoint_files(tmp_path, capsys, content, match):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    code, err = _run(tmp_path, path, capsys)
    assert code == 2 and match in err, err


def test_missing_plugin_library(tmp_path, capsys):
    code = cli.main(["build-engine", "--checkpoint", str(_checkpoint(tmp_path)), "--source",
                     "espnet", "--plugins", str(tmp_path / "nowhere"), "--out", "m.engine",
                     "--input-dim", "40"])
    assert code == 2 and "no plugin library" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="tensorrt imports here: the engine build is tested on the GPU")
def test_without_tensorrt_the_build_says_why(tmp_path, capsys):
    code, err = _run(tmp_path, _checkpoint(tmp_path), capsys)
    assert code == 1 and "needs the tensorrt package" in err and "eager back end" in err, err


def test_an_espnet_checkpoint_becomes_its_encoder(tmp_path, capsys, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    code, err = _run(tmp_path, _checkpoint(tmp_path), capsys, "--opt-frames", "100",
                     "--max-frames", "200")
    assert code == 0, err
    engine = (tmp_path / "m.engine").read_bytes()
    feats = torch.randn(2, 60, 40, generator=torch.Generator().manual_seed(3)).half()
    lengths = torch.tensor([60, 37], dtype=torch.int32)
    out, out_len = fake.run(engine, {"feats": feats, "lengths": lengths})
    ref, ref_len = _encoder(seed=2, pos_enc="rel", ln_eps=1e-12).double()(feats.double(),
                                                                          lengths.long())
    assert out_len.tolist() == ref_len.tolist()
    for b, n in enumerate(ref_len.tolist()):
        assert ((out[b, :n] - ref[b, :n]).norm() / ref[b, :n].norm()).item() < 3e-3


def test_a_bad_profile_is_refused_before_tensorrt(tmp_path, capsys):
    code, err = _run(tmp_path, _checkpoint(tmp_path), capsys, "--max-frames", "8", "--min-frames", "9")
    assert code == 2 and "profile needs" in err, err

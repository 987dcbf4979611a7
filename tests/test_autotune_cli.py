"""The ``autotune`` command: run (with a synthetic evaluator in a real worker process), show,
export, plot, and the clear refusals: another GPU, unknown names, bad numbers, bad databases."""
import json
import sqlite3

import pytest
from sqlalchemy import text

from autotune.cli import main
from cache import open_store
from cache.winner import loads
from kernels import gpu
from tests.test_autotune_worker import H100

RUN = ["run", "--gpu", "h100", "--kernels", "layernorm", "--batch", "4", "--seq-lens", "100",
       "--trials", "4", "--no-progress"]


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'w.db'}"


def test_run_show_export_plot(url, tmp_path, capsys):
    assert main([*RUN, "--db", url, "--evaluator", "tests.test_autotune_worker:Landscape"]) == 0
    out = capsys.readouterr().out
    assert "4 studies for h100 (NVIDIA H100 80GB HBM3): 0 cached, 4 to tune" in out
    assert out.count("sampler GP") == 4 and "16 configs measured, 4 winners stored" in out
    assert main(["show", "--db", url]) == 0
    shown = capsys.readouterr().out
    assert shown.count("layernorm") == 4 and "rows=512" in shown and "triton*" in shown
    export = tmp_path / "winners.json"
    assert main(["export", "--gpu", "h100", "--db", url, "-o", str(export)]) == 0
    gpu_name, winners = loads(export.read_text())
    assert gpu_name == "h100" and len(winners) == 4
    assert all(w.baseline_us == 40.0 and w.trials == 4 for w in winners)
    assert main(["plot", "--gpu", "h100", "--db", url, "--out", str(tmp_path / "png")]) == 0
    for name in ("speedup_layernorm.png", "history_layernorm.png"):
        assert (tmp_path / "png" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main([*RUN, "--db", url, "--evaluator", "tests.test_autotune_worker:Landscape"]) == 0
    assert "0 configs measured, 0 winners stored, 4 cached" in capsys.readouterr().out


def test_impls_narrows_the_run(url, capsys):
    argv = [*RUN, "--db", url, "--impls", "cuda", "--evaluator",
            "tests.test_autotune_worker:Landscape"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 studies for h100" in out and "layernorm/cuda" in out and "layernorm/triton" not in out


def test_another_gpu_is_refused(url, monkeypatch, capsys, tmp_path):
    a10 = gpu.RunningGpu("NVIDIA A10", (8, 6), 72, "570.1", "12.8", gpu.KNOWN_GPUS["a10"])
    monkeypatch.setattr(gpu, "running", lambda device=None: a10)
    assert main([*RUN, "--db", url]) == 1
    err = capsys.readouterr().err
    assert "--gpu h100 asked for" in err and "only true for the GPU that made them" in err
    assert not (tmp_path / "w.db").exists()


@pytest.mark.parametrize("args, message", [
    (["--gpu", "x999"], "unknown GPU 'x999'"),
    (["--kernels", "nope"], "unknown kernel 'nope'"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--impls", "cuda_dw"], "unknown implementations ['cuda_dw']"),
    (["--seq-lens", "0"], "--seq-lens must be positive"),
])
def test_bad_arguments_are_named(url, capsys, args, message):
    argv = [*RUN, "--db", url, *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_databases_are_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu, "running", lambda device=None: H100)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"garbage" * 1000)
    assert main(["show", "--db", f"sqlite:///{corrupt}"]) == 1
    assert "is not a SQLite database" in capsys.readouterr().err
    evaluator = ["--evaluator", "tests.test_autotune_worker:Landscape"]
    assert main([*RUN, "--db", f"sqlite:///{corrupt}", *evaluator]) == 1
    assert "is not a SQLite database" in capsys.readouterr().err
    missing = tmp_path / "missing.db"
    assert main(["export", "--gpu", "h100", "--db", f"sqlite:///{missing}"]) == 1
    assert "no winners for h100" in capsys.readouterr().err and not missing.exists()
    good = tmp_path / "good.db"
    sqlite3.connect(good).execute("create table unrelated (x)").connection.close()
    read_only = f"sqlite:///file:{good}?mode=ro&uri=true"
    assert main([*RUN, "--db", read_only, *evaluator]) == 1
    assert "read-only" in capsys.readouterr().err


def test_show_reports_stale_configs(url, capsys):
    assert main([*RUN, "--db", url, "--evaluator", "tests.test_autotune_worker:Landscape",
                 "--trials", "1"]) == 0
    with open_store(url).engine.begin() as c:
        row = c.execute(text("select id, config from ct_winners where impl = 'triton'")).first()
        config = {**json.loads(row.config), "ROWS": 64}      # no longer in the space
        c.execute(text("update ct_winners set config = :c where id = :i"),
                  {"c": json.dumps(config), "i": row.id})
    capsys.readouterr()
    assert main(["show", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "refused: h100 layernorm/triton" in out and "ROWS=64 is not one of" in out
    assert out.count("layernorm  cuda") == 2

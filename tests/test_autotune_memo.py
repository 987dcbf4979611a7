"""A warm ``autotune run`` answers from the database (autotune.memo) without importing torch or
Triton, and only when nothing that decides the run has changed."""
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from autotune import memo, run
from autotune.cli import main
from tests.test_autotune_cli import RUN

H100_DRIVER = ("NVIDIA H100 80GB HBM3", (9, 0), 132, "13000")
EVALUATOR = ["--evaluator", "tests.test_autotune_worker:Landscape"]


@pytest.fixture
def url(tmp_path, monkeypatch):
    monkeypatch.setattr(memo, "device", lambda: H100_DRIVER)
    return f"sqlite:///{tmp_path / 'w.db'}"


def _tuned(url, capsys):
    assert main([*RUN, "--db", url, *EVALUATOR]) == 0
    assert "4 winners stored" in capsys.readouterr().out


def test_the_same_run_again_does_not_start_the_tuner(url, capsys, monkeypatch):
    _tuned(url, capsys)
    monkeypatch.setattr(run, "tune", lambda *a, **k: pytest.fail("the tuner was started"))
    assert main([*RUN, "--db", url, *EVALUATOR]) == 0
    out = capsys.readouterr().out
    assert "4 cached" in out and "nothing to tune" in out
    assert out.count("layernorm") == 4 and "triton*" in out


def test_a_warm_run_imports_neither_torch_nor_triton(url, capsys, tmp_path):
    _tuned(url, capsys)
    script = (f"import sys; import autotune.memo as m; m.device = lambda: {H100_DRIVER!r}\n"
              "from autotune.cli import main\n"
              f"rc = main({[*RUN, '--db', url, *EVALUATOR]!r})\n"
              "print('heavy:', sorted({'torch', 'triton', 'optuna'} & set(sys.modules)))\n"
              "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nothing to tune" in done.stdout and "heavy: []" in done.stdout


@pytest.mark.parametrize("change", ["arguments", "sources", "gpu", "winner"])
def test_anything_different_is_a_miss(url, capsys, monkeypatch, change):
    _tuned(url, capsys)
    argv = [*RUN, "--db", url, *EVALUATOR]
    if change == "arguments":
        argv[argv.index("--trials") + 1] = "5"
    elif change == "sources":
        digest = memo._sources_digest()
        monkeypatch.setattr(memo, "_sources_digest", lambda: digest + "-edited")
    elif change == "gpu":
        monkeypatch.setattr(memo, "device", lambda: (*H100_DRIVER[:3], "13010"))
    else:   # another run replaced a winner since
        engine = create_engine(url)
        with engine.begin() as c:
            c.execute(text("update ct_winners set source_hash = 'elsewhere' where id = 1"))
        engine.dispose()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing to tune" not in out and "4 studies for h100" in out


def test_no_gpu_means_no_shortcut(url, capsys, monkeypatch):
    _tuned(url, capsys)
    monkeypatch.setattr(memo, "device", lambda: None)
    assert main([*RUN, "--db", url, *EVALUATOR]) == 0
    assert "nothing to tune" not in capsys.readouterr().out


def test_another_gpu_is_still_refused(url, capsys, monkeypatch):
    _tuned(url, capsys)
    monkeypatch.setattr(memo, "device", lambda: ("NVIDIA A10", (8, 6), 72, "13000"))
    from kernels import gpu

    a10 = gpu.RunningGpu("NVIDIA A10", (8, 6), 72, "570.1", "12.8", gpu.KNOWN_GPUS["a10"])
    monkeypatch.setattr(gpu, "running", lambda device=None: a10)
    assert main([*RUN, "--db", url]) == 1
    assert "--gpu h100 asked for" in capsys.readouterr().err


def test_the_real_driver_is_asked_without_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, autotune.memo as m; d = m.device(); "
                           "print(d is None or isinstance(d[0], str), 'torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "False"], done.stderr

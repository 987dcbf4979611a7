"""The winners store: recording and lookup by bucket, the validation gate on stored rows, claims,
the default_config hook, and clear errors for databases that are missing, corrupt, read-only,
unreachable or full (no partial rows)."""
import dataclasses
import itertools
import logging
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, text

import kernels
from cache import InvalidWinner, StoreError, Winner, best_config, open_store
from kernels import gpu, launch

K = kernels.get("layernorm")


def winner(impl="triton", rows=16384, residual=1, median=10.0, trials=16, gpu_name="h100",
           **changes):
    config = ({"ROWS": 4, "num_warps": 4, "STREAM": 1} if impl == "triton"
              else {"VEC": 8, "WARPS_PER_ROW": 1, "ROWS_PER_BLOCK": 4, "STREAM": 1})
    w = Winner(gpu=gpu_name, device_name="NVIDIA H100 80GB HBM3", cc="9.0", sms=132,
               driver="570.1", cuda="12.8", triton="3.6.0", kernel="layernorm", impl=impl,
               source_hash=launch.source_hash(K.impl(impl)), dtype="float16",
               bucket={"rows": rows, "hidden": 256, "with_residual": residual}, config=config,
               median_us=median, spread_us=0.1, baseline_us=30.0, speedup=30.0 / median,
               trials=trials)
    return dataclasses.replace(w, **changes)


@pytest.fixture
def store(tmp_path):
    return open_store(f"sqlite:///{tmp_path / 'w.db'}")


def _rows(store):
    with store.engine.connect() as c:
        return c.execute(text("select count(*) from ct_winners")).scalar()


def test_winners_round_trip_and_are_replaced_by_better_tuning(store):
    w = winner()
    assert store.record_winner(w)
    assert store.winners("h100") == [w] and store.winners("a10") == []
    assert open_store(store.url).winner("h100", "layernorm", "triton", "float16", w.bucket) == w
    assert not store.record_winner(winner(median=9.0, trials=8))    # fewer trials: kept
    assert store.record_winner(winner(median=11.0, trials=32))      # more: replaced
    assert [x.median_us for x in store.winners("h100")] == [11.0] and _rows(store) == 1


def test_best_config_rounds_to_the_bucket_and_picks_the_fastest_impl(store):
    for w in (winner("triton", 16384, median=10.0), winner("cuda", 16384, median=9.0),
              winner("triton", 1024, median=2.0)):
        store.record_winner(w)
    shape = {"rows": 16000, "hidden": 256, "with_residual": 1}
    assert store.best_config("h100", "layernorm", "float16", shape).impl == "cuda"
    assert store.best_config("h100", "layernorm", "float16", shape, impl="triton").median_us == 10
    near = store.best_config("h100", "layernorm", "float16", {**shape, "rows": 1500})
    assert near.bucket["rows"] == 1024                      # the nearest tuned bucket
    far = store.best_config("h100", "layernorm", "float16", {**shape, "rows": 2**20})
    assert far.bucket["rows"] == 16384
    assert store.best_config("h100", "layernorm", "float16", {**shape, "hidden": 512}) is None
    assert store.best_config("h100", "layernorm", "bfloat16", shape) is None
    assert best_config("h100", "layernorm", "float16", shape, url=store.url).impl == "cuda"


def test_auto_and_the_default_url(store, tmp_path, monkeypatch):
    store.record_winner(winner())
    monkeypatch.setattr(gpu, "running", lambda device=None: gpu.RunningGpu(
        "NVIDIA H100 PCIe", (9, 0), 114, "570.1", "12.8", gpu.KNOWN_GPUS["h100"]))
    monkeypatch.setenv("CONFORMER_TRT_DB", store.url)
    shape = {"rows": 9000, "hidden": 256, "with_residual": 1}
    assert best_config("auto", "layernorm", "float16", shape).config == winner().config
    monkeypatch.delenv("CONFORMER_TRT_DB")
    monkeypatch.chdir(tmp_path)
    assert open_store().url == "sqlite:///conformer_trt.db"
    assert best_config("auto", "layernorm", "float16", shape) is None
    assert not (tmp_path / "conformer_trt.db").exists()    # reading never creates a database


def test_tampered_and_stale_rows_are_reported_never_returned(store, caplog):
    store.record_winner(winner("triton"))
    store.record_winner(winner("cuda"))
    with store.engine.begin() as c:
        c.execute(text("""update ct_winners set config = '{"VEC": 3, "WARPS_PER_ROW": 1,
                          "ROWS_PER_BLOCK": 4, "STREAM": 1}' where impl = 'cuda'"""))
    with caplog.at_level(logging.WARNING, logger="cache.store"):
        good, refused = store.check("h100")
    assert [w.impl for w in good] == ["triton"]
    (row, reason), = refused
    assert row["impl"] == "cuda" and "VEC=3 is not one of" in reason and "VEC=3" in caplog.text
    with store.engine.begin() as c:
        c.execute(text("update ct_winners set source_hash = '0000000000000000'"))
    assert store.winners("h100") == []
    assert any("re-tune" in reason for _, reason in store.check("h100")[1])


def test_nothing_invalid_is_stored(store):
    with pytest.raises(InvalidWinner, match="ROWS=3"):
        store.record_winner(winner(config={"ROWS": 3, "num_warps": 4, "STREAM": 1}))
    with pytest.raises(InvalidWinner, match="not a bucket"):
        store.record_winner(winner(rows=16000))
    assert store.winners("h100") == []


def test_claims_are_exclusive(store):
    assert store.claim("s", '{"A": 1}', 0, "host:1")
    assert not store.claim("s", '{"A": 1}', 3, "host:2")
    assert store.claim("s", '{"A": 2}', 1, "host:2")
    store.finish_claim("s", '{"A": 2}', 1, "ok", 0.5)
    assert not store.release_claim("s", '{"A": 2}', 1)        # finished: stays
    assert store.release_claim("s", '{"A": 1}', 0)            # unfinished: released
    assert [(c.config, c.outcome) for c in store.claims("s")] == [('{"A": 2}', "ok")]


def test_a_limited_claim_never_takes_more_than_the_budget(tmp_path):
    """Claims with a limit from several processes at once (the last trials of a shared study):
    never more than ``limit`` succeed (racers may all withdraw and ask again), and asking again
    fills the budget exactly."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = open_store(url)
    store.claim("warm-up", "{}", 0, "host:0")          # the tables exist before the race
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        won = pool.starmap(_claim_one, [(url, i) for i in range(12)])
    assert sum(won) <= 5 and len(store.claims("s")) == sum(won)
    more = [store.claim("s", f'{{"A": {i}}}', i, "host:1", limit=5) for i in range(12, 20)]
    assert sum(won) + sum(more) == 5 and len(store.claims("s")) == 5


def _claim_one(url, i):
    return open_store(url).claim("s", f'{{"A": {i}}}', i, f"host:{i}", limit=5)


def test_a_corrupt_file_is_named_clearly(tmp_path):
    path = tmp_path / "w.db"
    path.write_bytes(b"this is not a database, it has been overwritten " * 100)
    store = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreError, match="is not a SQLite database"):
        store.winners("h100")
    with pytest.raises(StoreError, match="is not a SQLite database"):
        store.record_winner(winner())


def test_a_read_only_database_can_be_read_not_written(store):
    w = winner()
    store.record_winner(w)
    store.engine.dispose()
    path = store.url[len("sqlite:///"):]
    ro = open_store(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert ro.winners("h100") == [w]
    with pytest.raises(StoreError, match="read-only"):
        ro.record_winner(winner(trials=40))
    assert store.winners("h100") == [w]


def test_an_unreachable_database_is_named(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'w.db'}")
    assert store.winners("h100") == []
    with pytest.raises(StoreError, match="cannot open .* folder does not exist"):
        store.record_winner(winner())
    with pytest.raises(StoreError, match="in-memory"):
        open_store("sqlite://")


def test_a_full_disk_rolls_back_and_leaves_no_partial_row(store):
    store.record_winner(winner())
    store.engine.dispose()

    @event.listens_for(store.engine, "connect")
    def _tiny(dbapi_connection, _):       # SQLite's own size limit raises SQLITE_FULL
        dbapi_connection.execute(f"PRAGMA max_page_count = "
                                 f"{dbapi_connection.execute('PRAGMA page_count').fetchone()[0]}")

    big = winner(device_name="X" * 64)
    with pytest.raises(StoreError, match="disk holding .* is full"):
        for rows, residual in itertools.product((2**i for i in range(31)), (0, 1)):
            store.record_winner(dataclasses.replace(
                big, bucket={"rows": rows, "hidden": 256, "with_residual": residual}))
    count = _rows(store)
    assert count >= 1 and len(store.winners("h100")) == count   # every row whole and valid


def test_default_config_uses_the_stored_winner(store, monkeypatch):
    impl = K.impl("cuda")
    shape = {"rows": 12000, "hidden": 256, "with_residual": 1}
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(launch, "_gpu_spec", lambda: gpu.KNOWN_GPUS["h100"])
    monkeypatch.setenv("CONFORMER_TRT_DB", store.url)
    launch._tuned_config.cache_clear()
    heuristic = impl.heuristic(shape, "float16", gpu.KNOWN_GPUS["h100"])
    assert launch.default_config(K, impl, shape, "float16") == heuristic   # nothing stored
    tuned = winner("cuda", config={"VEC": 4, "WARPS_PER_ROW": 2, "ROWS_PER_BLOCK": 2,
                                   "STREAM": 0})
    store.record_winner(tuned)
    launch._tuned_config.cache_clear()
    assert launch.default_config(K, impl, shape, "float16") == tuned.config
    garbage = Path(store.url[len("sqlite:///"):]).with_name("garbage.db")
    garbage.write_bytes(b"not a database " * 1000)
    monkeypatch.setenv("CONFORMER_TRT_DB", f"sqlite:///{garbage}")
    launch._tuned_config.cache_clear()     # an unreadable database falls back silently
    assert launch.default_config(K, impl, shape, "float16") == heuristic
    launch._tuned_config.cache_clear()


def test_sqlite_is_in_wal_mode(store):
    store.record_winner(winner())
    path = store.url[len("sqlite:///"):]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

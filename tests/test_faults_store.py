"""Fault injection on the experiment store: a writer holding the lock, a garbled file, another program's
database. Each is named with the file and what to do; nothing in the file is changed by the refusal; a
training run that does not need the store still trains and says it was not recorded."""
import sqlite3
import threading
import time

import pytest

from foundry.store import Store, StoreCorruptError, StoreLockedError, main as store_main
from train_helpers import tiny_overrides, write_char_dataset


def _store_with_a_run(path):
    s = Store(path)
    s.start("kept", "a: 1\n", "h1", seed=1, code=(None, None))
    s.finish("kept", {"val_bpb": 2.5})
    s.close()
    return path


def _hold_write_lock(path, seconds: float) -> threading.Thread:
    """Another writer: BEGIN IMMEDIATE on its own connection, held for `seconds`, then committed."""
    ready = threading.Event()

    def hold():
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE runs SET error = 'held' WHERE id = 'kept'")
        ready.set()
        time.sleep(seconds)
        db.execute("COMMIT")
        db.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert ready.wait(10)
    return t


def test_locked_store_waits_for_the_other_writer_within_the_bound(tmp_path):
    db = _store_with_a_run(tmp_path / "s.sqlite")
    holder = _hold_write_lock(db, 0.6)
    t0 = time.perf_counter()
    s = Store(db, timeout=20)
    s.start("new", "a: 2\n", "h2", code=(None, None))  # waits for the holder, then writes
    assert time.perf_counter() - t0 >= 0.5
    holder.join()
    assert {r["id"] for r in s.runs()} == {"kept", "new"}


def test_store_locked_past_the_bound_is_named_and_nothing_is_lost(tmp_path):
    db = _store_with_a_run(tmp_path / "s.sqlite")
    holder = _hold_write_lock(db, 3.0)
    s = Store(db, timeout=0.5)  # opening an existing store takes no write lock
    t0 = time.perf_counter()
    with pytest.raises(StoreLockedError) as e:
        s.start("new", "a: 2\n", "h2", code=(None, None))
    assert time.perf_counter() - t0 < 2.5  # bounded: it gave up near its timeout, not after minutes
    assert str(db) in str(e.value) and "locked by another process" in str(e.value)
    assert "FOUNDRY_STORE_TIMEOUT" in str(e.value)
    holder.join()
    s.start("new", "a: 2\n", "h2", code=(None, None))  # the same call once the lock is gone
    assert s.get("kept")["metrics"] == {"val_bpb": 2.5} and s.get("new")["status"] == "running"


@pytest.mark.parametrize("damage", ["garbled", "foreign_schema", "other_program"])
def test_damaged_or_foreign_store_is_refused_naming_the_file_and_left_unchanged(tmp_path, damage, capsys):
    db = tmp_path / "s.sqlite"
    if damage == "garbled":
        _store_with_a_run(db)
        raw = bytearray(db.read_bytes())
        raw[:100] = b"\xa5" * 100  # the SQLite header
        db.write_bytes(bytes(raw))
    else:
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE runs (id TEXT, foo TEXT)" if damage == "foreign_schema"
                    else "CREATE TABLE invoices (number INTEGER, amount REAL)")
        con.commit()
        con.close()
    before = db.read_bytes()
    with pytest.raises(StoreCorruptError) as e:
        Store(db)
    msg = str(e.value)
    assert str(db) in msg and f"mv {db} {db}.bad" in msg and "FOUNDRY_STORE" in msg
    assert db.read_bytes() == before
    assert store_main(["--store", str(db), "list"]) == 2  # the CLI says the same, no traceback
    assert str(db) in capsys.readouterr().err
    db.rename(tmp_path / "s.sqlite.bad")  # what the message says to do; then the store works again
    Store(db).close()


def test_training_is_not_blocked_by_an_unusable_store_and_says_it_was_not_recorded(tmp_path, monkeypatch, capsys):
    from foundry.train import main as train_main

    db = tmp_path / "store.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    before = db.read_bytes()
    monkeypatch.setenv("FOUNDRY_STORE", str(db))
    data = write_char_dataset(tmp_path / "data")
    exp = tmp_path / "e.yaml"
    exp.write_text("base_model: v1\n")
    rc = train_main([str(exp), "--quiet", *tiny_overrides(data, tmp_path / "run", **{"training.max_iters": 10})])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (tmp_path / "run" / "summary.json").is_file()       # it trained
    assert "not recorded in the experiment store" in err and str(db) in err
    assert db.read_bytes() == before

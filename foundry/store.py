"""The experiment store: every run recorded in an embedded SQLite database (torch-free).

    store = Store("runs/foundry.sqlite")
    store.start(run_id, cfg, seed=1337, parent="...", mutation="attention mla", sweep="...", artifacts={...})
    store.finish(run_id, metrics={"val_bpb": 2.1}, wall_seconds=12.3)      # or .fail(run_id, error) / .prune(...)
    store.get(run_id)["status"], store.runs(sweep="...")

One row per run: id, sweep, label, parent, mutation, resolved config (YAML) and its hash, code version (git SHA
and dirty flag), seed, status (running | done | failed | pruned), metrics (JSON), error, wall time, artifact
paths (JSON), timestamps. Promotions have their own table, and so do sweep decisions (promoted or not).

Safe with concurrent jobs: WAL journal (readers never block the writer), a busy timeout instead of "database is
locked" errors, and every write one short `BEGIN IMMEDIATE` transaction. Intact after SIGKILL: SQLite commits are
atomic and the WAL is replayed on the next open, so a killed writer loses at most its uncommitted transaction.

Faults: a store locked by another writer is waited for up to `timeout` seconds (FOUNDRY_STORE_TIMEOUT, default
60), then StoreLockedError; a file that is not an SQLite database, or one whose tables are another program's,
is refused (StoreCorruptError) naming the file and how to start a new store. Both are StoreError.

`recorded_run(cfg)` wraps any run (a `with` block) so it is recorded the same way; a store it cannot use never
stops the run: the run goes on and a line on stderr says it was not recorded.
`python -m foundry.store [--store PATH] list|show ID|promotions` prints what is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DEFAULT_STORE = "runs/foundry.sqlite"
STATUSES = ("running", "done", "failed", "pruned")
SCHEMA_VERSION = 1           # PRAGMA user_version of a foundry store (0: a store from before it was stamped)
DEFAULT_TIMEOUT = 60.0       # seconds a write waits for another writer's lock (transactions take milliseconds)
RECORD_TIMEOUT = 10.0        # the same for recorded_run: a training run does not wait long to be recorded
_COLUMNS = {"runs": {"id", "sweep", "label", "parent", "mutation", "config", "config_hash", "git_sha", "git_dirty",
                     "seed", "status", "metrics", "error", "wall_seconds", "artifacts", "created", "updated"},
            "promotions": {"id", "sweep", "winner", "mutation", "path", "decision", "created"},
            "decisions": {"sweep", "decision", "updated"}}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id           TEXT PRIMARY KEY,
    sweep        TEXT,
    label        TEXT,
    parent       TEXT,
    mutation     TEXT,
    config       TEXT NOT NULL,
    config_hash  TEXT NOT NULL,
    git_sha      TEXT,
    git_dirty    INTEGER,
    seed         INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'pruned')),
    metrics      TEXT NOT NULL DEFAULT '{}',
    error        TEXT,
    wall_seconds REAL,
    artifacts    TEXT NOT NULL DEFAULT '{}',
    created      REAL NOT NULL,
    updated      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep);
CREATE TABLE IF NOT EXISTS promotions (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep     TEXT,
    winner    TEXT,
    mutation  TEXT,
    path      TEXT,
    decision  TEXT NOT NULL,
    created   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    sweep     TEXT PRIMARY KEY,
    decision  TEXT NOT NULL,
    updated   REAL NOT NULL
);
"""


def default_store_path() -> Path:
    return Path(os.environ.get("FOUNDRY_STORE", DEFAULT_STORE))


class StoreError(RuntimeError):
    """The experiment store cannot be used; the message names the file and what to do."""


class StoreLockedError(StoreError):
    pass


class StoreCorruptError(StoreError):
    pass


def _new_store_hint(path: Path) -> str:
    return (f"move it aside (`mv {path} {path}.bad`; a new store is created at the next run) or record into "
            f"another file with --store PATH or FOUNDRY_STORE=PATH")


@contextmanager
def _sqlite_errors(path: Path, timeout: float) -> Iterator[None]:
    """SQLite's errors as StoreErrors that say which file and what to do."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise StoreLockedError(f"{path}: the experiment store is locked by another process (waited {timeout:g} s "
                                   f"for it); let that process finish, raise FOUNDRY_STORE_TIMEOUT, or "
                                   f"record into another file with --store PATH") from None
        if "no such table" in str(e) or "no such column" in str(e) or "has no column" in str(e):
            raise StoreCorruptError(f"{path}: not a foundry experiment store ({e}); {_new_store_hint(path)}") from None
        raise
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        raise StoreCorruptError(f"{path}: the experiment store is damaged or not an SQLite database ({e}); "
                                f"{_new_store_hint(path)}") from None


def code_version(cwd: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(git SHA, dirty flag) of the foundry checkout, or (None, None) outside a git work tree."""
    where = cwd or Path(__file__).resolve().parents[1]
    try:
        r = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=where, capture_output=True, text=True,
                           timeout=10)
        sha = r.stdout.strip()
        if r.returncode != 0 or len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
            return None, None  # not a git work tree, or one without commits
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


class Store:
    """A handle on the store at `path` (created on first use). One per process; cheap to open."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout = float(timeout if timeout is not None
                             else os.environ.get("FOUNDRY_STORE_TIMEOUT", DEFAULT_TIMEOUT))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            with _sqlite_errors(self.path, self.timeout):
                self._db.row_factory = sqlite3.Row
                self._db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                complete = self._check_schema()  # before anything writes to the file
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"{self.path}: SQLite would not switch to WAL mode (got {mode}); put the store "
                                     f"on a local file system (set --store or FOUNDRY_STORE)")
                self._db.execute("PRAGMA synchronous = FULL")
                if complete:
                    return  # an existing store of this version: opening it takes no write lock
                with self._write() as db:
                    for stmt in _SCHEMA.strip().split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def _check_schema(self) -> bool:
        """Refuse another program's database (or another version's) before writing anything into it; True
        when it is a complete store of this version already."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables.discard("sqlite_sequence")
        ours = set(_COLUMNS)
        problem = None
        if version not in (0, SCHEMA_VERSION):
            problem = f"schema version {version}, this foundry writes {SCHEMA_VERSION}"
        elif tables and not tables & ours:
            problem = f"its tables ({', '.join(sorted(tables)[:5])}) are another program's"
        else:
            for t in tables & ours:
                cols = {r[1] for r in self._db.execute(f"PRAGMA table_info({t})")}
                if not _COLUMNS[t] <= cols:
                    problem = f"table {t!r} lacks the columns {', '.join(sorted(_COLUMNS[t] - cols)[:5])}"
                    break
        if problem:
            raise StoreCorruptError(f"{self.path}: not a foundry experiment store ({problem}); "
                                    f"{_new_store_hint(self.path)}")
        return version == SCHEMA_VERSION and tables >= ours

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction. BEGIN IMMEDIATE waits for another writer up to the busy timeout
        (SQLite's busy handler); past it, StoreLockedError."""
        with _sqlite_errors(self.path, self.timeout):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, q: str, args=()) -> list[sqlite3.Row]:
        with _sqlite_errors(self.path, self.timeout):
            return self._db.execute(q, args).fetchall()

    def close(self) -> None:
        self._db.close()

    # ---- writing ----------------------------------------------------------------------------------
    def start(self, run_id: str, config_yaml: str, config_hash: str, *, seed: int | None = None,
              parent: str | None = None, mutation: str | None = None, sweep: str | None = None,
              label: str | None = None, artifacts: dict | None = None,
              code: tuple[str | None, bool | None] | None = None) -> None:
        """Record a run as running (re-starting a recorded run resets its status and error, keeps `created`)."""
        sha, dirty = code if code is not None else code_version()
        now = time.time()
        with self._write() as db:
            db.execute(
                """INSERT INTO runs (id, sweep, label, parent, mutation, config, config_hash, git_sha, git_dirty,
                                     seed, status, artifacts, created, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET status='running', error=NULL, config=excluded.config,
                       config_hash=excluded.config_hash, git_sha=excluded.git_sha, git_dirty=excluded.git_dirty,
                       artifacts=excluded.artifacts, updated=excluded.updated""",
                (run_id, sweep, label, parent, mutation, config_yaml, config_hash, sha,
                 None if dirty is None else int(dirty), seed, json.dumps(artifacts or {}), now, now))

    def finish(self, run_id: str, metrics: dict, wall_seconds: float | None = None,
               artifacts: dict | None = None, status: str = "done") -> None:
        self._end(run_id, status, metrics=metrics, wall_seconds=wall_seconds, artifacts=artifacts)

    def fail(self, run_id: str, error: str, wall_seconds: float | None = None) -> None:
        self._end(run_id, "failed", error=error, wall_seconds=wall_seconds)

    def prune(self, run_id: str, metrics: dict | None = None, wall_seconds: float | None = None) -> None:
        self._end(run_id, "pruned", metrics=metrics, wall_seconds=wall_seconds)

    def set_status(self, run_id: str, status: str) -> None:
        self._end(run_id, status)

    def _end(self, run_id: str, status: str, *, metrics: dict | None = None, error: str | None = None,
             wall_seconds: float | None = None, artifacts: dict | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        sets, vals = ["status = ?", "updated = ?"], [status, time.time()]
        if metrics is not None:
            sets.append("metrics = ?"), vals.append(json.dumps(metrics))
        if error is not None:
            sets.append("error = ?"), vals.append(error)
        if wall_seconds is not None:
            sets.append("wall_seconds = ?"), vals.append(float(wall_seconds))
        if artifacts is not None:
            sets.append("artifacts = ?"), vals.append(json.dumps(artifacts))
        with self._write() as db:
            cur = db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*vals, run_id))
            if cur.rowcount == 0:
                raise KeyError(f"no run {run_id!r} in {self.path}")

    def record_promotion(self, sweep: str, winner: str, mutation: str, path: str, decision: dict) -> None:
        with self._write() as db:
            db.execute("INSERT INTO promotions (sweep, winner, mutation, path, decision, created) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (sweep, winner, mutation, path, json.dumps(decision), time.time()))

    def record_decision(self, sweep: str, decision: dict) -> None:
        """A sweep's promotion decision (rule, correction, numbers), promoted or not; a resumed sweep's
        decision replaces the earlier one."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO decisions (sweep, decision, updated) VALUES (?, ?, ?)",
                       (sweep, json.dumps(decision, default=str), time.time()))

    # ---- reading ----------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict | None:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _row(rows[0]) if rows else None

    def runs(self, *, sweep: str | None = None, status: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if sweep is not None:
            q += " AND sweep = ?"
            args.append(sweep)
        if status is not None:
            q += " AND status = ?"
            args.append(status)
        return [_row(r) for r in self._read(q + " ORDER BY created, id", args)]

    def promotions(self, sweep: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM promotions", []
        if sweep is not None:
            q, args = q + " WHERE sweep = ?", [sweep]
        return [{**dict(r), "decision": json.loads(r["decision"])} for r in self._read(q + " ORDER BY id", args)]

    def decision(self, sweep: str) -> dict | None:
        rows = self._read("SELECT decision FROM decisions WHERE sweep = ?", (sweep,))
        return json.loads(rows[0][0]) if rows else None

    def integrity(self) -> str:
        return self._read("PRAGMA integrity_check")[0][0]


class _Recording:
    def __init__(self, run_id: str):
        self.id, self.metrics, self.artifacts = run_id, {}, None


@contextmanager
def recorded_run(cfg, store: str | os.PathLike | None = None, *, run_id: str | None = None,
                 mutation: str | None = None, parent: str | None = None, warn=None) -> Iterator[_Recording]:
    """Record one run of `cfg` (an ExperimentConfig) around a block: `running` on entry, `done` with
    `rec.metrics` on a clean exit, `failed` with the error if the block raises (the error propagates).
    A store that cannot be used (locked past RECORD_TIMEOUT, damaged, another program's) never stops the
    block: `warn` (default: a line on stderr) says the run is not recorded and why.

        with recorded_run(cfg) as rec:
            rec.metrics = train(cfg)
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run_id = run_id or f"{cfg.out_dir}@{time.strftime('%Y%m%dT%H%M%S')}"
    lin = cfg.lineage or {}
    s = None
    try:
        s = Store(store, timeout=float(os.environ.get("FOUNDRY_STORE_TIMEOUT", RECORD_TIMEOUT)))
        s.start(run_id, cfg.to_yaml(), cfg.hash(), seed=cfg.training.seed, parent=parent or lin.get("parent"),
                mutation=mutation or lin.get("mutation"), artifacts={"out_dir": str(cfg.out_dir)})
    except StoreError as e:
        warn(f"note: this run is not recorded in the experiment store: {e}")
        if s is not None:
            s.close()
        s = None
    rec, t0 = _Recording(run_id), time.perf_counter()

    def end(record) -> None:
        if s is None:
            return
        try:
            record()
        except StoreError as e:
            warn(f"note: the end of this run is not recorded in the experiment store: {e}")
        finally:
            s.close()

    try:
        yield rec
    except BaseException as e:
        end(lambda: s.fail(run_id, f"{type(e).__name__}: {e}", wall_seconds=time.perf_counter() - t0))
        raise
    end(lambda: s.finish(run_id, {k: v for k, v in rec.metrics.items()
                                  if isinstance(v, (int, float, str, bool, type(None)))},
                         wall_seconds=time.perf_counter() - t0, artifacts=rec.artifacts))


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["metrics"] = json.loads(d["metrics"] or "{}")
    d["artifacts"] = json.loads(d["artifacts"] or "{}")
    d["git_dirty"] = None if d["git_dirty"] is None else bool(d["git_dirty"])
    return d


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.store", description="Show what the experiment store holds.")
    p.add_argument("--store", default=None, help=f"store file (default: $FOUNDRY_STORE or {DEFAULT_STORE})")
    sub = p.add_subparsers(dest="cmd")
    ls = sub.add_parser("list", help="one line per run")
    ls.add_argument("--sweep"), ls.add_argument("--status", choices=STATUSES)
    show = sub.add_parser("show", help="everything recorded about one run")
    show.add_argument("id")
    sub.add_parser("promotions", help="every promotion with its decision")
    args = p.parse_args(argv)
    path = Path(args.store) if args.store else default_store_path()
    if not path.is_file():
        print(f"error: no store at {path} (runs are recorded there by `python -m foundry.cli.sweep`)", file=sys.stderr)
        return 2
    try:
        store = Store(path)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "show":
        run = store.get(args.id)
        if run is None:
            print(f"error: no run {args.id!r} in {path}", file=sys.stderr)
            return 2
        print(json.dumps(run, indent=2))
    elif args.cmd == "promotions":
        for pr in store.promotions():
            print(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(pr['created']))}  {pr['mutation']:<24} "
                  f"{pr['path']}  {pr['decision'].get('rule', '')}")
    else:
        runs = store.runs(sweep=getattr(args, "sweep", None), status=getattr(args, "status", None))
        print(f"{'id':<48} {'status':<8} {'seed':>6} {'val_bpb':>8} {'wall_s':>7}  git")
        for r in runs:
            bpb, wall = r["metrics"].get("val_bpb"), r["wall_seconds"]
            sha = (r["git_sha"] or "-")[:8] + ("+dirty" if r["git_dirty"] else "")
            seed = "-" if r["seed"] is None else r["seed"]
            print(f"{r['id'][:48]:<48} {r['status']:<8} {seed:>6} {'-' if bpb is None else f'{bpb:.4f}':>8} "
                  f"{'-' if wall is None else f'{wall:.1f}':>7}  {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

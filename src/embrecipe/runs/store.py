r"""The run store: one row per training run, keyed by a stable hash of the run's full configuration.

A sweep is hundreds of independent, expensive runs that may be interrupted at any moment (``kill -9``, a lost
Ray node) and resumed, possibly by several workers at once. The store therefore has to be

* **idempotent** — the key of a run is :func:`run_key` of its configuration (model, method and
  hyper-parameters, budget, data fingerprint, seed, batch size, learning rate, code version, ...), so the
  same cell always maps to the same row and a rerun never duplicates it;
* **atomic and concurrent** — SQLite in WAL mode with a busy timeout; every state change is one
  ``BEGIN IMMEDIATE`` transaction, so a process killed mid-write leaves the previous committed state;
* **claim-based** — :meth:`RunStore.claim` moves a row to ``running`` for one worker only. A claim whose
  worker is gone (same host and its pid no longer exists) or whose heartbeat is older than
  ``stale_after`` seconds (default: 3 missed heartbeats of 60 s) is *stale* and may be taken over, which is how
  a sweep recovers after a kill — also from another host, or from a restarted container whose new process got
  the old PID (a worker id carries a per-process token, so a PID alone never proves a claim is ours).
  :meth:`RunStore.release_claims` (``embrecipe store release STORE``) hands claims back at once.

Statuses: ``pending`` → ``running`` → ``completed`` | ``failed``.

Run records (:class:`~embrecipe.runs.records.RunRecord`, what the trainer returns) are stored whole as their
schema-2 JSON in ``record``; query columns (model, method, variant, budget, seed, N, N_t, model FLOPs, tokens,
steps, final train/val loss, loss curve, eval, timings) are copied out of them. :meth:`RunStore.records` parses
them back into ``RunRecord`` objects.

**Store schema.** ``meta.schema_version`` is ``"2"`` for stores whose records are schema 2. A store written
before (``"1"``: trainer records in their nested layout) is read as it is; the first *write* to it rewrites
every record into schema 2 in one transaction (query columns unchanged), so merely reading a store never
changes its file.

Example::

    >>> store = RunStore(":memory:")
    >>> cfg = {"model": "m", "method": {"name": "full"}, "budget": 1e15, "seed": 0}
    >>> key = run_key(cfg)
    >>> store.claim(key, cfg)
    True
    >>> store.claim(key, cfg)            # somebody (here: we) already holds it
    False
    >>> store.complete(key, {"config": cfg, "final_val_loss": 1.23, "tokens": 1e9})
    >>> store.get(key)["status"]
    'completed'
    >>> store.records()[0].final_val_loss
    1.23
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.jsonio import json_safe
from embrecipe.runs.records import RunRecord, as_record, float_or_none, run_key, variant_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

STATUSES = ("pending", "running", "completed", "failed")

# Heartbeats every DEFAULT_HEARTBEAT_S; a claim is stale after STALE_AFTER_BEATS of them are missed.
DEFAULT_HEARTBEAT_S = 60.0
STALE_AFTER_BEATS = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    model TEXT,
    method TEXT,
    variant TEXT,
    budget REAL,
    seed INTEGER,
    n_params INTEGER,
    n_trainable INTEGER,
    model_flops REAL,
    tokens REAL,
    steps INTEGER,
    final_train_loss REAL,
    final_val_loss REAL,
    loss_curve TEXT,
    eval TEXT,
    timings TEXT,
    config TEXT NOT NULL,
    record TEXT,
    error TEXT,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""
_SCHEMA_VERSION = "2"
# Store schemas this code opens: "1" (records in the layouts before embrecipe.runs.records; migrated on first write).
_OLD_SCHEMA_VERSIONS = ("1",)

# Columns kept as JSON text.
_JSON_COLUMNS = ("loss_curve", "eval", "timings")


# A per-process token: after a container restart the new sweep may get the killed one's PID (and hostname), and
# without it would mistake the dead claim for its own.
_PROCESS_TOKEN = os.urandom(4).hex()


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}"


def _parse_worker(worker: str) -> tuple[str, str]:
    """(host, pid) of ``host:pid:token`` (or the older ``host:pid``)."""
    parts = worker.split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), parts[-2]
    host, _, pid = worker.rpartition(":")
    return host, pid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _parse_location(url_or_path: str | os.PathLike[str]) -> str:
    text = os.fspath(url_or_path)
    if "://" not in text:
        return text
    if text.startswith("sqlite:///"):
        # sqlite:///relative.db and sqlite:////abs/path.db, as SQLAlchemy spells them.
        rest = text[len("sqlite:///") :]
        return rest or ":memory:"
    if text in ("sqlite://", "sqlite:///:memory:"):
        return ":memory:"
    scheme = text.split("://", 1)[0]
    raise EmbrecipeError(
        f"store URL scheme {scheme!r} is not supported yet; use a file path or sqlite:///path/to/runs.sqlite"
    )


class RunStore:
    """SQLite-backed run store (see the module docstring). Safe to open from many processes at once.

    ``stale_after``: seconds without a heartbeat after which another worker may take over a ``running``
    claim even when the owner cannot be checked (another host, or a recycled PID); default 3 missed heartbeats
    (180 s). Workers on the same host are checked by pid, so a killed sweep's cells are reclaimed immediately.
    """

    def __init__(self, url_or_path: str | os.PathLike[str], *,
                 stale_after: float = STALE_AFTER_BEATS * DEFAULT_HEARTBEAT_S, timeout: float = 60.0) -> None:
        self.location = _parse_location(url_or_path)
        self.stale_after = float(stale_after)
        if self.location != ":memory:":
            parent = Path(self.location).parent
            if not parent.exists():
                raise InputError(f"store directory {parent} does not exist")
            if Path(self.location).is_dir():
                raise InputError(f"store {self.location}: a directory, not a run store (an SQLite file)")
        try:
            version = self._open(timeout)
        except sqlite3.DatabaseError as exc:  # not SQLite, unreadable, read-only, locked: one line, not a traceback
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            raise InputError(f"store {self.location}: cannot open it as a run store ({exc})") from None
        if version != _SCHEMA_VERSION and version not in _OLD_SCHEMA_VERSIONS:
            raise InputError(f"store {self.location} has schema version {version}; this embrecipe reads "
                             f"{', '.join((*_OLD_SCHEMA_VERSIONS, _SCHEMA_VERSION))} (upgrade embrecipe)")
        self._needs_migration = version != _SCHEMA_VERSION

    def _open(self, timeout: float) -> str:
        """Connect, create the tables when new, and return the store's schema version."""
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so that each write takes the lock up front
        # instead of upgrading a read lock (which is where SQLite's 'database is locked' deadlocks come from).
        self._conn = sqlite3.connect(self.location, timeout=timeout, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if self.location != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._tx():
            for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                self._conn.execute(stmt)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)", (_SCHEMA_VERSION,)
            )
        return str(self._conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0])

    # -- plumbing ---------------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if self._needs_migration:
                self._migrate()  # in the same transaction as the first write: all or nothing
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    _needs_migration = False  # set in __init__ once the schema is known

    def migrate(self) -> int:
        """Bring an older store to the current schema now (any write would); returns the records rewritten."""
        if not self._needs_migration:
            return 0
        with self._tx():
            pass  # _tx migrates first
        return self._migrated

    def _migrate(self) -> None:
        """Rewrite every record of an older store into schema 2 (inside the caller's transaction)."""
        rows = self._conn.execute("SELECT key, record FROM runs WHERE record IS NOT NULL").fetchall()
        for row in rows:
            rec = self._parse_record(row["key"], json.loads(row["record"]))
            self._conn.execute("UPDATE runs SET record = ? WHERE key = ?", (_dumps(rec.to_dict()), row["key"]))
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (_SCHEMA_VERSION,))
        self._needs_migration = False
        self._migrated = len(rows)

    def _parse_record(self, key: str, record: Any) -> RunRecord:
        return RunRecord.from_dict(record, where=f"store {self.location}, run {key}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def __contains__(self, key: object) -> bool:
        return self._conn.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    @staticmethod
    def _row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        for col in (*_JSON_COLUMNS, "config", "record"):
            if d.get(col) is not None:
                d[col] = json.loads(d[col])
        return d

    def _is_stale(self, row: sqlite3.Row, now: float) -> bool:
        worker = row["worker"] or ""
        if worker == _worker_id():
            return False
        host, pid = _parse_worker(worker)
        # The same PID with another token is a dead process whose PID was reused (container restart): only the
        # heartbeat can tell, so fall through to it.
        if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            return True
        beat = row["heartbeat_at"] or row["updated_at"]
        return now - float(beat) > self.stale_after

    # -- writes -----------------------------------------------------------------------------------------
    def add_pending(self, configs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Register cells (idempotently) as ``pending``; rows that exist keep their status. Returns keys."""
        now = time.time()
        keys = []
        with self._tx() as c:
            for cfg in configs:
                key = run_key(cfg)
                keys.append(key)
                c.execute(
                    "INSERT OR IGNORE INTO runs (key, status, model, method, variant, budget, seed, config,"
                    " created_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, _str_or_none(cfg.get("model")), _method_name(cfg.get("method")),
                     variant_of(cfg.get("method")), float_or_none(cfg.get("budget")),
                     _int_or_none(cfg.get("seed")), _dumps(cfg), now, now),
                )
        return keys

    def claim(self, key: str, config: Mapping[str, Any] | None = None, *, worker: str | None = None) -> bool:
        """Take ``key`` for this worker. True iff the caller now owns it and should train it.

        A row that is ``pending``/``failed``, absent (then ``config`` is required), or ``running`` with a
        stale claim is claimed; ``completed`` and live ``running`` rows are not.
        """
        worker = worker or _worker_id()
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
            if row is None:
                if config is None:
                    raise InputError(f"run {key} is not in the store and no config was given to claim it")
                if run_key(config) != key:
                    raise InputError(f"run key {key} does not match its config (expected {run_key(config)})")
                c.execute(
                    "INSERT INTO runs (key, status, model, method, variant, budget, seed, config, worker,"
                    " attempts, created_at, updated_at, heartbeat_at)"
                    " VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
                    (key, _str_or_none(config.get("model")), _method_name(config.get("method")),
                     variant_of(config.get("method")), float_or_none(config.get("budget")),
                     _int_or_none(config.get("seed")), _dumps(config), worker, now, now, now),
                )
                return True
            status = row["status"]
            if status == "completed":
                return False
            if status == "running" and not self._is_stale(row, now):
                return False
            c.execute(
                "UPDATE runs SET status = 'running', worker = ?, attempts = attempts + 1, error = NULL,"
                " updated_at = ?, heartbeat_at = ? WHERE key = ?",
                (worker, now, now, key),
            )
            return True

    def heartbeat(self, key: str) -> None:
        """Tell other workers the claim on ``key`` is alive (call every few minutes during long runs)."""
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE runs SET heartbeat_at = ? WHERE key = ? AND status = 'running'", (now, key))

    def complete(self, key: str, record: RunRecord | Mapping[str, Any]) -> None:
        """Store a finished run's record (a :class:`RunRecord`, or a dict of any layout it reads) and mark it
        ``completed`` (inserting the row if needed)."""
        now = time.time()
        rec = as_record(record, where=f"record of run {key}")
        cfg = None if rec.config is None else rec.config.to_dict()
        with self._tx() as c:
            exists = c.execute("SELECT config FROM runs WHERE key = ?", (key,)).fetchone()
            if exists is None:
                if cfg is None:
                    raise InputError(f"run {key} is not in the store and its record has no 'config'")
                c.execute(
                    "INSERT INTO runs (key, status, config, created_at, updated_at) VALUES (?, 'pending', ?, ?, ?)",
                    (key, _dumps(cfg), now, now),
                )
            c.execute(
                "UPDATE runs SET status = 'completed', model = COALESCE(?, model), method = COALESCE(?, method),"
                " variant = COALESCE(?, variant), budget = COALESCE(?, budget), seed = COALESCE(?, seed),"
                " n_params = ?, n_trainable = ?, model_flops = ?, tokens = ?, steps = ?,"
                " final_train_loss = ?, final_val_loss = ?, loss_curve = ?, eval = ?, timings = ?,"
                " record = ?, error = NULL, updated_at = ?, heartbeat_at = ? WHERE key = ?",
                (
                    _str_or_none(rec.model), _method_name(rec.method), rec.variant,
                    float_or_none(rec.budget), _int_or_none(rec.seed),
                    _int_or_none(rec.n_params), _int_or_none(rec.n_trainable),
                    float_or_none(rec.model_flops), float_or_none(rec.tokens),
                    _int_or_none(rec.steps), float_or_none(rec.final_train_loss),
                    float_or_none(rec.final_val_loss),
                    *(_dumps_or_none(v) for v in (rec.loss_curve, rec.eval, rec.all_timings)),
                    _dumps(rec.to_dict()), now, now, key,
                ),
            )

    def fail(self, key: str, error: str) -> None:
        """Mark a claimed run ``failed`` with its error message (a rerun of the sweep retries it)."""
        now = time.time()
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status = 'failed', error = ?, updated_at = ? WHERE key = ?",
                (str(error)[:4000], now, key),
            )

    def release(self, key: str) -> None:
        """Give a claim back (status ``pending``), e.g. on Ctrl-C before the run produced anything."""
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE runs SET status = 'pending', worker = NULL, updated_at = ? "
                      "WHERE key = ? AND status = 'running'", (now, key))

    def release_claims(self, keys: Iterable[str] | None = None) -> list[str]:
        """Hand ``running`` claims back (status ``pending``): the given keys, or every running row. Returns the keys
        released. For claims of workers known to be dead; a live worker keeps training and its result still lands."""
        now = time.time()
        with self._tx() as c:
            if keys is None:
                rows = c.execute("SELECT key FROM runs WHERE status = 'running'").fetchall()
            else:
                keys = list(keys)
                rows = [r for k in keys
                        for r in c.execute("SELECT key FROM runs WHERE key = ? AND status = 'running'", (k,))]
            released = [str(r[0]) for r in rows]
            for k in released:
                c.execute("UPDATE runs SET status = 'pending', worker = NULL, updated_at = ? WHERE key = ?",
                          (now, k))
        return released

    def rekey(self, old: str, new: str, config: Mapping[str, Any]) -> bool:
        """Move the completed run ``old`` to key ``new`` with identity ``config``, when the run's identity changed
        its form but not its meaning (a validation file named by content instead of path: ``legacy_run_key``).
        Nothing happens (False) unless ``old`` is completed and ``new`` is not in the store; the run is never
        duplicated, so a fit sees it once."""
        with self._tx() as c:
            row = c.execute("SELECT status, record FROM runs WHERE key = ?", (old,)).fetchone()
            if row is None or row["status"] != "completed" or \
                    c.execute("SELECT 1 FROM runs WHERE key = ?", (new,)).fetchone() is not None:
                return False
            record = json.loads(row["record"]) if row["record"] else None
            if isinstance(record, dict):
                record["key"] = new
                record["rekeyed_from"] = old
            c.execute("UPDATE runs SET key = ?, config = ?, record = ?, updated_at = ? WHERE key = ?",
                      (new, _dumps(dict(config)), None if record is None else _dumps(record), time.time(), old))
        return True

    def put(self, record: RunRecord | Mapping[str, Any]) -> str:
        """Insert or replace a completed run from its record alone (key from the record's config)."""
        rec = as_record(record)
        if rec.config is None:
            raise InputError("record has no 'config' mapping to derive its key from")
        key = str(rec.key or rec.config.key())
        self.complete(key, rec)
        return key

    # -- reads ------------------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._row_to_dict(row)

    def status(self, key: str) -> str | None:
        row = self._conn.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every row (or those with ``status``) as dicts with JSON columns decoded, oldest first."""
        if status is not None and status not in STATUSES:
            raise InputError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        sql = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY created_at, key"
        return [self._row_to_dict(r) for r in self._conn.execute(sql, (status,) if status else ())]

    def record(self, key: str) -> RunRecord | None:
        """The record of run ``key`` (its row's key and config filled in), None if there is no such row."""
        row = self.get(key)
        return None if row is None else self._row_record(row)

    def records(self) -> list[RunRecord]:
        """The records of completed runs, each with its row ``key`` (what the law fit consumes)."""
        return [self._row_record(row) for row in self.rows("completed")]

    def _row_record(self, row: Mapping[str, Any]) -> RunRecord:
        raw = dict(row["record"] or {})
        raw.setdefault("key", row["key"])
        raw.setdefault("config", row["config"])
        return self._parse_record(row["key"], raw)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self._conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"):
            out[status] = int(n)
        return out

    def integrity_ok(self) -> bool:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # -- export -----------------------------------------------------------------------------------------
    def to_dataframe(self, status: str | None = None) -> pd.DataFrame:
        """All columns as a :class:`pandas.DataFrame` (JSON columns kept as JSON text for flat export)."""
        import pandas as pd

        sql = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY created_at, key"
        return pd.read_sql_query(sql, self._conn, params=(status,) if status else None)

    def export(self, path: str | os.PathLike[str], status: str | None = None) -> Path:
        """Write the runs table to ``.csv`` or ``.parquet`` (chosen by the file suffix)."""
        path = Path(path)
        df = self.to_dataframe(status)
        if path.suffix == ".csv":
            df.to_csv(path, index=False)
        elif path.suffix in (".parquet", ".pq"):
            df.to_parquet(path, index=False)
        else:
            raise InputError(f"cannot export to {path}: use a .csv or .parquet file name")
        return path


def is_store_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names an existing SQLite file (by its magic header) or a ``sqlite://`` URL."""
    text = os.fspath(path)
    if text.startswith("sqlite://"):
        return True
    p = Path(text)
    if not p.is_file():
        return False
    with p.open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def _dumps(value: Any) -> str:
    # Strict JSON: a non-finite loss (a diverged run, an old record) is stored as null, never as a NaN token.
    return json.dumps(json_safe(value), sort_keys=True, default=_json_default, allow_nan=False)


def _dumps_or_none(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _method_name(method: Any) -> str | None:
    if isinstance(method, Mapping):
        return _str_or_none(method.get("name") or method.get("method"))
    return _str_or_none(method)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None

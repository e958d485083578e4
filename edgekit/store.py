"""The results store: every run, with its plan, result, artifact and device facts, in SQLite.

Default location: `$EDGEKIT_DB`, else `$XDG_DATA_HOME/edgekit/results.db` (`~/.local/share/...`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    created_at   TEXT NOT NULL,
    device       TEXT NOT NULL,
    artifact_id  TEXT NOT NULL,
    target       TEXT NOT NULL,
    precision    TEXT NOT NULL,
    status       TEXT NOT NULL,
    plan_json    TEXT NOT NULL,
    result_json  TEXT NOT NULL,
    manifest_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
"""


def default_db_path() -> Path:
    if os.environ.get("EDGEKIT_DB"):
        return Path(os.environ["EDGEKIT_DB"])
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "edgekit" / "results.db"


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    created_at: str
    device: str
    artifact_id: str
    target: str
    precision: str
    status: str
    plan: dict[str, Any]
    result: dict[str, Any]
    manifest: dict[str, Any]


class ResultsStore:
    """A thin layer over one SQLite file; safe to open from several processes."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create_private()
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise EdgekitError(
                f"cannot open the results store {self.path} ({exc}); pass --db PATH or set EDGEKIT_DB"
            ) from exc

    def _create_private(self) -> None:
        """Results name hosts, models and their failures: the file is the user's alone (0600), like ~/.ssh."""
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def add(self, *, device: str, plan: dict, result: dict, manifest: dict, artifact_id: str) -> str:
        """Store one run; a run id already stored is an EdgekitError (a stored run is never overwritten)."""
        run_id = result.get("run_id") or plan["run_id"]
        try:
            self._insert(run_id, device=device, plan=plan, result=result, manifest=manifest, artifact_id=artifact_id)
        except sqlite3.IntegrityError as exc:
            raise EdgekitError(
                f"run {run_id} is already stored in {self.path}; a stored run is never overwritten"
            ) from exc
        return run_id

    def _insert(self, run_id: str, *, device: str, plan: dict, result: dict, manifest: dict, artifact_id: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    result.get("started_at") or "",
                    device,
                    artifact_id,
                    manifest.get("target", "?"),
                    manifest.get("precision", "?"),
                    result.get("status", "error"),
                    json.dumps(plan),
                    json.dumps(result),
                    json.dumps(manifest),
                ),
            )

    def get(
        self, run_ids: list[str] | None = None, *, last: int | None = None, statuses: tuple[str, ...] | None = None
    ) -> list[StoredRun]:
        """Runs by id (an unambiguous prefix, or the short id reports show: the id's end), or the `last` N runs
        with one of `statuses` (default any), oldest first."""
        with self._connect() as db:
            if run_ids:
                rows = []
                for run_id in run_ids:
                    found = db.execute(
                        "SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' OR run_id LIKE ? ESCAPE '\\'",
                        (_like(run_id) + "%", "%" + _like(run_id)),
                    ).fetchall()
                    found = [row for row in found if row[0] == run_id] or found  # a whole id is never ambiguous
                    if len(found) != 1:
                        what = "no run" if not found else f"{len(found)} runs"
                        raise EdgekitError(f"{what} in {self.path} match {run_id!r}; see `edgekit report`")
                    rows.extend(found)
            else:
                where, args = _status_filter(statuses)
                query = f"SELECT * FROM runs{where} ORDER BY created_at DESC, rowid DESC"
                rows = db.execute(query + (" LIMIT ?" if last else ""), (*args, last) if last else args).fetchall()
                rows.reverse()
        return [_row_to_run(row) for row in rows]

    def count(self, statuses: tuple[str, ...] | None = None) -> int:
        """How many runs with one of `statuses` (default any) are stored."""
        where, args = _status_filter(statuses)
        with self._connect() as db:
            return db.execute(f"SELECT COUNT(*) FROM runs{where}", args).fetchone()[0]


def _like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern: its own % and _ match only themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _status_filter(statuses: tuple[str, ...] | None) -> tuple[str, tuple[str, ...]]:
    if not statuses:
        return "", ()
    return f" WHERE status IN ({','.join('?' * len(statuses))})", tuple(statuses)


def _row_to_run(row: tuple) -> StoredRun:
    run_id, created_at, device, artifact_id, target, precision, status, plan, result, manifest = row
    return StoredRun(
        run_id,
        created_at,
        device,
        artifact_id,
        target,
        precision,
        status,
        json.loads(plan),
        json.loads(result),
        json.loads(manifest),
    )

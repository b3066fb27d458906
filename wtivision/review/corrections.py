"""The corrections store: a person's confirmations and corrections, kept apart from the machine's reading.

Append-only: every save is a new revision (operator, UTC time, the record); SQLite triggers refuse
UPDATE and DELETE, so the history of a photo's record cannot be rewritten through this store.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

REVIEW_DB = "review.sqlite"
RECORD_FIELDS = ("status", "labels", "make", "model", "type", "calibre", "serial", "country", "year",
                 "import_mark", "other_markings", "lot_packaging", "headstamp", "notes")
STATUSES = ("draft", "confirmed", "rejected")
MAX_FIELD = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    operator TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revisions_sha ON revisions (sha256, id);
CREATE TRIGGER IF NOT EXISTS revisions_no_update BEFORE UPDATE ON revisions
BEGIN SELECT RAISE(ABORT, 'revisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS revisions_no_delete BEFORE DELETE ON revisions
BEGIN SELECT RAISE(ABORT, 'revisions are append-only'); END;
"""


@dataclass
class Record:
    """The arms-trace record a person fills in for one photo."""

    status: str = "draft"
    labels: str = ""
    make: str = ""
    model: str = ""
    type: str = ""
    calibre: str = ""
    serial: str = ""
    country: str = ""
    year: str = ""
    import_mark: str = ""
    other_markings: str = ""
    lot_packaging: str = ""
    headstamp: str = ""
    notes: str = ""

    @classmethod
    def from_form(cls, form: dict[str, str]) -> Record:
        unknown = set(form) - set(RECORD_FIELDS) - {"operator", "csrf"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        values = {}
        for f in fields(cls):
            v = str(form.get(f.name, "")).strip()
            if len(v) > MAX_FIELD:
                raise ValueError(f"field {f.name} is longer than {MAX_FIELD} characters")
            if any(ord(ch) < 32 and ch not in "\n\t" for ch in v):
                raise ValueError(f"field {f.name} has control characters")
            values[f.name] = v
        if values["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        return cls(**values)


@dataclass
class Revision:
    id: int
    sha256: str
    path: str
    operator: str
    created_at: str
    record: Record = field(default_factory=Record)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["record"] = asdict(self.record)
        return d


class Corrections:
    def __init__(self, outdir: str | os.PathLike[str]):
        self.path = Path(outdir) / REVIEW_DB
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def add(self, sha256: str, path: str, operator: str, record: Record) -> Revision:
        operator = operator.strip()
        if not operator or len(operator) > 200:
            raise ValueError("an operator name (1-200 characters) is required")
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        cur = self.db.execute("INSERT INTO revisions (sha256, path, operator, created_at, record) VALUES (?,?,?,?,?)",
                              (sha256, path, operator, now, json.dumps(asdict(record), ensure_ascii=False)))
        return Revision(cur.lastrowid, sha256, path, operator, now, record)

    def history(self, sha256: str) -> list[Revision]:
        rows = self.db.execute("SELECT id, sha256, path, operator, created_at, record FROM revisions "
                               "WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
        return [Revision(r[0], r[1], r[2], r[3], r[4], Record(**json.loads(r[5]))) for r in rows]

    def latest(self) -> dict[str, Revision]:
        rows = self.db.execute("SELECT id, sha256, path, operator, created_at, record FROM revisions "
                               "WHERE id IN (SELECT MAX(id) FROM revisions GROUP BY sha256) ORDER BY path").fetchall()
        return {r[1]: Revision(r[0], r[1], r[2], r[3], r[4], Record(**json.loads(r[5]))) for r in rows}

    def confirmed(self) -> list[Revision]:
        return [r for r in self.latest().values() if r.record.status == "confirmed"]

    def export_csv(self) -> str:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "sha256", "operator", "confirmed_at", *RECORD_FIELDS])
        for r in self.confirmed():
            w.writerow([r.path, r.sha256, r.operator, r.created_at, *(getattr(r.record, k) for k in RECORD_FIELDS)])
        return buf.getvalue()

    def export_json(self) -> str:
        return json.dumps([r.to_dict() for r in self.confirmed()], ensure_ascii=False, indent=2)

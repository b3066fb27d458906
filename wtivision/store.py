"""The scan store: an embedded SQLite database that makes a scan resumable.

Results are keyed by (photo key, model set): the photo key is the SHA-256 of the
original's bytes (or ``path:<relative path>`` for a file that could not be read at
all). A second table maps every scanned path to its key, so identical photos are
analysed once and linked to each path. Each result is written in one transaction
together with its path row, so a scan killed at any point (Ctrl-C, kill -9, power
cut) loses at most the photos in flight, and never half-writes one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .results import ImageFindings

logger = logging.getLogger(__name__)

STORE_NAME = "store.sqlite"
STORE_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    key TEXT NOT NULL,
    model_set TEXT NOT NULL,
    status TEXT NOT NULL,
    findings TEXT NOT NULL,
    written_at REAL NOT NULL,
    PRIMARY KEY (key, model_set)
);
CREATE TABLE IF NOT EXISTS files (
    raw BLOB NOT NULL,
    model_set TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    key TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (raw, model_set)
);
CREATE INDEX IF NOT EXISTS files_key ON files (key, model_set);
"""


def display_path(raw: bytes) -> str:
    """A printable, JSON-safe, POSIX-style form of a relative path given as bytes.

    Bytes that are not UTF-8 are shown as backslash escapes; the exact bytes stay in
    the store's ``raw`` column so the file can always be found again.
    """
    text = raw.decode("utf-8", "backslashreplace")
    return text.replace(os.sep, "/") if os.sep != "/" else text


@dataclass(frozen=True)
class FileRow:
    raw: bytes
    path: str
    size: int
    mtime_ns: int
    key: str


class Store:
    """SQLite store in ``OUTDIR/store.sqlite``. One writer (the scan's main process)."""

    def __init__(self, outdir: str | os.PathLike[str]) -> None:
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.path = self.outdir / STORE_NAME
        self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('store_version', ?)", (str(STORE_VERSION),))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta -------------------------------------------------------------------
    def set_meta(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: object = None) -> object:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- lookups ----------------------------------------------------------------
    def known_file(self, raw: bytes, model_set: str, size: int, mtime_ns: int) -> str | None:
        """The key of an unchanged, already-finished file, or None."""
        row = self.db.execute(
            "SELECT f.key FROM files f JOIN results r ON r.key = f.key AND r.model_set = f.model_set "
            "WHERE f.raw = ? AND f.model_set = ? AND f.size = ? AND f.mtime_ns = ?",
            (raw, model_set, size, mtime_ns),
        ).fetchone()
        return row[0] if row else None

    def has_result(self, key: str, model_set: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM results WHERE key = ? AND model_set = ?", (key, model_set)
            ).fetchone()
            is not None
        )

    # -- writes -----------------------------------------------------------------
    def put(self, key: str, model_set: str, findings: ImageFindings | None, files: list[FileRow]) -> None:
        """Store one result (if given) and link paths to it, atomically."""
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if findings is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                    (key, model_set, findings.status, findings.to_json(), now),
                )
            self.db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(f.raw, model_set, f.path, f.size, f.mtime_ns, f.key, now) for f in files],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- reads ------------------------------------------------------------------
    def findings(self, model_set: str) -> Iterator[ImageFindings]:
        """Every stored result for ``model_set`` with ``path`` = first path (sorted) and
        ``also_at`` = the other paths, ordered by path."""
        paths: dict[str, list[str]] = {}
        for key, path in self.db.execute(
            "SELECT key, path FROM files WHERE model_set = ? ORDER BY path", (model_set,)
        ):
            paths.setdefault(key, []).append(path)
        rows = self.db.execute(
            "SELECT key, findings FROM results WHERE model_set = ?", (model_set,)
        ).fetchall()
        out = []
        for key, text in rows:
            f = ImageFindings.from_json(text)
            linked = paths.get(key, [])
            if linked:
                f.path, f.also_at = linked[0], linked[1:]
            out.append(f)
        out.sort(key=lambda f: f.path)
        yield from out

    def counts(self, model_set: str) -> dict[str, int]:
        files = self.db.execute("SELECT COUNT(*) FROM files WHERE model_set = ?", (model_set,)).fetchone()[0]
        by_status = dict(
            self.db.execute(
                "SELECT status, COUNT(*) FROM results WHERE model_set = ? GROUP BY status", (model_set,)
            ).fetchall()
        )
        return {"files": files, "distinct": sum(by_status.values()),
                **{f"results_{k}": v for k, v in by_status.items()}}


OBJECT_COLUMNS = (
    "path", "sha256", "status", "kind", "family", "label", "confidence",
    "x1", "y1", "x2", "y2", "text", "raw_text", "needs_review", "detail", "model", "error",
)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def export_results(store: Store, model_set: str, outdir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(Re)write ``results.jsonl`` and ``objects.csv`` from the store."""
    outdir = Path(outdir)
    items = list(store.findings(model_set))

    def write_jsonl(fh) -> None:
        for f in items:
            fh.write(f.to_json() + "\n")

    def write_csv(fh) -> None:
        w = csv.writer(fh)
        w.writerow(OBJECT_COLUMNS)
        for f in items:
            for path in [f.path, *f.also_at]:
                for row in object_rows(f):
                    w.writerow([path, f.sha256, f.status, *row])

    jsonl, objects = outdir / "results.jsonl", outdir / "objects.csv"
    _write_atomic(jsonl, write_jsonl)
    _write_atomic(objects, write_csv)
    return jsonl, objects


def object_rows(f: ImageFindings) -> list[list[object]]:
    """One CSV row per detection, classification and text reading (an error row for errors)."""
    rows: list[list[object]] = []
    if not f.ok:
        return [["error", "", "", "", "", "", "", "", "", "", "", f.error_code, "", f.error]]
    for d in f.detections:
        rows.append(["detection", d.family, d.label, round(d.confidence, 4), *d.box, "", "", "", "", d.model, ""])
    for c in f.classifications:
        box = f.detections[c.detection_index].box if c.detection_index is not None else ["", "", "", ""]
        fam = f.detections[c.detection_index].family if c.detection_index is not None else ""
        rows.append(["classification:" + c.task, fam, c.label, round(c.confidence, 4), *box, "", "", "",
                     c.original_label, c.model, ""])
    for t in f.texts:
        detail = json.dumps(t.headstamp.to_dict(), ensure_ascii=False) if t.headstamp else "|".join(t.candidates)
        rows.append(["text:" + t.kind, "marking", t.kind, round(t.confidence, 4), *t.box, t.text, t.raw_text,
                     int(t.needs_review), detail, t.model, ""])
    if not rows:
        rows.append(["none", "", "", "", "", "", "", "", "", "", "", "", "", ""])
    return rows

"""Evidence review: HTML report, chain-of-custody manifest and verification (and the local review app)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import WtivisionError
from ..results import ImageFindings
from ..store import STORE_NAME


@dataclass
class ScanOutput:
    """A scan's output folder, read-only: its root, model set, findings and the exact bytes of each path."""

    outdir: Path
    root: Path
    info: dict
    findings: list[ImageFindings]
    raw_paths: dict[str, bytes]  # display path -> path bytes relative to root

    @classmethod
    def open(cls, outdir: str | os.PathLike[str]) -> ScanOutput:
        import sqlite3

        out = Path(outdir)
        if not (out / "scan.json").is_file() or not (out / "results.jsonl").is_file():
            raise WtivisionError(f"{out} is not a scan output folder (no scan.json / results.jsonl)")
        info = json.loads((out / "scan.json").read_text(encoding="utf-8"))
        findings = [ImageFindings.from_json(line) for line in
                    (out / "results.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        raw: dict[str, bytes] = {}
        if (out / STORE_NAME).is_file():
            con = sqlite3.connect(f"file:{out / STORE_NAME}?mode=ro", uri=True)
            try:
                for b, p in con.execute("SELECT raw, path FROM files WHERE model_set = ?", (info["model_set"],)):
                    raw[p] = bytes(b)
            finally:
                con.close()
        return cls(out, Path(info["root"]), info, findings, raw)

    def file_of(self, display_path: str) -> bytes:
        """Absolute path (bytes) of a scanned photo, refused if it would leave the scanned root."""
        rel = self.raw_paths.get(display_path, os.fsencode(display_path))
        root = os.fsencode(self.root.resolve())
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(root + b"/"):
            raise WtivisionError(f"path {display_path!r} leaves the scanned folder")
        return full

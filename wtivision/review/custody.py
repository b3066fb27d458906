"""Chain of custody: a manifest of every original's SHA-256, the results' and models' hashes, and its
verification against a folder (photos missing, added, altered)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import WtivisionError
from ..registry import sha256_file
from . import ScanOutput

logger = logging.getLogger(__name__)
MANIFEST_VERSION = 1


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def build_manifest(outdir: str | os.PathLike[str]) -> dict:
    """The custody manifest of a scan output folder (photos hashed at scan time, outputs hashed now)."""
    scan = ScanOutput.open(outdir)
    photos = []
    for f in scan.findings:
        for p in [f.path, *f.also_at]:
            sha = f.sha256
            if not sha:  # unreadable at scan time: fingerprint the file as it is now
                try:
                    sha = sha256_file(os.fsdecode(scan.file_of(p)))
                except (OSError, WtivisionError):
                    sha = ""
            photos.append({"path": p, "sha256": sha, "size": f.size_bytes, "status": f.status})
    photos.sort(key=lambda r: r["path"])
    outputs = {name: sha256_file(scan.outdir / name) for name in ("results.jsonl", "objects.csv", "scan.json")
               if (scan.outdir / name).is_file()}
    body = {
        "manifest_version": MANIFEST_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wtivision_version": __version__,
        "root": str(scan.root),
        "photos": photos,
        "outputs": outputs,
        "models": [{"name": m["name"], "sha256": m["sha256"], "file": m.get("file", "")}
                   for m in scan.info.get("models", [])],
    }
    body["manifest_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
    return body


def write_manifest(outdir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None) -> Path:
    m = build_manifest(outdir)
    dst = Path(path) if path else Path(outdir) / "custody-manifest.json"
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(json.dumps(m, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, dst)
    return dst


@dataclass
class VerifyReport:
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    manifest_intact: bool = True

    @property
    def clean(self) -> bool:
        return self.manifest_intact and not (self.missing or self.added or self.altered)


def verify_manifest(manifest_path: str | os.PathLike[str], folder: str | os.PathLike[str],
                    all_files: bool = False) -> VerifyReport:
    """Re-hash ``folder`` and compare with the manifest. Only photo files are considered unless
    ``all_files`` (the same rule as the scan)."""
    from ..media import is_candidate

    m = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    claimed = m.pop("manifest_sha256", "")
    rep = VerifyReport(manifest_intact=hashlib.sha256(_canonical(m)).hexdigest() == claimed)
    expected = {p["path"]: p["sha256"] for p in m["photos"]}
    root = Path(folder).resolve()
    seen: dict[str, str] = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, files in os.walk(root_b):
        dirnames.sort()
        for name in files:
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not (all_files or is_candidate(os.fsdecode(name))):
                continue
            rel = os.path.relpath(full, root_b).decode("utf-8", "backslashreplace")
            seen[rel] = sha256_file(full)
    for path, sha in sorted(expected.items()):
        if path not in seen:
            rep.missing.append(path)
        elif seen[path] != sha:
            rep.altered.append(path)
        else:
            rep.ok.append(path)
    rep.added = sorted(set(seen) - set(expected))
    return rep

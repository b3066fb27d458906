"""Resumable scan of a photo archive into an output folder.

``scan(root, outdir)`` walks ``root`` (recursively, symlinks not followed), and for
every candidate photo: reuses the stored result if the file is unchanged, links it
to an existing result if its bytes were seen before (identical photos are analysed
once), or analyses it. Results go to the SQLite store as they finish; at the end
``results.jsonl``, ``objects.csv`` and ``scan.json`` are (re)written from the store.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .analyzer import DEFAULT_SETTINGS, Analyzer
from .errors import ImageError, WtivisionError
from .media import Limits, is_candidate, read_original
from .results import ImageFindings
from .runtime import RuntimeOptions
from .store import FileRow, Store, display_path, export_results
from .taxonomy import FAMILIES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzerConfig:
    """Picklable recipe for building an Analyzer in a worker process."""

    models_dir: str | None = None
    conf_threshold: float = 0.25
    iou_threshold: float = 0.7
    ocr: bool = True
    tiles: bool = False
    limits: Limits = Limits()
    intra_threads: int = 0
    detector: str | None = None

    def build(self) -> Analyzer:
        return Analyzer(
            models_dir=self.models_dir,
            limits=self.limits,
            runtime=RuntimeOptions(intra_threads=self.intra_threads),
            conf_threshold=self.conf_threshold,
            iou_threshold=self.iou_threshold,
            ocr=self.ocr,
            tiles=self.tiles,
            detector=self.detector,
        )


@dataclass
class ScanSummary:
    root: str
    outdir: str
    model_set: str
    files: int = 0  # candidate files found in this walk
    reused: int = 0  # unchanged files whose stored result was reused (resume)
    linked: int = 0  # files identical to an already analysed photo
    analyzed: int = 0  # photos analysed in this run
    ok: int = 0  # distinct photos with status ok (whole store)
    errors: int = 0  # distinct inputs with status error (whole store)
    skipped: int = 0  # files not considered (not a photo suffix, symlinks, unreadable dirs)
    objects: dict[str, int] = field(default_factory=dict)  # detections per family (every path counted)
    readings: dict[str, int] = field(default_factory=dict)  # OCR readings per kind (serial, headstamp, marking)
    classifications: dict[str, int] = field(default_factory=dict)  # per task (e.g. typology)
    seconds: float = 0.0
    photos_per_second: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Candidate:
    raw: bytes  # path relative to root, as bytes (exact, even for odd names)
    size: int
    mtime_ns: int


def walk(root: Path, all_files: bool = False) -> tuple[list[_Candidate], int]:
    """Candidate photos under ``root`` (sorted) and the count of skipped entries."""
    root_b = os.fsencode(root)
    found: list[_Candidate] = []
    skipped = 0

    def on_error(exc: OSError) -> None:
        nonlocal skipped
        skipped += 1
        logger.warning("cannot list %s: %s", getattr(exc, "filename", "?"), exc)

    for dirpath, dirnames, filenames in os.walk(root_b, onerror=on_error, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                skipped += 1
                continue
            if not all_files and not is_candidate(os.fsdecode(name)):
                skipped += 1
                continue
            try:
                st = os.stat(full)
            except OSError as exc:
                logger.warning("cannot stat %r: %s", full, exc)
                skipped += 1
                continue
            found.append(_Candidate(os.path.relpath(full, root_b), st.st_size, st.st_mtime_ns))
    return found, skipped


# -- worker side -------------------------------------------------------------------
_WORKER: Analyzer | None = None


def _worker_init(config: AnalyzerConfig) -> None:
    global _WORKER
    _WORKER = config.build()


def _worker_analyze(job: tuple[str, bytes, bytes, bytes]) -> tuple[str, str]:
    key, full, rel, _ = job
    assert _WORKER is not None
    f = _WORKER.analyze(os.fsdecode(full), path=display_path(rel))
    return key, f.to_json()


def _read_key(full: bytes, limits: Limits) -> tuple[bytes, str, ImageError | None]:
    """The file's bytes and SHA-256 (the result key), or the reason it cannot be read."""
    try:
        data, digest = read_original(os.fsdecode(full), limits)
        return data, digest, None
    except ImageError as exc:
        return b"", getattr(exc, "sha256", ""), exc


def scan(
    root: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    config: AnalyzerConfig = AnalyzerConfig(),
    workers: int = 1,
    all_files: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ScanSummary:
    """Scan ``root`` into ``outdir``; safe to interrupt and call again to resume.

    ``progress(done, total)`` is called after each file is settled.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise WtivisionError(f"not a directory: {root}")
    outdir = Path(outdir).resolve()
    if outdir == root or root in outdir.parents:
        logger.info("output folder %s is inside the scanned folder; it is skipped by the walk", outdir)
    t0 = time.perf_counter()
    workers = max(1, int(workers))
    if workers > 1 and config.intra_threads == 0:
        config = AnalyzerConfig(**{**asdict(config), "limits": config.limits,
                                   "intra_threads": max(1, (os.cpu_count() or 2) // workers)})
    analyzer = config.build()  # in this process: verifies the models and names the model set
    model_set = analyzer.model_set
    models = [m.to_dict() for m in analyzer.models]

    store = Store(outdir)
    store.set_meta("root", str(root))
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    candidates, skipped = walk(root, all_files)
    out_b = os.fsencode(outdir)
    candidates = [c for c in candidates if not os.path.join(os.fsencode(root), c.raw).startswith(out_b + b"/")]
    summary = ScanSummary(root=str(root), outdir=str(outdir), model_set=model_set,
                          files=len(candidates), skipped=skipped)
    total = len(candidates)
    done = 0

    def settle(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    pending: dict[str, list[FileRow]] = {}  # key -> files waiting for that key's result
    root_b = os.fsencode(root)

    def jobs() -> Iterator[tuple[str, bytes, bytes, bytes]]:
        """Settle reusable/duplicate files inline; yield (key, full path, relative path, bytes)
        for the photos that need analysis (bytes only when analysed in this process)."""
        for c in candidates:
            full = os.path.join(root_b, c.raw)
            rel = display_path(c.raw)
            known = store.known_file(c.raw, model_set, c.size, c.mtime_ns)
            if known is not None:
                summary.reused += 1
                settle()
                continue
            data, digest, err = _read_key(full, config.limits)
            key = digest if err is None else f"path:{rel}"  # unreadable files are keyed by path
            row = FileRow(c.raw, rel, c.size, c.mtime_ns, key)
            if err is not None:
                f = ImageFindings(path=rel, sha256=digest, status="error", error=str(err),
                                  error_code=err.code, size_bytes=c.size, models=[])
                f.analyzed_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                store.put(key, model_set, f, [row])
                summary.analyzed += 1
                settle()
                continue
            if key in pending:
                pending[key].append(row)
                continue
            if store.has_result(key, model_set):
                store.put(key, model_set, None, [row])
                summary.linked += 1
                settle()
                continue
            pending[key] = [row]
            yield key, full, c.raw, (data if workers == 1 else b"")

    def finish(key: str, findings_json: str) -> None:
        rows = pending.pop(key)
        store.put(key, model_set, ImageFindings.from_json(findings_json), rows)
        summary.analyzed += 1
        summary.linked += len(rows) - 1
        settle(len(rows))

    try:
        if workers == 1:
            for key, _full, raw, data in jobs():
                f = analyzer.analyze(data, path=display_path(raw), sha256=key)
                finish(key, f.to_json())
        else:
            # All store writes stay in this thread; workers only analyse.
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(config,)) as pool:
                in_flight: set = set()
                for job in jobs():
                    in_flight.add(pool.submit(_worker_analyze, job))
                    if len(in_flight) >= 2 * workers:
                        ready, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for fut in ready:
                            finish(*fut.result())
                for fut in in_flight:
                    finish(*fut.result())
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("scan interrupted: %d of %d files settled; run the same command to resume", done, total)

    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.photos_per_second = round(summary.analyzed / summary.seconds, 3) if summary.seconds else 0.0
    export_results(store, model_set, outdir)
    fam: Counter[str] = Counter({f: 0 for f in FAMILIES})
    texts: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    for f in store.findings(model_set):
        if f.ok:
            summary.ok += 1
        else:
            summary.errors += 1
        n = 1 + len(f.also_at)
        for d in f.detections:
            fam[d.family] += n
        for t in f.texts:
            texts[t.kind] += n
        for c in f.classifications:
            tasks[c.task] += n
    summary.objects, summary.readings, summary.classifications = dict(fam), dict(texts), dict(tasks)
    info = {
        "root": str(root),
        "model_set": model_set,
        "models": models,
        "settings": {**DEFAULT_SETTINGS, **analyzer.settings},
        "started": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "summary": summary.to_dict(),
    }
    tmp = outdir / "scan.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, outdir / "scan.json")
    store.close()
    return summary

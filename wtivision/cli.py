"""Command-line interface: a thin layer over the Python API.

    wtivision scan DIR --out OUTDIR [--workers N]
    wtivision analyze PHOTO [--json]
    wtivision models [--verify]
    wtivision export OUTDIR            (rewrite results.jsonl / objects.csv from the store)
    wtivision evaluate DATASET [--split test] [--json OUT]   (detector AP on labelled photos, YOLO format)
    wtivision evaluate DATASET --model A --compare B         (is B better than A there, or is it noise?)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import WtivisionError

logger = logging.getLogger("wtivision")


def _limits(args):
    from .media import Limits

    return Limits(max_bytes=int(args.max_mb * 1024 * 1024), max_pixels=int(args.max_megapixels * 1_000_000))


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", help="folder with manifest.json (default: the bundled models)")
    p.add_argument("--detector", metavar="NAME",
                   help="detector from the manifest to use instead of the default (`wtivision models` lists them)")
    p.add_argument("--conf", type=float, default=0.25, help="detection confidence threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--no-ocr", action="store_true", help="skip OCR of markings and headstamps")
    p.add_argument("--tiles", action="store_true",
                   help="experimental: also detect on crops at twice the scale (small objects in large photos); "
                        "one extra pass per crop, 6 for a 4:3 photo")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads per process (0 = all cores)")
    p.add_argument("--max-mb", type=float, default=200.0, help="refuse files larger than this (MiB)")
    p.add_argument("--max-megapixels", type=float, default=120.0, help="refuse images larger than this")


def _config(args):
    from .scan import AnalyzerConfig

    return AnalyzerConfig(
        models_dir=args.models_dir,
        conf_threshold=args.conf,
        iou_threshold=args.iou,
        ocr=not args.no_ocr,
        tiles=args.tiles,
        detector=args.detector,
        limits=_limits(args),
        intra_threads=args.threads,
    )


def _progress_bar(quiet: bool):
    """A tqdm bar over photos and the ``progress(done, total)`` callback the library calls."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="photo", dynamic_ncols=True, disable=quiet)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return bar, progress


def cmd_scan(args) -> int:
    from .scan import scan

    bar, progress = _progress_bar(args.quiet)
    try:
        s = scan(args.dir, args.out, _config(args), workers=args.workers, all_files=args.all_files,
                 progress=progress)
    finally:
        bar.close()
    objs = ", ".join(f"{k} {v}" for k, v in s.objects.items())
    extra = ", ".join(f"{k} {v}" for k, v in {**s.classifications, **s.readings}.items())
    print(
        f"{'INTERRUPTED - run again to resume. ' if s.interrupted else ''}"
        f"{s.files} files ({s.analyzed} analysed now, {s.reused} already done, {s.linked} duplicates linked, "
        f"{s.skipped} skipped) | distinct photos: {s.ok} ok, {s.errors} errors | objects: {objs}"
        f"{' | ' + extra if extra else ''} | "
        f"{s.seconds:.1f} s, {s.photos_per_second:.2f} photos/s\n"
        f"results: {Path(args.out) / 'results.jsonl'}  objects: {Path(args.out) / 'objects.csv'}"
    )
    return 130 if s.interrupted else 0


def format_findings(f) -> str:
    lines = [f"{f.path}  sha256={f.sha256}  {f.width}x{f.height} {f.format}  status={f.status}"]
    if not f.ok:
        lines.append(f"  error [{f.error_code}]: {f.error}")
        return "\n".join(lines)
    if f.capture and (f.capture.datetime_original or f.capture.make):
        c = f.capture
        gps = f" gps={c.gps_latitude},{c.gps_longitude}" if c.gps_latitude is not None else ""
        lines.append(f"  captured: {c.datetime_original} {c.make} {c.model}{gps}")
    for i, d in enumerate(f.detections):
        box = ",".join(f"{v:.0f}" for v in d.box)
        lines.append(f"  [{i}] {d.family}/{d.label} {d.confidence:.2f} box={box}")
    for c in f.classifications:
        on = f" (object {c.detection_index})" if c.detection_index is not None else ""
        alts = ", ".join(f"{lab} {p:.2f}" for lab, p in c.top_k[1:])
        lines.append(f"  {c.task}{on}: {c.label} {c.confidence:.2f}" + (f"  [also: {alts}]" if alts else ""))
    for t in f.texts:
        flag = "  NEEDS REVIEW" if t.needs_review else ""
        cands = f"  candidates: {', '.join(t.candidates)}" if t.candidates else ""
        lines.append(f"  {t.kind}: {t.text!r} (read {t.raw_text!r}) {t.confidence:.2f}{flag}{cands}")
        if t.headstamp:
            h = t.headstamp
            maker = f"{h.manufacturer}, {h.country}" if h.manufacturer else "unknown code"
            lines.append(
                f"    headstamp: code={h.factory_code or '?'} ({maker}) year={h.year or '?'} "
                f"calibre={h.calibre or '?'} nato={'yes' if h.nato_mark else 'no'}"
            )
    if not (f.detections or f.classifications or f.texts):
        lines.append("  nothing found")
    lines.append("  models: " + ", ".join(m.short() for m in f.models))
    return "\n".join(lines)


def cmd_analyze(args) -> int:
    from .scan import AnalyzerConfig  # noqa: F401  (same options as scan)

    analyzer = _config(args).build()
    rc = 0
    for photo in args.photos:
        f = analyzer.analyze(photo)
        if args.json:
            print(f.to_json())
        else:
            print(format_findings(f))
        rc = rc or (0 if f.ok else 2)
    return rc


def cmd_models(args) -> int:
    from .registry import Registry

    reg = Registry(args.models_dir)
    rows = reg.verify_all() if args.verify else [(s, "") for s in reg.specs()]
    print(f"models in {reg.root}")
    bad = 0
    for spec, state in rows:
        mark = "" if not args.verify else ("  OK" if state == "ok" else f"  FAILED: {state}")
        bad += bool(args.verify and state != "ok")
        print(f"  {spec.name:28s} {spec.task:9s} role={spec.role or '-':9s} default={str(spec.default):5s} "
              f"{spec.precision:5s} {spec.file}  sha256={spec.sha256[:16]}…{mark}")
    if not rows:
        print("  (none)")
    return 1 if bad else 0


def cmd_export(args) -> int:
    from .store import Store, export_results

    with Store(args.outdir) as store:
        sets = [r[0] for r in store.db.execute("SELECT DISTINCT model_set FROM results")]
        model_set = args.model_set or (sets[-1] if len(sets) == 1 else None)
        if model_set is None:
            print(f"several model sets in the store, pick one with --model-set: {', '.join(sets)}")
            return 2
        paths = export_results(store, model_set, args.outdir)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_detector, read_image_list
    from .registry import Registry
    from .runtime import RuntimeOptions, YoloDetector

    reg = Registry(args.models_dir)
    spec = reg.get(args.model) if args.model else reg.default_for("detector")
    if spec is None:
        print(f"no default detector in {reg.root}; name one with --model", file=sys.stderr)
        return 2
    det = YoloDetector(spec, reg, RuntimeOptions(intra_threads=args.threads), conf_threshold=args.min_conf,
                       iou_threshold=args.iou)
    exclude = read_image_list(args.exclude) if args.exclude else []
    if args.compare:
        return _compare(args, reg, det, exclude)
    bar, progress = _progress_bar(args.quiet)
    try:
        ev = evaluate_detector(det, args.dataset, args.split, operating_conf=args.conf, progress=progress,
                               tiles=args.tiles, exclude=exclude)
    finally:
        bar.close()
    print(f"{ev.model}{' (tiled)' if ev.tiles else ''} on {ev.dataset} [{ev.split}]: {ev.images} images, "
          f"mAP50 {ev.map50:.3f}, mAP50-95 {ev.map50_95:.3f}"
          + (f" ({len(ev.excluded)} left out: --exclude)" if ev.excluded else ""))
    print(f"  {'class':24s} {'boxes':>6s} {'AP50':>6s} {'AP50-95':>8s}  P/R at conf {ev.operating_conf:g}")
    for c in ev.classes:
        note = "" if c.trained else "  (class not trained: its outputs are dropped)"
        print(f"  {c.name:24s} {c.ground_truth:6d} {c.ap50:6.3f} {c.ap50_95:8.3f}  "
              f"{c.precision:.3f}/{c.recall:.3f}{note}")
    return _evaluation_tail(ev, args.json)


def _evaluation_tail(result, json_path: str | None) -> int:
    """The images an evaluation skipped, and its JSON file if asked for."""
    import json

    for k, v in result.errors.items():
        print(f"  skipped {k}: {v}")
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {json_path}")
    return 0


def _compare(args, reg, det, exclude: list[str]) -> int:
    """``wtivision evaluate --compare B``: B against the --model (or default) detector, per-class AP50 with
    paired bootstrap intervals."""
    from .evaluate import compare_detectors
    from .runtime import RuntimeOptions, YoloDetector

    other = YoloDetector(reg.get(args.compare), reg, RuntimeOptions(intra_threads=args.threads),
                         conf_threshold=args.min_conf, iou_threshold=args.iou)
    bar, progress = _progress_bar(args.quiet)
    try:
        cmp = compare_detectors(det, other, args.dataset, args.split, exclude=exclude, resamples=args.resamples,
                                progress=progress, tiles=args.tiles)
    finally:
        bar.close()
    print(f"{cmp.model_b} (B) against {cmp.model_a} (A) on {cmp.dataset} [{cmp.split}]: {cmp.images} images"
          + (f" ({len(cmp.excluded)} left out: --exclude)" if cmp.excluded else "")
          + f"; {cmp.level:.0%} paired bootstrap intervals of B - A over {cmp.resamples} draws")
    print(f"  {'class':24s} {'boxes':>6s} {'AP50 A':>7s} {'AP50 B':>7s} {'B - A':>7s}  interval")
    for c in cmp.classes:
        print(f"  {c.name:24s} {c.ground_truth:6d} {c.ap50_a:7.3f} {c.ap50_b:7.3f} {c.diff:+7.3f}  "
              f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}] {c.verdict}")
    return _evaluation_tail(cmp, args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wtivision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"wtivision {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="scan a folder of photos (recursive, resumable)")
    s.add_argument("dir", help="folder of photos; never modified")
    s.add_argument("--out", required=True, help="output folder (store.sqlite, results.jsonl, objects.csv)")
    s.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    s.add_argument("--all-files", action="store_true", help="try every file, not only photo suffixes")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_options(s)
    s.set_defaults(func=cmd_scan)

    a = sub.add_parser("analyze", help="analyse one or more photos and print the findings")
    a.add_argument("photos", nargs="+")
    a.add_argument("--json", action="store_true", help="print ImageFindings JSON, one line per photo")
    _add_model_options(a)
    a.set_defaults(func=cmd_analyze)

    m = sub.add_parser("models", help="list the models of the manifest")
    m.add_argument("--models-dir")
    m.add_argument("--verify", action="store_true", help="check every file's SHA-256")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("export", help="rewrite results.jsonl and objects.csv from a scan's store")
    e.add_argument("outdir")
    e.add_argument("--model-set")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("evaluate", help="measure the detector on labelled photos (YOLO folders), no torch")
    v.add_argument("dataset", help="folder with images/<split>/ and labels/<split>/ (and data.yaml for names)")
    v.add_argument("--split", default="test", help="split to evaluate (default test)")
    v.add_argument("--model", help="detector name in the manifest (default: the default detector)")
    v.add_argument("--models-dir", help="folder with manifest.json (default: the bundled models)")
    v.add_argument("--conf", type=float, default=0.25, help="operating threshold for precision/recall")
    v.add_argument("--min-conf", type=float, default=0.001, help="lowest score kept when computing AP")
    v.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    v.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = all cores)")
    v.add_argument("--tiles", action="store_true", help="detect as `scan --tiles` does (whole photo + tiles)")
    v.add_argument("--exclude", metavar="FILE",
                   help="images to leave out: a list of paths relative to DATASET, one per line, or a CSV with a "
                        "'path' column such as the leaks.csv of `python -m datasets.build --audit`")
    v.add_argument("--compare", metavar="MODEL",
                   help="compare this detector (B) with --model / the default (A): per-class AP50 of both and a "
                        "paired bootstrap interval of the difference (is B better, or is it noise?)")
    v.add_argument("--resamples", type=int, default=1000, help="bootstrap draws for --compare (default 1000)")
    v.add_argument("--json", help="write the evaluation as JSON here")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_evaluate)

    try:
        from .review.cli import register
    except ImportError as exc:  # review tools absent: the rest of the CLI still works
        logger.debug("review commands unavailable: %s", exc)
    else:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except WtivisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

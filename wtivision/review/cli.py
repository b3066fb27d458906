"""Review commands for the ``wtivision`` CLI: report, serve, manifest, verify."""

from __future__ import annotations

import argparse


def cmd_report(args) -> int:
    from .report import write_html_report

    path = write_html_report(args.outdir, args.html, max_photos=args.max_photos)
    print(f"wrote {path}")
    return 0


def cmd_manifest(args) -> int:
    from .custody import write_manifest

    path = write_manifest(args.outdir, args.out)
    print(f"wrote {path}")
    return 0


def cmd_verify(args) -> int:
    from .custody import verify_manifest

    r = verify_manifest(args.manifest, args.dir, all_files=args.all_files)
    print(f"manifest intact: {'yes' if r.manifest_intact else 'NO (the manifest itself was edited)'}")
    print(f"{len(r.ok)} ok, {len(r.missing)} missing, {len(r.added)} added, {len(r.altered)} altered")
    for name, items in (("MISSING", r.missing), ("ADDED", r.added), ("ALTERED", r.altered)):
        for p in items:
            print(f"  {name} {p}")
    return 0 if r.clean else 1


def cmd_serve(args) -> int:
    from .server import serve

    serve(args.outdir, host=args.host, port=args.port, operator=args.operator)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="write a self-contained HTML report of a scan")
    r.add_argument("outdir")
    r.add_argument("--html", required=True, help="the HTML file to write")
    r.add_argument("--max-photos", type=int, default=None, help="cards to include (summary counts all)")
    r.set_defaults(func=cmd_report)

    m = sub.add_parser("manifest", help="write a chain-of-custody manifest of a scan")
    m.add_argument("outdir")
    m.add_argument("--out", help="manifest file (default OUTDIR/custody-manifest.json)")
    m.set_defaults(func=cmd_manifest)

    v = sub.add_parser("verify", help="check a folder against a custody manifest (exit 1 on any difference)")
    v.add_argument("manifest")
    v.add_argument("dir")
    v.add_argument("--all-files", action="store_true")
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("serve", help="local review web app for a scan (127.0.0.1 by default)")
    s.add_argument("outdir")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--operator", default="", help="default operator name recorded with corrections")
    s.set_defaults(func=cmd_serve)

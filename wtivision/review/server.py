"""Local review web app (standard library only): browse and filter a scan, zoom into originals, see the
machine's readings, and record confirmations/corrections as append-only revisions.

Safety: binds 127.0.0.1 unless told otherwise; serves only photos listed in the scan, addressed by their
index (never by a user-given path), and only from inside the scanned folder; every POST needs the
server's CSRF token and a same-origin Origin/Referer; request bodies over 64 KiB get 413; strict
security headers (CSP with no external source, nosniff, frame-ancestors none).
"""

from __future__ import annotations

import html
import logging
import mimetypes
import os
import secrets
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import ImageError, WtivisionError
from ..media import load_image
from . import ScanOutput
from .corrections import RECORD_FIELDS, Corrections, Record
from .report import CONFLICT, CSS, annotated_thumbnail

logger = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
E = lambda x: html.escape(str(x), quote=True)  # noqa: E731


class ReviewApp:
    """State shared by the request handlers."""

    def __init__(self, outdir: str | os.PathLike[str], operator: str = ""):
        self.scan = ScanOutput.open(outdir)
        self.corrections = Corrections(outdir)
        self.csrf = secrets.token_urlsafe(32)
        self.operator = operator
        self.lock = threading.Lock()

    def photo(self, ident: str):
        if not ident.isdigit() or int(ident) >= len(self.scan.findings):
            return None
        return self.scan.findings[int(ident)]

    # -- pages -------------------------------------------------------------------------------------
    def index_html(self) -> str:
        latest = self.corrections.latest()
        rows = []
        for i, f in enumerate(self.scan.findings):
            labels = sorted({d.label for d in f.detections} | {c.label for c in f.classifications}
                            | {t.kind for t in f.texts})
            fams = sorted({d.family for d in f.detections})
            rev = latest.get(f.sha256)
            texts = " ".join(t.text for t in f.texts)
            rows.append(
                f'<tr class="row" data-text="{E((f.path + " " + texts + " " + " ".join(labels)).lower())}" '
                f'data-families="{E(" ".join(fams))}" data-status="{E(rev.record.status if rev else "unreviewed")}">'
                f'<td><a href="/photo/{i}">{E(f.path)}</a></td><td>{E(", ".join(labels))}</td>'
                f'<td><code>{E(texts)}</code></td><td>{E(f.status)}</td>'
                f'<td>{E(rev.record.status if rev else "unreviewed")}</td></tr>')
        return self._page("wtivision review", f"""
<div class="filters">search <input id="q" type="search" placeholder="path, serial, label">
family <select id="family"><option value="">all</option><option>firearm</option><option>ammunition</option>
<option>ied_component</option><option>marking</option></select>
review <select id="rstatus"><option value="">all</option><option>unreviewed</option><option>draft</option>
<option>confirmed</option><option>rejected</option></select> <span id="count"></span>
<a href="/export.csv">export CSV</a> <a href="/export.json">export JSON</a></div>
<table id="photos"><tr><th>photo</th><th>labels</th><th>text read</th><th>status</th><th>review</th></tr>
{''.join(rows)}</table>
<script>const $=s=>document.querySelector(s);function apply(){{const q=$('#q').value.toLowerCase(),
f=$('#family').value,r=$('#rstatus').value;let n=0;document.querySelectorAll('tr.row').forEach(t=>{{
const ok=(!q||t.dataset.text.includes(q))&&(!f||t.dataset.families.split(' ').includes(f))&&(!r||t.dataset.status===r);
t.style.display=ok?'':'none';if(ok)n++;}});$('#count').textContent=n+' shown';}}
document.querySelectorAll('.filters input,.filters select').forEach(e=>e.addEventListener('input',apply));
apply();</script>""")

    def photo_html(self, i: int, message: str = "") -> str:
        f = self.scan.findings[i]
        hist = self.corrections.history(f.sha256)
        first = {kind: next((t.text for t in f.texts if t.kind == kind), "") for kind in ("serial", "headstamp")}
        cur = hist[-1].record if hist else Record(serial=first["serial"], headstamp=first["headstamp"],
                                                  labels=", ".join(d.label for d in f.detections))
        machine = [f"<li>{E(d.family)}/{E(d.label)} {d.confidence:.2f} [{', '.join(f'{v:.0f}' for v in d.box)}]</li>"
                   for d in f.detections]
        conflicts = set(f.typology_conflicts())
        machine += [f"<li>{E(c.task)}: {E(c.label)} {c.confidence:.2f}{CONFLICT if i in conflicts else ''}</li>"
                    for i, c in enumerate(f.classifications)]
        machine += [f'<li class="machine-text">{E(t.kind)}: <code>{E(t.text)}</code> {t.confidence:.2f}'
                    f"{' (needs review)' if t.needs_review else ''}</li>" for t in f.texts]
        inputs = []
        for k in RECORD_FIELDS:
            v = getattr(cur, k)
            if k == "status":
                opts = "".join(f'<option{" selected" if s == v else ""}>{s}</option>'
                               for s in ("draft", "confirmed", "rejected"))
                inputs.append(f'<label>status <select name="status">{opts}</select></label>')
            elif k == "notes":
                inputs.append(f'<label>notes <textarea name="notes" maxlength="2000">{E(v)}</textarea></label>')
            else:
                inputs.append(f'<label>{E(k.replace("_", " "))} '
                              f'<input name="{k}" value="{E(v)}" maxlength="2000"></label>')
        history = "".join(f"<tr><td>{r.id}</td><td>{E(r.created_at)}</td><td>{E(r.operator)}</td>"
                          f"<td>{E(r.record.status)}</td><td><code>{E(r.record.serial)}</code></td>"
                          f"<td><code>{E(r.record.headstamp)}</code></td></tr>" for r in hist)
        return self._page(f"{f.path} — wtivision review", f"""
<p><a href="/">back to the list</a> {E(message)}</p>
<h2 id="path">{E(f.path)}</h2><div class=meta>sha256 <code>{E(f.sha256)}</code> · {f.width}x{f.height}</div>
<div style="display:flex;gap:20px;flex-wrap:wrap">
<div><a href="/image/{i}" target="_blank"><img id="thumb" src="/thumb/{i}" style="max-width:640px"
title="open the full-resolution original (read-only)"></a></div>
<div><h3>Machine reading (never changes)</h3><ul id="machine">{''.join(machine) or '<li>nothing found</li>'}</ul>
<h3>Record</h3><form method="post" action="/photo/{i}" id="record">
<input type="hidden" name="csrf" value="{E(self.csrf)}">
<label>operator <input name="operator" required maxlength="200" value="{E(self.operator)}"></label>
{''.join(inputs)}<button type="submit" id="save">save as new revision</button></form></div></div>
<h3>History</h3><table id="history"><tr><th>rev</th><th>time (UTC)</th><th>operator</th><th>status</th>
<th>serial</th><th>headstamp</th></tr>{history}</table>""")

    @staticmethod
    def _page(title: str, body: str) -> str:
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{E(title)}</title>'
                f"<style>{CSS} label{{display:block;margin:3px 0}} input,textarea,select{{width:320px}}"
                f" table{{background:#fff}} body{{padding:0 16px}}</style></head><body>"
                f"<header><h1>wtivision review</h1></header>{body}</body></html>")


def make_handler(app: ReviewApp):
    class Handler(BaseHTTPRequestHandler):
        server_version = "wtivision-review"
        sys_version = ""

        def log_message(self, fmt, *args):  # route to logging, never print
            logger.info("%s %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: bytes, ctype: str = "text/html; charset=utf-8", extra=None):
            self.send_response(code)
            for k, v in {**HEADERS, **(extra or {})}.items():
                self.send_header(k, v)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, msg: str):
            self._send(code, f"<h1>{code}</h1><p>{E(msg)}</p>".encode())

        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            parts = [p for p in path.split("/") if p]
            if ".." in urllib.parse.unquote(path) or "\\" in urllib.parse.unquote(path):
                return self._error(400, "bad path")
            if not parts:
                return self._send(200, app.index_html().encode())
            if parts == ["export.csv"]:
                return self._send(200, app.corrections.export_csv().encode(), "text/csv; charset=utf-8",
                                  {"Content-Disposition": 'attachment; filename="records.csv"'})
            if parts == ["export.json"]:
                return self._send(200, app.corrections.export_json().encode(), "application/json")
            if len(parts) == 2 and parts[0] in ("photo", "image", "thumb"):
                f = app.photo(parts[1])
                if f is None:
                    return self._error(404, "no such photo")
                i = int(parts[1])
                if parts[0] == "photo":
                    return self._send(200, app.photo_html(i).encode())
                try:
                    full = app.scan.file_of(f.path)
                except WtivisionError as exc:
                    return self._error(403, str(exc))
                if parts[0] == "image":
                    ctype = mimetypes.guess_type(os.fsdecode(full))[0] or "application/octet-stream"
                    try:
                        with open(full, "rb") as fh:
                            data = fh.read()
                    except OSError:
                        return self._error(404, "original not found")
                    return self._send(200, data, ctype)
                try:
                    thumb = annotated_thumbnail(load_image(os.fsdecode(full)).array, f, 640)
                except (ImageError, OSError) as exc:
                    return self._error(404, f"no preview: {exc}")
                return self._send(200, thumb, "image/jpeg")
            return self._error(404, "not found")

        def _same_origin(self) -> bool:
            host = self.headers.get("Host", "")
            for h in ("Origin", "Referer"):
                v = self.headers.get(h)
                if v:
                    return urllib.parse.urlsplit(v).netloc == host
            return False

        def do_POST(self):
            parts = [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                return self._error(413, "request too large")
            body = self.rfile.read(length).decode("utf-8", "replace")
            if not self._same_origin():
                return self._error(403, "cross-site request refused")
            if self.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
                return self._error(415, "form posts only")
            form = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
            if not secrets.compare_digest(form.get("csrf", ""), app.csrf):
                return self._error(403, "missing or wrong CSRF token")
            if len(parts) != 2 or parts[0] != "photo" or app.photo(parts[1]) is None:
                return self._error(404, "no such photo")
            f = app.photo(parts[1])
            try:
                rec = Record.from_form(form)
                with app.lock:
                    app.corrections.add(f.sha256, f.path, form.get("operator", ""), rec)
            except ValueError as exc:
                return self._error(400, str(exc))
            self.send_response(303)
            for k, v in HEADERS.items():
                self.send_header(k, v)
            self.send_header("Location", f"/photo/{int(parts[1])}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def make_server(outdir, host: str = "127.0.0.1", port: int = 8765, operator: str = "") -> ThreadingHTTPServer:
    app = ReviewApp(outdir, operator)
    srv = ThreadingHTTPServer((host, port), make_handler(app))
    srv.app = app  # type: ignore[attr-defined]
    return srv


def serve(outdir, host: str = "127.0.0.1", port: int = 8765, operator: str = "") -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who can reach this address can read the photos", host)
    srv = make_server(outdir, host, port, operator)
    print(f"wtivision review on http://{host}:{srv.server_address[1]}/  (Ctrl-C to stop)")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()

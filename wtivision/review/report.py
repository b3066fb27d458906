"""A self-contained HTML report of a scan: summary, filters and one card per photo with an annotated
thumbnail. Originals are only read; thumbnails are inline JPEGs; no external resource is referenced."""

from __future__ import annotations

import base64
import html
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import ImageError, WtivisionError
from ..media import load_image
from ..results import ImageFindings, ModelRef
from ..taxonomy import FAMILIES
from . import ScanOutput

logger = logging.getLogger(__name__)

COLOURS = {"firearm": (40, 40, 220), "ammunition": (0, 150, 230), "ied_component": (200, 60, 160),
           "marking": (60, 170, 40)}


def annotated_thumbnail(image: np.ndarray, f: ImageFindings, max_side: int = 480) -> bytes:
    """A JPEG thumbnail with each detection's box, label and confidence drawn on it."""
    import cv2

    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    thumb = cv2.resize(image, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    for d in f.detections:
        x1, y1, x2, y2 = (int(round(v * s)) for v in d.box)
        col = COLOURS.get(d.family, (255, 255, 255))
        cv2.rectangle(thumb, (x1, y1), (x2, y2), col, 2)
        cv2.putText(thumb, f"{d.label} {d.confidence:.2f}", (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, col, 1, cv2.LINE_AA)
    ok, enc = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return enc.tobytes() if ok else b""


#: Shown beside a typology that implies the other firearm group than its detection (``typology_conflicts``).
CONFLICT = ' <span class="review">disagrees with the detector: look</span>'


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _card(f: ImageFindings, thumb: bytes) -> str:
    fams = sorted({d.family for d in f.detections} | ({"marking"} if f.texts else set()))
    labels = sorted({d.label for d in f.detections} | {c.label for c in f.classifications} | {t.kind for t in f.texts})
    conf = max([d.confidence for d in f.detections] + [c.confidence for c in f.classifications]
               + [t.confidence for t in f.texts] + [0.0])
    text = " ".join([f.path, *f.also_at, *(t.text for t in f.texts), *labels, f.error])
    img = (f'<img alt="{_esc(f.path)}" src="data:image/jpeg;base64,{base64.b64encode(thumb).decode()}">'
           if thumb else '<div class="noimg">no preview</div>')
    rows = [f"<li><b>{_esc(d.family)}/{_esc(d.label)}</b> {d.confidence:.2f} "
            f"[{', '.join(f'{v:.0f}' for v in d.box)}]</li>" for d in f.detections]
    conflicts = set(f.typology_conflicts())
    rows += [f"<li>{_esc(c.task)}{'' if c.detection_index is None else f' (object {c.detection_index})'}: "
             f"<b>{_esc(c.label)}</b> {c.confidence:.2f}{CONFLICT if i in conflicts else ''}</li>"
             for i, c in enumerate(f.classifications)]
    for t in f.texts:
        hs = ""
        if t.headstamp:
            h = t.headstamp
            hs = (f" — code {_esc(h.factory_code or '?')} ({_esc(h.manufacturer or 'unknown code')}), year "
                  f"{_esc(h.year or '?')}, calibre {_esc(h.calibre or '?')}{', NATO' if h.nato_mark else ''}")
        review = ' <span class="review">needs review</span>' if t.needs_review else ""
        cands = f" <small>alt: {_esc(', '.join(t.candidates))}</small>" if t.candidates else ""
        rows.append(f"<li>{_esc(t.kind)}: <code>{_esc(t.text)}</code> {t.confidence:.2f}{review}{hs}{cands}</li>")
    if not f.ok:
        rows.append(f'<li class="err">error [{_esc(f.error_code)}]: {_esc(f.error)}</li>')
    cap = f.capture
    meta = ""
    if cap and (cap.datetime_original or cap.make or cap.gps_latitude is not None):
        gps = f", GPS {cap.gps_latitude}, {cap.gps_longitude}" if cap.gps_latitude is not None else ""
        meta = (f"<div class=meta>captured {_esc(cap.datetime_original)} {_esc(cap.make)} {_esc(cap.model)}"
                f"{_esc(gps)}</div>")
    models = ", ".join(f"{_esc(m.name)} <code>{_esc(m.sha256[:12])}</code>" + (f" ({_esc(m.feed)})" if m.feed else "")
                       for m in f.models)
    also = f"<div class=meta>also at: {_esc(', '.join(f.also_at))}</div>" if f.also_at else ""
    return (f'<article class="card" data-families="{_esc(" ".join(fams))}" data-labels="{_esc(" ".join(labels))}" '
            f'data-conf="{conf:.4f}" data-status="{_esc(f.status)}" data-text="{_esc(text.lower())}">'
            f"{img}<h3>{_esc(f.path)}</h3>{also}<div class=meta>sha256 <code>{_esc(f.sha256)}</code> · "
            f"{f.width}x{f.height} {_esc(f.format)}</div>{meta}<ul>{''.join(rows) or '<li>nothing found</li>'}</ul>"
            f"<div class=meta>models: {models}</div></article>")


CSS = """body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f2;color:#222}
header{background:#1f2d3a;color:#fff;padding:12px 20px}header h1{margin:0;font-size:20px}
.summary{display:flex;flex-wrap:wrap;gap:16px;padding:12px 20px}
.summary section{background:#fff;padding:8px 14px;border-radius:6px}
.filters{position:sticky;top:0;background:#e8e8e4;padding:8px 20px;display:flex;gap:12px;align-items:center;z-index:2}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px;padding:14px 20px}
.card{background:#fff;border-radius:6px;padding:10px;box-shadow:0 1px 2px #0002}
.card img{max-width:100%;display:block;margin:auto}
.card h3{font-size:14px;margin:6px 0;word-break:break-all}.meta{font-size:11px;color:#555;word-break:break-all}
.card ul{padding-left:18px;font-size:13px}.review{background:#fc3;padding:0 4px;border-radius:3px;font-size:11px}
.err{color:#b00}.hidden{display:none}code{font-size:11px}table{border-collapse:collapse;font-size:13px}
td,th{padding:2px 8px;text-align:left}"""

JS = """const $=s=>document.querySelector(s);
function apply(){const fam=$('#family').value,lab=$('#label').value,min=parseFloat($('#minconf').value),
q=$('#q').value.toLowerCase().trim(),st=$('#status').value;let n=0;
document.querySelectorAll('.card').forEach(c=>{let ok=(!fam||c.dataset.families.split(' ').includes(fam))
&&(!lab||c.dataset.labels.split(' ').includes(lab))&&(parseFloat(c.dataset.conf)>=min||min<=0)
&&(!q||c.dataset.text.includes(q))&&(!st||c.dataset.status===st);c.classList.toggle('hidden',!ok);if(ok)n++;});
$('#count').textContent=n+' shown';$('#minval').textContent=min.toFixed(2);}
document.querySelectorAll('.filters input,.filters select').forEach(e=>e.addEventListener('input',apply));apply();"""


def write_html_report(outdir: str | os.PathLike[str], html_path: str | os.PathLike[str],
                      max_photos: int | None = None, thumb_side: int = 480) -> Path:
    """Write the report; returns its path. ``max_photos`` limits the cards (the summary counts all)."""
    scan = ScanOutput.open(outdir)
    fam, lab, serials, headstamps, errors = Counter(), Counter(), [], [], []
    for f in scan.findings:
        n = 1 + len(f.also_at)
        for d in f.detections:
            fam[d.family] += n
            lab[d.label] += n
        for c in f.classifications:
            lab[f"{c.task}:{c.label}"] += n
        for t in f.texts:
            (headstamps if t.kind == "headstamp" else serials).append((f.path, t))
        if not f.ok:
            errors.append(f)
    cards = []
    for f in scan.findings[: max_photos or len(scan.findings)]:
        thumb = b""
        if f.ok:
            try:
                img = load_image(os.fsdecode(scan.file_of(f.path))).array
                thumb = annotated_thumbnail(img, f, thumb_side)
            except (ImageError, WtivisionError, OSError) as exc:
                logger.warning("no thumbnail for %s: %s", f.path, exc)
        cards.append(_card(f, thumb))
    all_labels = sorted({lb for f in scan.findings for lb in [*(d.label for d in f.detections),
                                                              *(c.label for c in f.classifications),
                                                              *(t.kind for t in f.texts)]})
    s = scan.info.get("summary", {})
    fam_rows = "".join(f"<tr><td>{_esc(k)}</td><td>{fam.get(k, 0)}</td></tr>" for k in FAMILIES)
    lab_rows = "".join(f"<tr><td>{_esc(k)}</td><td>{v}</td></tr>" for k, v in sorted(lab.items()))
    text_rows = "".join(f"<tr><td>{_esc(t.kind)}</td><td><code>{_esc(t.text)}</code></td><td>{_esc(p)}</td>"
                        f"<td>{'review' if t.needs_review else ''}</td></tr>" for p, t in serials + headstamps)
    err_rows = "".join(f"<tr><td>{_esc(f.path)}</td><td>{_esc(f.error_code)}</td><td>{_esc(f.error)}</td></tr>"
                       for f in errors)
    opts = lambda xs: "".join(f'<option value="{_esc(x)}">{_esc(x)}</option>' for x in xs)  # noqa: E731
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>wtivision report — {_esc(scan.root.name)}</title><style>{CSS}</style></head><body>
<header><h1>wtivision scan report</h1><div>{_esc(scan.root)} · {len(scan.findings)} distinct photos ·
{s.get('files', '?')} files · scanned {_esc(scan.info.get('finished', ''))} · models: {', '.join(
        _esc(ModelRef.from_dict(m).short()) for m in scan.info.get('models', []))}</div></header>
<div class="summary"><section><h2>Families</h2><table>{fam_rows}</table></section>
<section><h2>Labels</h2><table>{lab_rows or '<tr><td>none</td></tr>'}</table></section>
<section><h2>Serials and headstamps</h2><table>{text_rows or '<tr><td>none</td></tr>'}</table></section>
<section><h2>Errors ({len(errors)})</h2><table>{err_rows or '<tr><td>none</td></tr>'}</table></section></div>
<div class="filters">family <select id="family"><option value="">all</option>{opts(FAMILIES)}</select>
label <select id="label"><option value="">all</option>{opts(all_labels)}</select>
status <select id="status"><option value="">all</option><option>ok</option><option>error</option></select>
min confidence <input id="minconf" type="range" min="0" max="1" step="0.05" value="0"><span id="minval"></span>
search <input id="q" type="search" placeholder="path, serial, label"><span id="count"></span></div>
<main id="cards">{''.join(cards)}</main>
{'' if not max_photos or max_photos >= len(scan.findings)
   else f'<p>{len(scan.findings) - max_photos} more photos not shown (--max-photos)</p>'}
<script>{JS}</script></body></html>"""
    out = Path(html_path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, out)
    return out



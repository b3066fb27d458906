"""Review tools: HTML report, custody manifest/verify, the corrections store and the local web app
(HTTP-level safety tests, and a real headless Chromium driving the app and rendering the report)."""

import http.client
import json
import shutil
import sqlite3
import threading
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import write_photo
from wtivision.review.corrections import Corrections, Record
from wtivision.review.custody import verify_manifest, write_manifest
from wtivision.review.report import write_html_report
from wtivision.scan import AnalyzerConfig, scan


@pytest.fixture()
def scanned(tmp_path, tiny_models_dir):
    root = tmp_path / "photos"
    for i in range(3):
        write_photo(root / f"site{i % 2}" / f"p{i}.jpg", seed=i)
    (root / "broken.jpg").write_bytes(b"not a photo")
    out = tmp_path / "out"
    scan(root, out, AnalyzerConfig(models_dir=str(tiny_models_dir), ocr=False))
    return root, out


def test_html_report_is_self_contained(scanned, tmp_path):
    _, out = scanned
    page = write_html_report(out, tmp_path / "r.html").read_text()
    assert page.count('class="card"') == 4 and "data:image/jpeg;base64," in page
    assert "http://" not in page and "https://" not in page.replace("https://json-schema", "")
    assert "not_image" in page and "firearm" in page


def test_manifest_detects_missing_added_altered(scanned, tmp_path):
    root, out = scanned
    m = write_manifest(out, tmp_path / "m.json")
    assert verify_manifest(m, root).clean
    (root / "site0" / "p0.jpg").unlink()
    write_photo(root / "new.jpg", seed=9)
    with open(root / "site1" / "p1.jpg", "ab") as fh:
        fh.write(b"\0")
    r = verify_manifest(m, root)
    assert (r.missing, r.added, r.altered) == (["site0/p0.jpg"], ["new.jpg"], ["site1/p1.jpg"])
    data = json.loads(m.read_text())
    data["photos"][0]["sha256"] = "0" * 64
    m.write_text(json.dumps(data))
    assert not verify_manifest(m, root).manifest_intact


def test_corrections_are_append_only(tmp_path):
    c = Corrections(tmp_path)
    c.add("a" * 64, "x.jpg", "alice", Record(serial="AB123"))
    c.add("a" * 64, "x.jpg", "bob", Record(serial="AB128", status="confirmed"))
    h = c.history("a" * 64)
    assert [(r.operator, r.record.serial) for r in h] == [("alice", "AB123"), ("bob", "AB128")]
    assert h[0].created_at <= h[1].created_at
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        c.db.execute("UPDATE revisions SET operator='mallory'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        c.db.execute("DELETE FROM revisions")
    with pytest.raises(ValueError):
        c.add("a" * 64, "x.jpg", "", Record())
    with pytest.raises(ValueError):
        Record.from_form({"status": "approved"})
    assert '"serial": "AB128"' in c.export_json()


@pytest.fixture()
def server(scanned):
    from wtivision.review.server import make_server

    srv = make_server(scanned[1], port=0, operator="tester")
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _req(srv, method, path, body=None, headers=None):
    con = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    con.request(method, path, body=body, headers=headers or {})
    r = con.getresponse()
    return r.status, r.read(), dict(r.getheaders())


def test_server_refuses_traversal_and_unknown_ids(server):
    for p in ("/image/../../etc/passwd", "/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/image/99", "/image/-1",
              "/photo/abc", "/thumb/1e3", "/..%5c..%5cwindows"):
        status, body, _ = _req(server, "GET", p)
        assert status in (400, 404), p
        assert b"root:" not in body
    ok = next(i for i, f in enumerate(server.app.scan.findings) if f.ok)
    status, body, headers = _req(server, "GET", f"/image/{ok}")
    assert status == 200 and body[:2] == b"\xff\xd8"  # the original's bytes, unchanged
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"


def test_server_refuses_cross_site_and_oversize_posts(server):
    host = f"127.0.0.1:{server.server_address[1]}"
    ok_form = urllib.parse.urlencode({"csrf": server.app.csrf, "operator": "t", "status": "draft", "serial": "X1"})
    base = {"Host": host, "Content-Type": "application/x-www-form-urlencoded"}
    assert _req(server, "POST", "/photo/0", ok_form, {**base, "Origin": "http://evil.example"})[0] == 403
    assert _req(server, "POST", "/photo/0", ok_form, base)[0] == 403  # no Origin/Referer
    bad_token = ok_form.replace(server.app.csrf, "x" * 10)
    assert _req(server, "POST", "/photo/0", bad_token, {**base, "Origin": f"http://{host}"})[0] == 403
    big = ok_form + "&notes=" + "a" * 70000
    assert _req(server, "POST", "/photo/0", big, {**base, "Origin": f"http://{host}"})[0] == 413
    assert _req(server, "POST", "/photo/0", ok_form, {**base, "Origin": f"http://{host}"})[0] == 303
    assert [r.record.serial for r in server.app.corrections.history(server.app.scan.findings[0].sha256)] == ["X1"]


def _browser():
    pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed (.ci/install-browser.sh)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no chromium binary found (apt-get install chromium)")
    return pw, exe


ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.mark.browser
def test_browser_review_flow(server, tmp_path):
    pw, exe = _browser()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    machine_before = (server.app.scan.outdir / "results.jsonl").read_bytes()
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        page = b.new_page()
        page.goto(base + "/")
        assert page.locator("tr.row").count() == 4
        page.fill("#q", "site1")
        assert page.locator("tr.row:visible").count() == 1
        page.fill("#q", "")
        page.select_option("#family", "firearm")
        assert page.locator("tr.row:visible").count() == 3
        page.click("text=site0/p0.jpg")
        machine_text = page.inner_text("#machine")
        page.fill("input[name=serial]", "AK-47 12345")
        page.select_option("select[name=status]", "confirmed")
        page.fill("input[name=operator]", "Tech A")
        page.click("#save")
        page.wait_for_selector("#history tr:nth-child(2)")
        assert "AK-47 12345" in page.inner_text("#history") and "Tech A" in page.inner_text("#history")
        assert page.inner_text("#machine") == machine_text  # machine reading unchanged
        page.screenshot(path=str(tmp_path / "app.png"))
        resp = page.request.get(base + "/export.json")
        records = json.loads(resp.text())
        b.close()
    assert records[0]["record"]["serial"] == "AK-47 12345" and records[0]["operator"] == "Tech A"
    assert records[0]["path"] == "site0/p0.jpg"
    assert (server.app.scan.outdir / "results.jsonl").read_bytes() == machine_before
    assert (tmp_path / "app.png").stat().st_size > 10_000


@pytest.mark.browser
def test_browser_renders_report(scanned, tmp_path):
    pw, exe = _browser()
    html_path = write_html_report(scanned[1], tmp_path / "r.html")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        page = b.new_page(viewport={"width": 1200, "height": 900})
        page.goto(Path(html_path).as_uri())
        assert page.locator(".card:visible").count() == 4
        page.select_option("#status", "error")
        assert page.locator(".card:visible").count() == 1
        page.select_option("#status", "")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        b.close()
    from PIL import Image

    im = Image.open(tmp_path / "report.png").convert("L")
    assert im.size[0] >= 1200 and len(set(im.getdata())) > 50  # not blank

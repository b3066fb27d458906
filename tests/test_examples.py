"""The README's main job: scanning examples/ with the bundled models, checked against what a person sees
(examples/expected.json) and against the published results schema."""

import json

import pytest

from tests.conftest import REPO
from wtivision.scan import scan
from wtivision.schema import results_schema


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    s = scan(REPO / "examples", out)
    rows = {json.loads(line)["path"]: json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()}
    return s, rows


def test_examples_scan_is_complete_and_valid(scanned):
    jsonschema = pytest.importorskip("jsonschema")
    s, rows = scanned
    expected = json.loads((REPO / "examples" / "expected.json").read_text())
    photos = {k for k in expected if not k.startswith("_")}
    assert set(rows) == photos and s.errors == 0
    for r in rows.values():
        jsonschema.validate(r, results_schema())
        assert r["models"] and all(len(m["sha256"]) == 64 for m in r["models"])


def test_examples_findings_match_what_a_person_sees(scanned):
    _, rows = scanned
    expected = json.loads((REPO / "examples" / "expected.json").read_text())
    typ = [c["label"] for c in rows["revolver_basegun-warmup.jpg"]["classifications"] if c["task"] == "typology"]
    assert typ == [expected["revolver_basegun-warmup.jpg"]["typology"]]
    serial_hits = sum(any(t["text"] == v["serial"] for t in rows[k]["texts"])
                      for k, v in expected.items() if isinstance(v, dict) and "serial" in v)
    assert serial_hits >= 2
    code_hits = sum(any(t["headstamp"] and t["headstamp"]["factory_code"] == v["headstamp"][0] for t in rows[k]["texts"])
                    for k, v in expected.items() if isinstance(v, dict) and "headstamp" in v)
    assert code_hits >= 1
    # close-ups of markings are not classified as firearms
    for k in expected:
        if k.startswith("synthetic_"):
            assert not [c for c in rows[k]["classifications"] if c["task"] == "typology"], k

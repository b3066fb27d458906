import json

import pytest

from wtivision.results import (
    SCHEMA_VERSION,
    CaptureMetadata,
    Classification,
    Detection,
    HeadstampRecord,
    ImageFindings,
    ModelRef,
    TextReading,
)
from wtivision.schema import results_schema


def full_findings() -> ImageFindings:
    return ImageFindings(
        path="site-4/ﾌｫﾄ 01.jpg",
        sha256="a" * 64,
        size_bytes=1234,
        width=640,
        height=480,
        format="JPEG",
        capture=CaptureMetadata(datetime_original="2026:01:02 03:04:05", make="Canon", model="EOS",
                                orientation=6, gps_latitude=-1.5, gps_longitude=29.25, exif={"FNumber": "2.8"}),
        detections=[Detection.of("rifle", 0.91, [1, 2, 300, 120], model="det"),
                    Detection.of("case_head", 0.5, [10, 10, 40, 40], model="det")],
        classifications=[Classification(task="typology", label="bolt_action_long_gun", confidence=0.8,
                                         top_k=[("bolt_action_long_gun", 0.8), ("revolver", 0.1)],
                                         detection_index=0, original_label="epaule_a_verrou", model="typ")],
        texts=[TextReading(kind="headstamp", text="539 78", confidence=0.7, box=[10, 10, 40, 40],
                           candidates=["539 78", "S39 78"], raw_text="539·78", char_confidences=[0.9] * 6,
                           needs_review=True, detection_index=1,
                           headstamp=HeadstampRecord(factory_code="539", year="78", manufacturer="Tula",
                                                     country="Russia", tokens=["539", "78"]))],
        models=[ModelRef(name="det", sha256="b" * 64, task="detect", version="1")],
        timings={"detect": 12.5},
        also_at=["copy/ﾌｫﾄ 01.jpg"],
        analyzed_at="2026-11-24T00:00:00+00:00",
        wtivision_version="0.1.0",
    )


def test_json_round_trip_is_lossless():
    f = full_findings()
    text = f.to_json()
    back = ImageFindings.from_json(text)
    assert back == f
    assert isinstance(back.texts[0].headstamp, HeadstampRecord)
    assert back.classifications[0].top_k[1] == ("revolver", 0.1)
    assert json.loads(text)["detections"][0]["family"] == "firearm"


def test_schema_accepts_real_findings_and_rejects_bad_ones():
    jsonschema = pytest.importorskip("jsonschema")
    schema = results_schema()
    jsonschema.validate(json.loads(full_findings().to_json()), schema)
    jsonschema.validate(json.loads(ImageFindings(path="x.jpg", status="error", error="empty",
                                                 error_code="empty").to_json()), schema)
    bad = json.loads(full_findings().to_json())
    bad["detections"][0]["family"] = "knife"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_model_feed_round_trips_and_old_records_without_it_still_load():
    jsonschema = pytest.importorskip("jsonschema")
    schema = results_schema()
    f = full_findings()
    f.models = [ModelRef(name="det", sha256="b" * 64, task="detect", version="1", file="det.onnx",
                         feed="416x416 letterbox, padded to stride 32")]
    data = json.loads(f.to_json())
    assert data["models"][0]["feed"] == "416x416 letterbox, padded to stride 32"
    assert data["schema_version"] == SCHEMA_VERSION == "1.1"
    jsonschema.validate(data, schema)
    assert ImageFindings.from_json(f.to_json()) == f
    # a record written by schema 1.0: no "feed" in its models
    old = json.loads(full_findings().to_json())
    old["schema_version"] = "1.0"
    for m in old["models"]:
        del m["feed"]
    jsonschema.validate(old, schema)
    back = ImageFindings.from_dict(old)
    assert back.models[0].feed == "" and back.schema_version == "1.0"
    assert ModelRef.from_dict({"name": "d", "sha256": "b" * 64, "task": "detect"}).feed == ""
    unknown = {**old, "schema_version": "2.0"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(unknown, schema)


def test_invalid_elements_are_refused():
    with pytest.raises(KeyError):
        Detection.of("knife", 0.5, [0, 0, 1, 1])
    with pytest.raises(ValueError):
        Detection.of("pistol", 0.5, [5, 0, 1, 1])
    with pytest.raises(ValueError):
        TextReading(kind="poem", text="x", confidence=1.0, box=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="unknown field"):
        ImageFindings.from_dict({"path": "a", "verdict": "guilty"})


def test_typology_conflicts_flag_the_other_firearm_group_only():
    from wtivision.review.report import CONFLICT, _card
    from wtivision.taxonomy import typology_disagrees

    assert typology_disagrees("pistol", "bolt_action_long_gun") and typology_disagrees("rifle", "revolver")
    assert not typology_disagrees("pistol", "revolver")  # both handguns: `pistol` covers all of them
    assert not typology_disagrees("rifle", "pump_action_long_gun")  # a shotgun is a long gun
    assert not typology_disagrees("launcher", "revolver") and not typology_disagrees("pistol", "unknown")
    f = ImageFindings(path="x.jpg", sha256="b" * 64, detections=[
        Detection.of("pistol", 0.9, [0, 0, 10, 10]), Detection.of("rifle", 0.8, [20, 0, 90, 10])],
        classifications=[
            Classification(task="typology", label="bolt_action_long_gun", confidence=0.7, detection_index=0),
            Classification(task="typology", label="semi_auto_hunting_long_gun", confidence=0.6, detection_index=1),
            Classification(task="typology", label="revolver", confidence=0.5, detection_index=None),
            Classification(task="typology", label="revolver", confidence=0.5, detection_index=7)])
    assert f.typology_conflicts() == [0]  # whole-photo and dangling indices are never flagged
    html = _card(f, b"")
    assert html.count(CONFLICT) == 1
    assert html.index("<b>bolt_action_long_gun") < html.index(CONFLICT) < html.index("<b>semi_auto_hunting_long_gun")
    assert ImageFindings.from_json(f.to_json()).to_json() == f.to_json()  # derived, not stored

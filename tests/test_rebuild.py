"""datasets.rebuild: the plan it follows matches the recipes (every raw source a recipe reads is prepared
before it is built, in keep_splits order), and a missing mirror is a clear error before any work."""

import re

import pytest
import yaml

from datasets.rebuild import CHAIN, NEEDS, REPO, SOURCES, main, plan


def recipe(name: str) -> dict:
    return yaml.safe_load((REPO / "datasets" / "recipes" / f"{name}.yaml").read_text())


def test_plan_prepares_every_source_each_recipe_reads_in_chain_order():
    sources, recipes, audit = plan(["detector-v2", "detector-v1.7", "external-pfm1"])
    assert recipes == [*CHAIN, "external-pfm1", "detector-v2"] and audit
    prepared = {s.name for s in sources}
    for r in recipes:
        cfg = recipe(r)
        for src in cfg["sources"]:
            if src["format"] == "scenes":  # generated at build time
                continue
            raw = re.fullmatch(r"\.\./\.\./\.data/raw/(.+)", src["path"])
            assert raw and raw.group(1) in prepared, (r, src["path"])
        if "keep_splits_skip" in cfg:  # it reads the audit's leaks.csv
            assert re.fullmatch(r"\.\./\.\./runs/data/detector-v1\.3/leaks\.csv", cfg["keep_splits_skip"]) and audit
        keep = cfg.get("keep_splits")
        if keep:  # the recipe it keeps the splits of is built before it
            before = re.fullmatch(r"\.\./\.\./runs/data/(.+)/manifest\.csv", keep).group(1)
            assert recipes.index(before) < recipes.index(r)
    assert "elgarh-weapons-all" not in {s.name for s in plan(["detector-v1.7"])[0]}  # heldout / v2 only
    assert plan(["heldout-elgarh"])[1:] == (["heldout-elgarh"], False)
    assert plan(["detector-v1.7"])[2] is False
    assert {s.name for s in SOURCES} == {n for v in NEEDS.values() for n in v}


def test_unknown_dataset_and_missing_mirror_fail_before_any_work(tmp_path, caplog):
    with pytest.raises(ValueError, match="unknown dataset"):
        plan(["detector-v9"])
    assert main(["--mirrors", str(tmp_path), "--datasets", "external-pfm1"]) == 1
    assert "git clone --mirror https://github.com/joelUSD/PFM1-Detection" in caplog.text

"""The JSON schema of one ``ImageFindings`` line of results.jsonl."""

from __future__ import annotations

import json
from importlib import resources


def results_schema() -> dict:
    return json.loads(resources.files(__name__).joinpath("results.schema.json").read_text(encoding="utf-8"))

"""The JSON Schema files in schemas/ are exactly what the models generate, and usable."""

from __future__ import annotations

import json

import jsonschema
import pytest

from events.json_schemas import SCHEMA_VERSION, call_schemas, render
from schemas import ROOT


@pytest.mark.parametrize("name", sorted(call_schemas()))
def test_schema_file_matches_the_model(name: str) -> None:
    path = ROOT / SCHEMA_VERSION / f"{name}.json"
    assert path.exists(), f"{path} is missing: run `python -m events.json_schemas schemas`"
    assert path.read_text() == render(call_schemas()[name]), (
        f"{path} drifted from its model: run `python -m events.json_schemas schemas`"
    )


def test_no_schema_file_without_a_model() -> None:
    files = {p.stem for p in (ROOT / SCHEMA_VERSION).glob("*.json")}
    assert files == set(call_schemas())


def test_track_schema_accepts_a_segment_call_and_rejects_a_wrong_type() -> None:
    schema = json.loads((ROOT / SCHEMA_VERSION / "track.json").read_text())
    jsonschema.validate(
        {"userId": "u1", "event": "Order Completed", "properties": {"revenue": 20}}, schema
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"userId": "u1", "event": 5}, schema)

"""``journeys flows migrate-rules``: a rules file as a flows file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from journeys.flows.definitions import flows_from_toml
from stack.cli import main

ROOT = Path(__file__).parents[2]
RULES_FILE = ROOT / "tests" / "data" / "lifecycle_rules.toml"  # the rules as they shipped
SHIPPED = tomllib.loads((ROOT / "journeys" / "flows.toml").read_text())["flows"]


def test_the_shipped_rules_migrate_to_the_shipped_flows(tmp_path: Path) -> None:
    out = tmp_path / "flows.toml"
    assert main(["flows", "migrate-rules", str(RULES_FILE), "--out", str(out)]) == 0
    written = tomllib.loads(out.read_text())["flows"]
    assert len(flows_from_toml(out.read_text())) == 8
    for flow_id, table in written.items():
        if flow_id == "abandoned_cart":  # the rule's own reminder, not the canonical flow
            assert table["nodes"]["due"] == {
                "kind": "date_entry",
                "anchor": "cart",
                "min_value": 0,
                "after": "1h",
                "next": "send_webhook",
            }
            continue
        assert {**table, "enabled": False} == SHIPPED[flow_id], flow_id
    assert main(["flows", "validate", "--file", str(out)]) == 0


def test_a_bad_rules_file_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nid = "x"\ntrigger = "birthday"\ndelay = "soon"\n')
    assert main(["flows", "migrate-rules", str(bad)]) == 2
    assert "rule[0].delay: must be a duration" in capsys.readouterr().err


def test_without_a_rules_file_it_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # No shipped rules file any more: the lifecycle flows ship as flows.
    assert main(["flows", "migrate-rules"]) == 2
    assert "no rules file" in capsys.readouterr().err

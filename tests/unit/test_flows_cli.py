"""``journeys flows validate|list|show`` over flows files, and the shipped file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stack.cli import main

SHIPPED = Path(__file__).parents[2] / "journeys" / "flows.toml"


def test_the_shipped_flows_validate_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flows", "validate"]) == 0
    assert capsys.readouterr().out.strip() == "ok: 8 flows, 27 nodes"
    assert main(["flows", "list"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("abandoned_cart v1: Abandoned cart, reentry cooldown:")
    assert "holdout_split (split)" in listing and "coupon (send)" in listing
    assert main(["flows", "show", "abandoned_cart"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["definition"]["goal"] == {"event": "Order Completed", "within": "3d"}
    assert main(["flows", "show", "nobody"]) == 2
    assert "flow_id: unknown flow 'nobody'" in capsys.readouterr().err


def test_an_invalid_file_names_the_node_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "flows.toml"
    bad.write_text(SHIPPED.read_text().replace("{{ customer_id }}", "").replace(
        "entry.name | default('your item')", "cart.name"
    ))  # fmt: skip
    assert main(["flows", "validate", "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: flows.abandoned_cart.nodes.reminder.body: unknown variable 'cart'" in err
    bad.write_text("[flows\n")
    assert main(["flows", "validate", "--file", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    draft = tmp_path / "draft.toml"
    draft.write_text(SHIPPED.read_text().replace('timeout = "1h"', 'timeout = "soon"'))
    # A draft is validated before anything is sent: no API needed to refuse it.
    code = main(["flows", "backtest", "abandoned_cart", "--from", "2026-01-01", "--to",
                 "2026-02-01", "--file", str(draft), "--url", "http://127.0.0.1:9"])  # fmt: skip
    assert code == 2
    assert "flows.abandoned_cart.nodes.wait_for_order.timeout" in capsys.readouterr().err

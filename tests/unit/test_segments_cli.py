"""``journeys segments validate|list|show`` over definitions files, and the shipped file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.cli import main


def test_the_shipped_definitions_validate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments", "validate"]) == 0
    assert capsys.readouterr().out.strip() == "ok: 6 traits, 3 segments"
    assert main(["segments", "list"]) == 0
    listing = capsys.readouterr().out
    assert "segment shoe_lookers: Viewed shoes three times this week" in listing
    assert "trait orders_90d: count of order completed within 7776000s" in listing


def test_show_says_a_definition_is_not_backfilled(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments", "show", "big_spenders"]) == 0
    out = capsys.readouterr().out
    assert '"backfilled": false' in out and '"trait": "revenue_365d"' in out
    assert main(["segments", "show", "nobody"]) == 2
    assert "segment_id: unknown segment 'nobody'" in capsys.readouterr().err


def test_an_invalid_file_names_the_path_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "segments.toml"
    bad.write_text(
        '[segments.cart_abandoners]\nwhere.and = [{ event = "Product Added" },'
        ' { event = "Order Completed", count = -1 }]\n'
    )
    assert main(["segments", "validate", "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: segments.cart_abandoners.where.and[1].count: must be an integer >= 0" in err
    bad.write_text("[segments\n")
    assert main(["segments", "validate", "--file", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err

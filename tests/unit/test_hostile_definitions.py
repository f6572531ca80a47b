"""Hostile definitions a fuzzing pass found: each is refused with a named error, never run.

A flow's message template asking for ``'x' * 10**10`` took the node's memory
(20 GB, killed by the kernel) when the flow was validated; a 2000-node chain
and a 1000-deep TOML file overflowed Python's recursion; a version of 2**63
made the worker fail writing it to SQLite; a list upload's 200 KB field and
its byte order mark.
"""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from typing import Any

import pytest

from api.segments import _BadRow, parse_customer_list
from journeys.flows.definitions import (
    MAX_NODES,
    MAX_VERSION,
    FlowError,
    flows_from_toml,
    parse_flow,
)
from journeys.flows.templates import MAX_RENDERED, MessageTemplate, compile_template
from journeys.segment_definitions import DefinitionError, definitions_from_toml
from journeys.stages import StageRules

SAMPLE: dict[str, Any] = {"traits": {"first_name": "Ada"}, "entry": {"name": "a lamp"}}

BOMBS = [
    "{{ 'x' * 10**10 }}",
    "{{ [1] * 10**9 }}",
    "{{ (10**1000) ** 1000 }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' | center(10**10) }}",
    "{{ 'x'.ljust(10**10) }}",
    "{{ '%10000000000s' % 'x' }}",
    "{{ '%*d' % (10**10, 1) }}",
    "{{ '%10000000000s' | format('x') }}",
    "{{ '{:>10000000000}'.format('x') }}",
    "{{ lipsum(10**10) }}",
    "{{ " + "(" * 500 + "1" + ")" * 500 + " }}",
]


@pytest.mark.parametrize("source", BOMBS)
def test_a_template_asking_for_unbounded_memory_or_time_is_refused(source: str) -> None:
    refused = compile_template(source)
    assert isinstance(refused, str), source
    assert "SecurityError" in refused or "nested too deeply" in refused, refused


def test_ordinary_templates_still_render_and_output_is_cut_at_the_bound() -> None:
    template = compile_template(
        "{{ traits.first_name | default('Hi') }}: {{ entry.name }} for {{ '%.2f' % 12.5 }}, "
        "{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ range(3) | list }} {{ 'x' | center(5) }}"
    )
    assert isinstance(template, MessageTemplate), template
    assert template.render(SAMPLE) == "Ada: a lamp for 12.50, ababab 1024 [0, 1, 2]   x  "
    # Output is counted as it is produced: a loop within every bound still stops at
    # MAX_RENDERED characters, a send skipped ``template`` rather than a huge message.
    loop = compile_template("{% for i in range(50000) %}{{ entry.name }}{% endfor %}")
    assert isinstance(loop, MessageTemplate)
    with pytest.raises(Exception, match=f"longer than {MAX_RENDERED}"):
        loop.render(SAMPLE)


def _abandoned_cart() -> dict[str, Any]:
    text = resources.files("journeys").joinpath("flows.toml").read_text("utf-8")
    return copy.deepcopy(tomllib.loads(text)["flows"]["abandoned_cart"])


def test_a_flow_version_beyond_sqlite_integers_and_a_huge_graph_are_refused() -> None:
    flow = _abandoned_cart()
    flow["version"] = 2**63
    with pytest.raises(FlowError) as refused:
        parse_flow("f", flow)
    assert ("flows.f.version", f"must be at most {MAX_VERSION}") in refused.value.errors
    chain: dict[str, Any] = {"start": {"kind": "entry", "event": "Product Added", "next": "w0"}}
    for i in range(2000):
        chain[f"w{i}"] = {"kind": "wait", "duration": "1m", "next": f"w{i + 1}"}
    chain["w1999"] = {"kind": "send", "channel": "webhook", "body": "x"}
    flow = {**_abandoned_cart(), "nodes": chain}
    with pytest.raises(FlowError) as refused:
        parse_flow("f", flow)
    assert refused.value.errors[0][0] == "flows.f.nodes", refused.value.errors
    assert f"at most {MAX_NODES} nodes" in refused.value.errors[0][1]


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "{a = " * 1000 + "1" + "}" * 1000,
        "x = " + "[" * 1000 + "1" + "]" * 1000,
    ],
)
def test_toml_nested_deeper_than_python_parses_is_a_toml_error(text: str) -> None:
    with pytest.raises(FlowError, match="nested too deeply"):
        flows_from_toml(text)
    with pytest.raises(DefinitionError, match="nested too deeply"):
        definitions_from_toml(text)
    with pytest.raises(tomllib.TOMLDecodeError, match="nested too deeply"):
        StageRules.from_toml(text)


def test_a_list_upload_keeps_no_byte_order_mark_and_names_a_row_over_the_field_limit() -> None:
    # What a spreadsheet saves: a BOM, CRLF, blank lines, quoted ids.
    text = '\ufeffcustomer_id\r\n\r\nu1\r\n"u,2"\r\n"u""3"\r\n'.encode().decode("utf-8-sig")
    assert parse_customer_list(text) == ["u1", "u,2", 'u"3']
    with pytest.raises(_BadRow) as bad:
        parse_customer_list("u1\n" + "x" * 200_000 + "\n")
    assert (bad.value.row, bad.value.rule) == (2, "csv")

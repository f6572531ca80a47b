"""Journey flows in force, in the event store's database (issue 18).

The shape of the segment definitions' store (projections/definition_store.py):
the flows file (``JOURNEYS_FLOWS_FILE`` or journeys/flows.toml) seeds the table
once, when it has never held flows; from then on the admin API (``PUT`` /
``DELETE /v1/flows/{id}``, ``POST /v1/flows/{id}/pause|resume``) changes it.
Kinds: ``flows`` (each flow's table as in the file) and ``paused`` (each flow's
pauses, journeys/flows/pauses.py: ``{"at_ms"}`` of the one in force, ``"ended"``
spans; kept with the flow, deleted with it). The worker's flow runner polls the
version and takes a change between two ticks, with no restart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from journeys.flows.definitions import FlowDefinition, FlowError, parse_flow, parse_flows
from journeys.flows.pauses import FlowPause
from projections.definition_store import DefinitionStore, Document


@dataclass(frozen=True)
class FlowsInForce:
    """The flows in force and their pauses (flow id → pauses)."""

    flows: tuple[FlowDefinition, ...] = ()
    pauses: Mapping[str, FlowPause] = field(default_factory=dict)

    @property
    def paused(self) -> dict[str, int]:
        """The flows paused now: flow id → paused since (epoch ms)."""
        return {key: p.since_ms for key, p in self.pauses.items() if p.since_ms is not None}

    def get(self, flow_id: str) -> FlowDefinition | None:
        return next((flow for flow in self.flows if flow.id == flow_id), None)


def parse_flows_in_force(document: Document) -> FlowsInForce:
    """A stored document; raises FlowError (naming the node and field) for invalid flows."""
    flows = tuple(parse_flows({"flows": document.get("flows", {})}))
    known = {flow.id for flow in flows}
    pauses = {
        key: FlowPause.from_dict(body)
        for key, body in document.get("paused", {}).items()
        if key in known
    }
    return FlowsInForce(flows, pauses)


class FlowDefinitions(DefinitionStore[FlowsInForce]):
    """The stored flows (``flow_definitions``) and their pauses."""

    def __init__(self, sqlite_path: Path | None = None, postgres_dsn: str = "") -> None:
        super().__init__(
            "flow_definitions",
            ("flows", "paused"),
            parse_flows_in_force,
            sqlite_path=sqlite_path,
            postgres_dsn=postgres_dsn,
        )

    def put(
        self, flow: FlowDefinition, recorded: Mapping[int, str] | None = None
    ) -> tuple[bool, FlowsInForce]:
        """Define or replace ``flow`` (parsed from its table); (whether it existed, flows).

        A changed flow must carry a new version: a different definition under the
        version in force, or under one the runner recorded (``recorded``: version →
        fingerprint, from ``flow_versions``), or a lower version, is a FlowConflict,
        because customers inside finish on the version they entered and a version
        must mean one definition. Re-putting the same definition changes nothing.
        """

        def guard(previous: Mapping[str, object] | None) -> None:
            if previous is not None:
                before = parse_flow(flow.id, dict(previous))
                if before is not None:
                    _check_version(flow, before.version, before.fingerprint)
            known = (recorded or {}).get(flow.version)
            if known is not None and known != flow.fingerprint:
                raise FlowConflict(
                    [
                        (
                            f"flows.{flow.id}.version",
                            f"version {flow.version} was run with another definition; "
                            f"give the change a version above {max(recorded or {})}",
                        )
                    ]
                )

        return self.change("flows", flow.id, dict(flow.source), guard=guard)

    def delete(self, flow_id: str) -> bool:
        """Remove a flow and its pause, in one transaction (a pause left behind would
        hold a flow defined again under the id); runs inside finish on their version.
        False: unknown."""
        existed, _ = self.change("flows", flow_id, None, together=[("paused", flow_id, None)])
        return existed

    def pause(self, flow_id: str, at_ms: int) -> bool:
        """Hold the flow from ``at_ms`` (kept if already paused); False when unknown."""
        return self._set_pause(flow_id, lambda pauses: pauses.paused(at_ms))

    def resume(self, flow_id: str, at_ms: int) -> bool:
        """Let a paused flow go on from ``at_ms`` (the pause kept as an ended one: an
        entry stamped inside it that arrives later is still refused); False when
        unknown."""
        return self._set_pause(flow_id, lambda pauses: pauses.resumed(at_ms))

    def _set_pause(self, flow_id: str, move: Callable[[FlowPause], FlowPause]) -> bool:
        # The flow's existence is checked in the change's transaction, so a pause
        # never lands beside a flow deleted meanwhile; a pause that would change
        # nothing (paused already, or not paused) writes nothing.
        def known(document: Document) -> FlowsInForce:
            if flow_id not in document.get("flows", {}):
                raise _Unknown
            return parse_flows_in_force(document)

        def moved(previous: Mapping[str, Any] | None) -> dict[str, Any]:
            before = FlowPause.from_dict(previous or {})
            after = move(before)
            if after == before:
                raise _Unchanged
            return after.to_dict()

        try:
            self.change("paused", flow_id, moved, check=known)
        except _Unknown:
            return False
        except _Unchanged:
            return self.current().get(flow_id) is not None
        return True


class _Unknown(Exception):
    """The flow to pause or resume is not in force: nothing is written."""


class _Unchanged(Exception):
    """The pause or resume changes nothing: nothing is written."""


class FlowConflict(FlowError):
    """A flow's change refused because it does not fit the versions in force (409)."""


def _check_version(flow: FlowDefinition, version: int, fingerprint: str) -> None:
    path = f"flows.{flow.id}.version"
    if flow.version < version:
        message = f"version {version} is in force: a change needs a version above it"
        raise FlowConflict([(path, message)])
    if flow.version == version and flow.fingerprint != fingerprint:
        message = (
            f"version {version} is in force with another definition: "
            f"give the change version {version + 1}"
        )
        raise FlowConflict([(path, message)])

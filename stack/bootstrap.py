"""Wires adapters to the domain, once per process, from the one Settings object."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from clickhouse_connect.driver.client import Client

from api.dependencies import AccessKeys, Gateway, HealthCheck
from journeys.application import JourneyApplication
from projections.clickhouse import connect, database_name
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from stack.outreach import OutreachAdmin, build_store
from stack.settings import Settings
from streams.app import JourneyStreams
from streams.outreach.store import OutreachStore
from streams.pipeline import JourneyPipeline
from streams.producer import KafkaEventSink


@dataclass
class Platform:
    """The stores of one process: ClickHouse, the event store and the read models."""

    settings: Settings
    clickhouse: Client
    event_log: EventLog
    stages: CustomerStageView
    journeys: JourneyApplication
    # Outreach timers, deliveries, endpoints (the event store's database).
    outreach: OutreachStore

    def pipeline(self) -> JourneyPipeline:
        """The journey pipeline over these stores."""
        return JourneyPipeline(self.journeys, self.event_log, self.stages)

    def close(self) -> None:
        """Release the stores (the chdb folder lock, the SQLite connection)."""
        self.journeys.close()
        self.outreach.close()
        self.clickhouse.close()


def event_store_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for the configured event store."""
    if settings.event_store == "postgres":
        if not settings.postgres_dsn:
            raise ValueError("JOURNEYS_POSTGRES_DSN is required when JOURNEYS_EVENT_STORE=postgres")
        dsn = urlsplit(settings.postgres_dsn)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dsn.path.lstrip("/") or "journeys",
            "POSTGRES_HOST": dsn.hostname or "localhost",
            "POSTGRES_PORT": str(dsn.port or 5432),
            "POSTGRES_USER": unquote(dsn.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(dsn.password or ""),
        }
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(settings.sqlite_path),
        # Readers (the API) and the writer (the worker) share the file; wait, don't fail.
        "SQLITE_LOCK_TIMEOUT": "30",
    }


def build_platform(settings: Settings) -> Platform:
    """Connect the stores and bring the ClickHouse schema up to date."""
    database = database_name(settings.clickhouse_database)
    clickhouse = connect(settings.clickhouse_url, settings.chdb_path)
    migrate(clickhouse, database)
    return Platform(
        settings=settings,
        clickhouse=clickhouse,
        event_log=EventLog(clickhouse, database),
        stages=CustomerStageView(clickhouse, database),
        journeys=JourneyApplication(env=event_store_env(settings)),
        outreach=build_store(settings),
    )


def build_gateway(
    platform: Platform, sink: KafkaEventSink, streams: JourneyStreams | None
) -> Gateway:
    """The API's collaborators, with a health check per component."""
    settings = platform.settings

    async def broker() -> dict[str, Any]:
        return {"ok": await sink.connected(), "bootstrap_servers": settings.kafka_bootstrap_servers}

    async def clickhouse() -> dict[str, Any]:
        version = await asyncio.to_thread(platform.clickhouse.command, "SELECT version()")
        engine = "chdb" if settings.uses_embedded_clickhouse else "server"
        return {"ok": True, "engine": engine, "version": str(version)}

    async def event_store() -> dict[str, Any]:
        position = await asyncio.to_thread(platform.journeys.consumed_position, "health-probe")
        return {"ok": position == 0, "kind": settings.event_store}

    checks: dict[str, HealthCheck] = {
        "broker": broker,
        "clickhouse": clickhouse,
        "event_store": event_store,
    }
    if streams is not None:

        async def worker() -> dict[str, Any]:
            return streams.status()

        checks["worker"] = worker
    return Gateway(
        sink=sink,
        keys=AccessKeys(
            write_keys=frozenset(k for k in [settings.write_key] if k),
            read_keys=frozenset(k for k in [settings.read_key] if k),
            admin_keys=frozenset(k for k in [settings.admin_key] if k),
        ),
        event_log=platform.event_log,
        stages=platform.stages,
        health_checks=checks,
        outreach=OutreachAdmin(settings, platform.outreach),
    )

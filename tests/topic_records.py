"""Every record a topic holds so far, read outside any consumer group (for assertions)."""

from __future__ import annotations

import json
from typing import Any

from kafka import KafkaConsumer


def topic_values(bootstrap_servers: str, topic: str) -> list[dict[str, Any]]:
    """The JSON values of every record on ``topic``, in partition order."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
        enable_auto_commit=False,
    )
    try:
        return [json.loads(record.value) for record in consumer]
    finally:
        consumer.close()

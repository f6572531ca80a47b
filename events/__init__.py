"""Tracking events: the canonical envelope, event types and the Segment mapping.

This package imports nothing else of ours; every other layer depends on it.
"""

from events.envelope import TrackedEvent
from events.types import EventType, event_type_for, normalized_name

__all__ = ["EventType", "TrackedEvent", "event_type_for", "normalized_name"]

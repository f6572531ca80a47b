"""Seal an event's personal fields with its customer's data key; open them for allowed readers.

A sealed field's value is ``{"$enc": "<base64>"}``, plus ``"$h"`` (a keyed hash
of the normalised value) for fields looked up by value, such as e-mail. The
ciphertext names its key (the customer id), so opening needs nothing else. A
value whose key was destroyed (an erased customer) opens to None.

The gateway step lives here too (:class:`SealingSink`): wrapped around the
gateway's sink, it seals before anything is produced, journaled or
dead-lettered, and turns a suppressed customer's events into dead letters
without their payload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events.envelope import TrackedEvent
from events.sink import EventSink
from projections.privacy.cipher import CipherError, key_id_of, keyed_hash, open_sealed, seal
from projections.privacy.fields import PersonalFields
from projections.privacy.keystore import KeyStore

ENC = "$enc"
HASH = "$h"
# What an erased customer's values read as, where a string is expected (exports, texts).
ERASED = "[erased]"
# The key of dead letters no customer id can be read from (a body that is not JSON).
UNATTRIBUTED = "$unattributed"
# Data keys kept unwrapped in memory, most recently used.
KEY_CACHE = 100_000
# What a suppressed customer's dropped event is dead-lettered with (no payload).
SUPPRESSED_REASON = {
    "field": "userId",
    "rule": "suppressed",
    "message": "this customer was erased; their events are not kept",
}
# The envelope fields a dead letter keeps readable, for triage; the rest is sealed.
_TRIAGE_FIELDS = ("type", "event", "messageId", "userId", "anonymousId", "timestamp")


def is_sealed(value: Any) -> bool:
    """True for a sealed field value."""
    return type(value) is dict and ENC in value


def customer_of(event: TrackedEvent) -> str:
    """Whose data key seals the event: its userId, else its anonymousId."""
    return event.user_id or event.anonymous_id or event.customer_key


class Vault:
    """Seals and opens personal fields; erases customers by destroying their keys."""

    def __init__(self, keys: KeyStore, fields: PersonalFields) -> None:
        self.keys = keys
        self.fields = fields
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, AESGCM] = OrderedDict()
        self._suppressed = keys.suppressed()

    # --- keys ------------------------------------------------------------------------

    def _cached(self, customer_id: str) -> AESGCM | None:
        with self._lock:
            found = self._cache.get(customer_id)
            if found is not None:
                self._cache.move_to_end(customer_id)
            return found

    def load_keys(self, customer_ids: Iterable[str], *, create: bool) -> None:
        """Bring the data keys of ``customer_ids`` into memory (one store read), creating
        missing ones with ``create`` (never for a suppressed id)."""
        missing = [c for c in dict.fromkeys(customer_ids) if self._cached(c) is None]
        if not missing:
            return
        found = self.keys.data_keys(missing, create=create)
        with self._lock:
            for customer_id, key in found.items():
                self._cache[customer_id] = AESGCM(key)
            while len(self._cache) > KEY_CACHE:
                self._cache.popitem(last=False)

    def _key(self, customer_id: str, *, create: bool) -> AESGCM | None:
        found = self._cached(customer_id)
        if found is None:
            self.load_keys([customer_id], create=create)
            found = self._cached(customer_id)
        return found

    # --- suppression -------------------------------------------------------------

    def is_suppressed(self, *customer_ids: str | None) -> bool:
        """True when any of the ids was erased."""
        return any(c in self._suppressed for c in customer_ids if c)

    @property
    def suppressed(self) -> frozenset[str]:
        """Every erased id."""
        return frozenset(self._suppressed)

    def erase(self, customer_ids: Iterable[str], erased_ts: float) -> int:
        """Destroy the data keys of ``customer_ids`` and suppress them; keys destroyed."""
        ids = list(dict.fromkeys(customer_ids))
        # Suppressed first: from here on no key is created for them again.
        self.keys.suppress(ids, erased_ts)
        self._suppressed.update(ids)
        destroyed = self.keys.destroy(ids)
        with self._lock:
            for customer_id in ids:
                self._cache.pop(customer_id, None)
        return destroyed

    def forget(self, customer_ids: Iterable[str]) -> None:
        """Suppress ids another process erased (its key store rows are gone already)."""
        ids = list(customer_ids)
        self._suppressed.update(ids)
        with self._lock:
            for customer_id in ids:
                self._cache.pop(customer_id, None)

    # --- sealing -----------------------------------------------------------------

    def _personal(self, values: Mapping[str, Any]) -> bool:
        return any(name in self.fields and not is_sealed(v) for name, v in values.items())

    def needs_keys(self, events: Sequence[TrackedEvent]) -> list[str]:
        """The customers of ``events`` with personal fields whose keys are not in memory."""
        return [
            customer
            for event in events
            if self._has_personal(event)
            and self._cached(customer := customer_of(event)) is None
            and not self.is_suppressed(customer)
        ]

    def _has_personal(self, event: TrackedEvent) -> bool:
        if self._personal(event.properties):
            return True
        traits = event.context.get("traits") if event.context else None
        return isinstance(traits, dict) and self._personal(traits)

    def seal_value(self, customer_id: str, name: str, value: Any) -> dict[str, str]:
        """``value`` (any JSON value) sealed with the customer's key (created if need be)."""
        key = self._key(customer_id, create=True)
        if key is None:
            raise CipherError(f"customer {customer_id!r} was erased: nothing is sealed for them")
        sealed = {ENC: seal(key, customer_id, orjson.dumps(value))}
        if name in self.fields.lookups and isinstance(value, str):
            sealed[HASH] = self.lookup_hash(value)
        return sealed

    def lookup_hash(self, value: str) -> str:
        """The keyed hash a sealed lookup field carries for ``value`` (find by e-mail)."""
        return keyed_hash(self.keys.lookup_key, value)

    def _seal_map(self, customer_id: str, values: dict[str, Any]) -> dict[str, Any]:
        return {
            name: self.seal_value(customer_id, name, value)
            if name in self.fields and not is_sealed(value) and value is not None
            else value
            for name, value in values.items()
        }

    def seal_event(self, event: TrackedEvent) -> TrackedEvent:
        """``event`` with every personal field sealed (the same event when it has none)."""
        if not self._has_personal(event):
            return event
        customer = customer_of(event)
        properties = self._seal_map(customer, event.properties)
        context = event.context
        traits = context.get("traits")
        if isinstance(traits, dict) and self._personal(traits):
            context = {**context, "traits": self._seal_map(customer, traits)}
        return dataclasses.replace(event, properties=properties, context=context)

    def seal_events(
        self, events: Sequence[TrackedEvent]
    ) -> tuple[list[TrackedEvent], list[TrackedEvent]]:
        """The events to keep, sealed, and those of suppressed customers (to drop)."""
        kept: list[TrackedEvent] = []
        dropped: list[TrackedEvent] = []
        suppressed = self._suppressed
        for event in events:
            if suppressed and self.is_suppressed(
                event.user_id, event.anonymous_id, event.customer_key
            ):
                dropped.append(event)
            else:
                kept.append(self.seal_event(event))
        return kept, dropped

    def seal_payload(self, payload: bytes) -> bytes:
        """A rejected payload for the dead letters, its personal data sealed.

        A JSON object keeps its triage fields (type, event, messageId, ids) and
        carries the rest sealed with its customer's key; a batch seals each item
        so; anything else is sealed whole under the unattributed key. A
        suppressed customer's payload is not kept at all.
        """
        if not payload:
            return payload
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("batch"), list):
            items = [self._sealed_item(item) for item in parsed["batch"]]
            return orjson.dumps({"batch": items})
        if isinstance(parsed, dict):
            return orjson.dumps(self._sealed_item(parsed))
        return orjson.dumps(
            {ENC: self.seal_value(UNATTRIBUTED, "", payload.decode("utf-8", "replace"))[ENC]}
        )

    def _sealed_item(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            return {ENC: self.seal_value(UNATTRIBUTED, "", item)[ENC]}
        kept = {
            name: item[name]
            for name in _TRIAGE_FIELDS
            if isinstance(item.get(name), str) and len(item[name]) <= 256
        }
        customer = kept.get("userId") or kept.get("anonymousId") or UNATTRIBUTED
        if self.is_suppressed(customer):
            return kept
        return {**kept, ENC: self.seal_value(customer, "", item)[ENC]}

    # --- opening -----------------------------------------------------------------

    def open_value(self, value: Any) -> Any:
        """The plain value of a sealed field (None once its customer was erased);
        any other value as it is."""
        if not is_sealed(value):
            return value
        customer_id, nonce, body = key_id_of(value[ENC])
        key = self._key(customer_id, create=False)
        if key is None:
            return None
        return orjson.loads(open_sealed(key, customer_id, nonce, body))

    def open_tree(self, value: Any) -> Any:
        """``value`` with every sealed value inside it (dicts, lists) opened."""
        if type(value) is dict:
            if ENC in value:
                return self.open_value(value)
            return {name: self.open_tree(item) for name, item in value.items()}
        if type(value) is list:
            return [self.open_tree(item) for item in value]
        return value


class SealingSink:
    """The gateway's sink, sealing first: only ciphertext reaches the broker and the journal."""

    def __init__(self, inner: EventSink, vault: Vault) -> None:
        self.inner = inner
        self.vault = vault

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        """Seal and publish; a suppressed customer's events go to the dead letters, bare."""
        vault = self.vault
        missing = vault.needs_keys(events)
        if missing:
            # A new customer's key is a write to the key store: off the event loop.
            await asyncio.to_thread(vault.load_keys, missing, create=True)
        kept, dropped = vault.seal_events(events)
        for event in dropped:
            await self.inner.dead_letter(b"", [SUPPRESSED_REASON], event.source)
        if kept:
            await self.inner.publish(kept)

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None:
        """Dead-letter ``payload``, its personal data sealed (:meth:`Vault.seal_payload`)."""
        sealed = await asyncio.to_thread(self.vault.seal_payload, payload)
        await self.inner.dead_letter(sealed, reasons, source)

"""Sealing and opening personal fields, the field list, keyed-hash stability."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from events import TrackedEvent, event_type_for
from projections.privacy.cipher import (
    CipherError,
    decode_master_key,
    encode_key,
    key_id_of,
    new_key,
)
from projections.privacy.fields import DEFAULT_PERSONAL_FIELDS, PersonalFields
from projections.privacy.keystore import KeyStore, KeyStoreLocked
from projections.privacy.vault import ENC, HASH, UNATTRIBUTED, Vault, is_sealed

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def master() -> bytes:
    return new_key()


@pytest.fixture
def vault(tmp_path: Path, master: bytes) -> Iterator[Vault]:
    keys = KeyStore(master, sqlite_path=tmp_path / "keys.sqlite")
    yield Vault(keys, PersonalFields.from_setting(""))
    keys.close()


def identify(user: str, **traits: object) -> TrackedEvent:
    return TrackedEvent(
        event_id=f"m-{user}",
        customer_key=user,
        call_type="identify",
        event_type=event_type_for("identify", "Identify"),
        event_name="Identify",
        timestamp=T0,
        received_at=T0,
        user_id=user,
        properties=dict(traits),
        context={"traits": {"email": traits.get("email"), "plan": "gold"}},
    )


def test_the_default_field_list_is_the_documented_one_and_a_setting_replaces_it() -> None:
    assert PersonalFields.from_setting("").names == frozenset(DEFAULT_PERSONAL_FIELDS)
    assert set(DEFAULT_PERSONAL_FIELDS) == {
        "email",
        "phone",
        "name",
        "first_name",
        "last_name",
        "address",
        "birthday",
    }
    custom = PersonalFields.from_setting(" email , tax_id,")
    assert custom.names == frozenset({"email", "tax_id"})
    assert "phone" not in custom


def test_an_event_is_sealed_field_by_field_and_opens_to_what_was_sent(vault: Vault) -> None:
    event = identify("u1", email="Alice@Example.com", phone="+33 6 12", plan="gold", age=41)
    sealed = vault.seal_event(event)
    payload = sealed.to_json()
    assert b"Alice" not in payload and b"+33 6 12" not in payload
    # Not personal: as sent, so analytics read them.
    assert sealed.properties["plan"] == "gold" and sealed.properties["age"] == 41
    assert sealed.context["traits"]["plan"] == "gold"
    assert is_sealed(sealed.properties["email"]) and is_sealed(sealed.context["traits"]["email"])
    # The ciphertext names its key: the customer id.
    assert key_id_of(sealed.properties["email"][ENC])[0] == "u1"
    assert vault.open_tree(sealed.properties) == event.properties
    assert vault.open_value(sealed.context["traits"]["email"]) == "Alice@Example.com"
    # Sealing again changes nothing: already sealed values are left alone.
    assert vault.seal_event(sealed).properties == sealed.properties


def test_values_keep_their_json_type_and_an_event_without_personal_fields_is_untouched(
    vault: Vault,
) -> None:
    event = identify("u2", address={"city": "Lyon", "zip": "69001"}, birthday="1990-04-02")
    sealed = vault.seal_event(event)
    assert vault.open_value(sealed.properties["address"]) == {"city": "Lyon", "zip": "69001"}
    plain = dataclasses.replace(event, properties={"sku": "a"}, context={})
    assert vault.seal_event(plain) is plain


def test_the_keyed_hash_is_stable_normalised_and_only_on_lookup_fields(vault: Vault) -> None:
    one = vault.seal_event(identify("u3", email="bob@shop.example", name="Bob"))
    two = vault.seal_event(identify("u4", email="  BOB@shop.example "))
    assert one.properties["email"][HASH] == two.properties["email"][HASH]
    assert one.properties["email"][HASH] == vault.lookup_hash("bob@shop.example")
    assert one.properties["email"][ENC] != two.properties["email"][ENC]
    assert HASH not in one.properties["name"]
    # The hash is keyed: not the plain SHA-256 anyone could compute.
    assert one.properties["email"][HASH] != hashlib.sha256(b"bob@shop.example").hexdigest()


def test_the_lookup_key_survives_a_reopen_so_hashes_stay_comparable(
    tmp_path: Path, master: bytes, vault: Vault
) -> None:
    before = vault.lookup_hash("carol@shop.example")
    again = KeyStore(master, sqlite_path=tmp_path / "keys.sqlite")
    try:
        assert Vault(again, vault.fields).lookup_hash("carol@shop.example") == before
    finally:
        again.close()


def test_erasing_a_customer_makes_their_values_open_to_none_and_leaves_others(
    vault: Vault,
) -> None:
    dana = vault.seal_event(identify("dana", email="dana@shop.example"))
    erin = vault.seal_event(identify("erin", email="erin@shop.example"))
    assert vault.erase(["dana"], 0.0) == 1
    assert vault.open_value(dana.properties["email"]) is None
    assert vault.open_value(erin.properties["email"]) == "erin@shop.example"
    assert vault.is_suppressed("dana") and not vault.is_suppressed("erin")
    # No key is created for them again: their later events are dropped, not sealed.
    kept, dropped = vault.seal_events([identify("dana", email="d2@shop.example")])
    assert kept == [] and [e.user_id for e in dropped] == ["dana"]
    with pytest.raises(CipherError):
        vault.seal_value("dana", "email", "again@shop.example")


def test_an_altered_ciphertext_does_not_open(vault: Vault) -> None:
    sealed = vault.seal_event(identify("fay", email="fay@shop.example")).properties["email"]
    raw = bytearray(base64.b64decode(sealed[ENC]))
    raw[-1] ^= 1
    with pytest.raises(CipherError):
        vault.open_value({ENC: base64.b64encode(bytes(raw)).decode()})


def test_a_dead_letter_keeps_only_its_triage_fields_readable(vault: Vault) -> None:
    body = {
        "type": "identify",
        "userId": "gus",
        "messageId": "m1",
        "traits": {"email": "gus@shop.example", "phone": 12},
    }
    sealed = orjson.loads(vault.seal_payload(orjson.dumps(body)))
    assert sealed["userId"] == "gus" and sealed["type"] == "identify"
    assert b"gus@shop" not in orjson.dumps(sealed)
    assert vault.open_value({ENC: sealed[ENC]}) == body
    batch = orjson.loads(vault.seal_payload(orjson.dumps({"batch": [body, 3]})))
    assert vault.open_tree(batch["batch"][0]) == body
    not_json = orjson.loads(vault.seal_payload(b"email=hal@shop.example"))
    assert b"hal@" not in orjson.dumps(not_json)
    assert key_id_of(not_json[ENC])[0] == UNATTRIBUTED
    assert vault.open_value(not_json) == "email=hal@shop.example"


def test_the_master_key_is_32_bytes_of_base64_and_another_one_does_not_open_the_store(
    tmp_path: Path, master: bytes, vault: Vault
) -> None:
    assert decode_master_key(encode_key(master)) == master
    with pytest.raises(ValueError, match="32 bytes"):
        decode_master_key(encode_key(b"short"))
    with pytest.raises(ValueError, match="base64"):
        decode_master_key("not base64!")
    with pytest.raises(KeyStoreLocked):
        KeyStore(new_key(), sqlite_path=tmp_path / "keys.sqlite")

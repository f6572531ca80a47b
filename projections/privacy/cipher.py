"""AES-256-GCM for values and for wrapping data keys; HMAC-SHA256 for lookups.

A sealed value is ``version | len(key id) | key id | nonce | ciphertext+tag``:
the key id (the customer id) travels with it, so any reader holding the vault
opens it without knowing whose it is, and is bound in as associated data, so a
value cannot be passed off as another customer's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
_VERSION = 1


class CipherError(ValueError):
    """A sealed value or wrapped key that does not open: wrong key, altered or malformed."""


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(KEY_BYTES)


def decode_master_key(text: str) -> bytes:
    """The master key from its base64 text; ValueError naming what is wrong."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as error:
        raise ValueError(f"the master key is not base64: {error}") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"the master key must be {KEY_BYTES} bytes, base64 (got {len(key)})")
    return key


def encode_key(key: bytes) -> str:
    """A key as base64 text (the master key file's content)."""
    return base64.b64encode(key).decode()


def wrap(master: bytes, key: bytes, key_id: str) -> bytes:
    """``key`` encrypted under ``master`` (bound to ``key_id``): nonce | ciphertext+tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master).encrypt(nonce, key, key_id.encode())


def unwrap(master: bytes, wrapped: bytes, key_id: str) -> bytes:
    """The key :func:`wrap` wrapped; CipherError under any other master key."""
    try:
        return AESGCM(master).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], key_id.encode())
    except (InvalidTag, ValueError) as error:
        raise CipherError(f"the data key of {key_id!r} does not open under this master key") from (
            error
        )


def seal(aead: AESGCM, key_id: str, plain: bytes) -> str:
    """``plain`` encrypted with the customer's data key, as base64 text."""
    ident = key_id.encode()
    nonce = os.urandom(NONCE_BYTES)
    body = aead.encrypt(nonce, plain, ident)
    head = bytes([_VERSION]) + len(ident).to_bytes(2, "big") + ident
    return base64.b64encode(head + nonce + body).decode()


def key_id_of(sealed: str) -> tuple[str, bytes, bytes]:
    """The key id, the nonce and the ciphertext of a sealed value; CipherError if malformed."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        if raw[0] != _VERSION:
            raise CipherError(f"unknown sealed-value version {raw[0]}")
        length = int.from_bytes(raw[1:3], "big")
        ident = raw[3 : 3 + length].decode()
    except (binascii.Error, IndexError, UnicodeDecodeError, TypeError) as error:
        raise CipherError(f"not a sealed value: {error}") from None
    rest = raw[3 + length :]
    if len(rest) <= NONCE_BYTES:
        raise CipherError("not a sealed value: too short")
    return ident, rest[:NONCE_BYTES], rest[NONCE_BYTES:]


def open_sealed(aead: AESGCM, key_id: str, nonce: bytes, body: bytes) -> bytes:
    """What :func:`seal` sealed (its parts from :func:`key_id_of`); CipherError if altered."""
    try:
        return aead.decrypt(nonce, body, key_id.encode())
    except InvalidTag:
        raise CipherError(f"a value of {key_id!r} does not open: altered or another key") from None


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of ``value`` normalised (trimmed, lower-case), hex: equal for equal values."""
    return hmac.new(key, value.strip().lower().encode(), hashlib.sha256).hexdigest()

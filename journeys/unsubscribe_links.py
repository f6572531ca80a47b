"""Signed one-click unsubscribe links (RFC 8058): who and which channel, unforgeable.

A token is ``u1.<payload>.<signature>``: the payload is base64url of the JSON
``[customer key, channel]``, the signature base64url of the HMAC-SHA256 of
``u1.<payload>`` under a key only the platform holds (stack/outreach.py). So a
link names one customer and one channel, and changing either (or the
signature) makes it invalid; nobody without the key can make one. Links do not
expire: RFC 8058 expects an unsubscribe link in an old message to keep working.

Pure: the key and the base URL are handed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson

VERSION = "u1"
MAX_TOKEN = 2048
# The route that takes the link (api/unsubscribe.py), under the platform's public URL.
PATH = "/v1/unsubscribe/"


class BadToken(ValueError):
    """Not a link this platform made: ``rule`` says which check failed."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Unsubscription:
    """What a valid link names."""

    customer_key: str
    channel: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Makes and checks the links; ``base_url`` is where customers reach the platform."""

    key: bytes = field(repr=False)
    base_url: str

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("the unsubscribe signing key must be at least 16 bytes")

    def _signature(self, signed: str) -> bytes:
        return hmac.new(self.key, signed.encode(), hashlib.sha256).digest()

    def token(self, customer_key: str, channel: str) -> str:
        """The signed token naming ``customer_key`` and ``channel``."""
        payload = _b64(orjson.dumps([customer_key, channel]))
        signed = f"{VERSION}.{payload}"
        return f"{signed}.{_b64(self._signature(signed))}"

    def url(self, customer_key: str, channel: str) -> str:
        """The https link a message carries (``List-Unsubscribe``, ``{{ unsubscribe_url }}``)."""
        token = quote(self.token(customer_key, channel), safe="")
        return f"{self.base_url.rstrip('/')}{PATH}{token}"

    def verify(self, token: str) -> Unsubscription:
        """What the token names; raises BadToken (format, version, signature)."""
        if len(token) > MAX_TOKEN:
            raise BadToken("format", f"longer than {MAX_TOKEN} characters")
        parts = token.split(".")
        if len(parts) != 3:
            raise BadToken("format", "not an unsubscribe token (version.payload.signature)")
        version, payload, signature = parts
        if version != VERSION:
            raise BadToken("version", f"unknown token version {version!r}")
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            raise BadToken("format", "the signature is not base64url") from None
        if not hmac.compare_digest(given, self._signature(f"{version}.{payload}")):
            raise BadToken("signature", "the signature does not match: altered or forged link")
        try:
            customer_key, channel = orjson.loads(_unb64(payload))
        except (binascii.Error, ValueError, TypeError):
            # Signed by us but unreadable: only a bug could make one.
            raise BadToken("format", "the payload is not [customer, channel]") from None
        if not isinstance(customer_key, str) or not isinstance(channel, str):
            raise BadToken("format", "the payload is not [customer, channel]")
        return Unsubscription(customer_key, channel)

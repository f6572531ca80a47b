"""The signed unsubscribe links: round trip, and every alteration or forgery refused."""

from __future__ import annotations

import asyncio
import base64
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

import pytest
from pydantic import ValidationError

from journeys.flows.templates import MessageTemplate, compile_template
from journeys.unsubscribe_links import PATH, BadToken, UnsubscribeLinks
from stack.settings import Settings
from streams.outreach import channels

KEY = b"k" * 32
LINKS = UnsubscribeLinks(KEY, "https://mail.shop.example/journeys/")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_link_names_the_customer_and_channel_it_was_made_for() -> None:
    for customer, channel in [("u1", "email"), ("anon:ä/ö?&=.", "webhook"), ("", "email")]:
        named = LINKS.verify(LINKS.token(customer, channel))
        assert (named.customer_key, named.channel) == (customer, channel)
    url = LINKS.url("u1", "email")
    assert url.startswith("https://mail.shop.example/journeys" + PATH)
    token = unquote(url.rsplit("/", 1)[1])
    assert LINKS.verify(token).customer_key == "u1"
    assert LINKS.token("u1", "email") != LINKS.token("u2", "email")
    assert LINKS.token("u1", "email") != LINKS.token("u1", "webhook")


def _refused(token: str) -> str:
    with pytest.raises(BadToken) as refused:
        LINKS.verify(token)
    return refused.value.rule


def test_an_altered_or_forged_token_is_refused_naming_the_rule() -> None:
    version, payload, signature = LINKS.token("u1", "email").split(".")
    other_payload = LINKS.token("u2", "email").split(".")[1]
    # Another customer's payload under this signature: altered.
    assert _refused(f"{version}.{other_payload}.{signature}") == "signature"
    # The signature changed by one character.
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert _refused(f"{version}.{payload}.{flipped}") == "signature"
    # Made with another key: forged.
    forged = UnsubscribeLinks(b"x" * 32, "https://evil.example").token("u1", "email")
    assert _refused(forged) == "signature"
    # Hand-made payload with an empty or made-up signature.
    made_up = _b64(b'["u1","email"]')
    assert _refused(f"u1.{made_up}.") == "signature"
    assert _refused(f"u1.{made_up}.{_b64(b'0' * 32)}") == "signature"
    assert _refused(f"u2.{payload}.{signature}") == "version"
    assert _refused("not-a-token") == "format"
    assert _refused(f"{version}.{payload}.{signature}.x") == "format"
    assert _refused(f"{version}.{payload}.{signature}!") == "format"
    assert _refused("u1." + "a" * 3000 + ".b") == "format"


def test_a_short_key_and_a_plain_http_public_url_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        UnsubscribeLinks(b"short", "https://x.example")
    with pytest.raises(ValidationError, match="https"):
        Settings(public_url="http://shop.example")
    with pytest.raises(ValidationError, match="16 bytes"):
        Settings(unsubscribe_secret="short")
    assert Settings(public_url="http://localhost:8000/").public_base_url == "http://localhost:8000"
    assert Settings(api_port=8123).public_base_url == "http://127.0.0.1:8123"


def test_templates_may_use_the_link() -> None:
    template = compile_template("Stop: {{ unsubscribe_url }}")
    assert isinstance(template, MessageTemplate)
    assert template.render({"unsubscribe_url": "https://u"}) == "Stop: https://u"


def test_every_email_carries_the_one_click_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[EmailMessage] = []

    def keep(host: str, port: int, message: EmailMessage, timeout_s: float) -> None:
        sent.append(message)

    monkeypatch.setattr(channels, "_send_mail", keep)
    url = LINKS.url("u1", "email")
    rule: dict[str, Any] = {"trigger_id": "t1", "rule": "birthday", "customer_id": "u1"}
    for trigger in (rule, {**rule, "trigger": "flow", "subject": "s", "body": "b"}):
        outcome = asyncio.run(
            channels.send_email(
                "h", 25, "from@x", {**trigger, "email": "u1@x", "unsubscribe_url": url}, 1
            )
        )
        assert outcome.ok
    assert [m["List-Unsubscribe"] for m in sent] == [f"<{url}>"] * 2
    assert [m["List-Unsubscribe-Post"] for m in sent] == ["List-Unsubscribe=One-Click"] * 2
    # On the wire as written, not folded into encoded words a mail client cannot read.
    for message in sent:
        assert f"List-Unsubscribe: <{url}>\n".encode() in bytes(message)

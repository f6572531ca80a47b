"""Delivery channels: signed webhook POSTs (httpx) and e-mail (SMTP).

One attempt per call; the caller decides about retries from the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

SIGNATURE_HEADER = "X-Journeys-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# RFC 8058 one-click unsubscribe: the mailbox provider POSTs this body to the link.
ONE_CLICK = "List-Unsubscribe=One-Click"
# Header lines up to RFC 5322's limit: folded at 78, a long link came out as RFC 2047
# encoded words (=?utf-8?q?=3Chttps…), which no mail client reads as a List-Unsubscribe.
_MAIL_POLICY = policy.default.clone(max_line_length=998)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` (the signature header)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    """What a receiver does: recompute the signature and check the timestamp is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went: ``ok``, or whether to retry, and after how long at least."""

    ok: bool
    retryable: bool
    error: str | None = None
    retry_after_s: float | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


async def post_webhook(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    trigger: dict[str, Any],
    attempt: int,
    timeout_s: float,
) -> Attempt:
    """POST the trigger, signed, with its idempotency key; classify the answer."""
    body = orjson.dumps(trigger)
    headers = {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
        IDEMPOTENCY_HEADER: str(trigger["trigger_id"]),
        "X-Journeys-Trigger-Id": str(trigger["trigger_id"]),
        "X-Journeys-Attempt": str(attempt),
        "user-agent": "customer-journeys-outreach/0.1",
    }
    try:
        response = await client.post(url, content=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException as error:
        return Attempt(False, True, f"timeout after {timeout_s}s: {type(error).__name__}")
    except httpx.HTTPError as error:
        return Attempt(False, True, f"{type(error).__name__}: {error}")
    if response.is_success:
        return Attempt(True, False)
    problem = f"HTTP {response.status_code}: {response.text[:200]}"
    if response.status_code == 429 or response.status_code >= 500:
        return Attempt(False, True, problem, _retry_after(response.headers.get("retry-after")))
    # Other 4xx: the receiver refuses this request; sending it again will not help.
    return Attempt(False, False, problem)


def _send_mail(host: str, port: int, message: EmailMessage, timeout_s: float) -> None:
    with smtplib.SMTP(host, port, timeout=timeout_s) as smtp:
        smtp.send_message(message)


async def send_email(
    host: str, port: int, sender: str, trigger: dict[str, Any], timeout_s: float
) -> Attempt:
    """Mail the trigger to the customer's address over SMTP (with its unsubscribe link)."""
    recipient = trigger.get("email")
    if not recipient:
        return Attempt(False, False, "the customer has no e-mail address (identify traits.email)")
    message = EmailMessage(policy=_MAIL_POLICY)
    message["From"] = sender
    message["To"] = recipient
    # A flow's message was rendered from its templates; a rule's trigger is sent as data.
    flow_message = trigger.get("trigger") == "flow"
    message["Subject"] = (
        str(trigger.get("subject") or "")
        if flow_message
        else f"[{trigger['rule']}] for {trigger['customer_id']}"
    )
    message["Message-ID"] = f"<{trigger['trigger_id']}@customer-journeys>"
    message[IDEMPOTENCY_HEADER] = str(trigger["trigger_id"])
    unsubscribe_url = trigger.get("unsubscribe_url")
    if unsubscribe_url:
        # The signed link naming this customer and channel (journeys/unsubscribe_links.py).
        message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = ONE_CLICK
    message.set_content(
        str(trigger.get("body") or "")
        if flow_message
        else orjson.dumps(trigger, option=orjson.OPT_INDENT_2).decode()
    )
    try:
        await asyncio.to_thread(_send_mail, host, port, message, timeout_s)
    except smtplib.SMTPResponseException as error:
        # 4yz is a temporary failure in SMTP; 5yz is final.
        return Attempt(False, 400 <= error.smtp_code < 500, f"SMTP {error.smtp_code}")
    except (OSError, smtplib.SMTPException) as error:
        return Attempt(False, True, f"{type(error).__name__}: {error}")
    return Attempt(True, False)

"""One-click unsubscribe (RFC 8058): the signed link every message carries.

Public (no key: the customer, or their mailbox provider, follows the link), but
only a token this platform signed is taken (journeys/unsubscribe_links.py):
it names the customer and the channel, and cannot be forged or altered.

- ``GET`` shows a confirmation page and changes nothing (mail scanners and
  link previews open links);
- ``POST`` (the provider's ``List-Unsubscribe=One-Click``, or the page's
  button) records an ``Unsubscribed`` track event through the ingest path —
  sealed, on the broker, in the journey and the event log — so the flows'
  consent sees it exactly as a storefront's ``Unsubscribed``.

A bad token is a 400 naming the rule (format, version, signature).
"""

from __future__ import annotations

import html
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from api.auth import GatewayDep
from api.errors import error_responses, problem
from api.ingest import publish
from events.segment import RejectedCall, TrackCall, accept_call
from journeys.unsubscribe_links import BadToken, UnsubscribeLinks, Unsubscription

# The write-key source the events are recorded under (their key: unsubscribe/<messageId>).
SOURCE = "unsubscribe"
EVENT = "Unsubscribed"
ANONYMOUS = "anon:"

router = APIRouter(
    prefix="/v1/unsubscribe",
    tags=["consent"],
    responses=error_responses(400, 503),
)
Token = Annotated[str, Path(description="the signed token of the link", max_length=2048)]


def _checked(links: UnsubscribeLinks | None, token: str) -> Unsubscription | Response:
    if links is None:
        return problem(503, "unsubscribe links are not configured in this process")
    try:
        return links.verify(token)
    except BadToken as error:
        reason = {"field": "token", "rule": error.rule, "message": str(error)}
        return problem(400, f"token: not a valid unsubscribe link: {error}", [reason])


def _page(title: str, text: str, form: bool) -> HTMLResponse:
    button = (
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
        if form
        else ""
    )
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{button}</body></html>"
    )


def _channel_name(channel: str) -> str:
    return "e-mail" if channel == "email" else channel


_PAGE: dict[int | str, dict[str, Any]] = {
    200: {"description": "An HTML page", "content": {"text/html": {}}}
}


@router.get("/{token}", summary="Confirm an unsubscribe", responses=_PAGE)
async def confirm(token: Token, gateway: GatewayDep) -> Response:
    """A page asking to confirm; nothing is recorded until it is POSTed."""
    checked = _checked(gateway.unsubscribe, token)
    if isinstance(checked, Response):
        return checked
    return _page(
        "Unsubscribe",
        f"Stop receiving messages by {_channel_name(checked.channel)}?",
        form=True,
    )


@router.post("/{token}", summary="Unsubscribe (one click)", responses=_PAGE)
async def unsubscribe(token: Token, request: Request, gateway: GatewayDep) -> Response:
    """Record ``Unsubscribed`` for the customer and channel the token names."""
    checked = _checked(gateway.unsubscribe, token)
    if isinstance(checked, Response):
        return checked
    body = (await request.body())[:256].decode("utf-8", "replace")
    key = checked.customer_key
    who = {"anonymousId": key[len(ANONYMOUS) :]} if key.startswith(ANONYMOUS) else {"userId": key}
    call = {
        "type": "track",
        "event": EVENT,
        **who,
        # A fresh id: unsubscribing again after subscribing again is a new event.
        "messageId": str(uuid.uuid4()),
        "properties": {
            "channel": checked.channel,
            "method": "one_click" if "One-Click" in body else "link",
        },
    }
    try:
        event = accept_call(TrackCall, call, datetime.now(UTC), SOURCE)
    except RejectedCall as error:
        # A key too long or odd for a call: the link is ours, the customer is not callable.
        return problem(400, "token: names a customer that cannot be recorded", error.problems)
    failed = await publish(gateway, [event])
    if failed is not None:
        return failed
    return _page(
        "Unsubscribed",
        f"You will no longer receive messages by {_channel_name(checked.channel)}.",
        form=False,
    )

"""A synthetic marketing tool: an HTTP endpoint that accepts outreach webhooks.

The demo subscribes it so that fired triggers have somewhere to go and the
trigger log shows real delivery states. It answers 204 to every POST and
keeps the bodies it received (for tests and for curiosity).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookInbox:
    """Listens on ``127.0.0.1`` (a free port unless given) until :meth:`close`."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        inbox = self

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                """Keep the body (JSON, or the text when it is not) and answer 204."""
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    inbox.received.append(json.loads(body))
                except ValueError:
                    inbox.received.append({"unparsed": body.decode(errors="replace")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo prints its own progress."""

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where to POST."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/journeys"

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()

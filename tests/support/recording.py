"""Recording HTTP peers for tests: what a request carried (method, path, headers), kept.

The compute agent's service-token tests put these between the services (a fake peer that
answers, tests/compute/test_service_tokens.py; a proxy to the real one,
tests/test_compute_keystone.py) to see which tokens each call sends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    """One request as it arrived (header names lower-cased), and what it was answered."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class RecordingServer:
    """A threaded HTTP server on a free loopback port; subclasses give the handler."""

    # keyword-only: subclasses declare their own positional fields
    seen: list[Seen] = field(default_factory=list, kw_only=True)
    _httpd: ThreadingHTTPServer | None = field(default=None, kw_only=True)

    def record(self, handler: BaseHTTPRequestHandler) -> Seen:
        seen = Seen(handler.command, handler.path,
                    {k.lower(): v for k, v in handler.headers.items()})
        self.seen.append(seen)
        return seen

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # a short poll interval: shutdown() waits for the loop to look
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

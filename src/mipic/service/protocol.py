"""uvicorn's httptools protocol with the limits it lacks (it reads headers of any size, and arms no timer
before a connection's first request).

- A request head (request line and headers) over ``max_bytes``, or with more than ``max_count`` header
  lines, is answered 431 and the connection closed, before the app sees anything.
- A connection must deliver a complete request head within ``timeout_s`` of opening, or of starting its
  next request; otherwise it is closed (408 if part of a head had arrived). That bounds connections
  that never send a request and slow-loris heads. Idle keep-alive connections after a response are
  closed by uvicorn's own ``timeout_keep_alive``.
- Malformed HTTP gets a JSON 400 instead of uvicorn's plain-text one.

Every rejection is reported through ``on_error(code)``, so ``mipic_errors_total`` counts it.
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mipic.service.api.errors import error_body


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int = 16384
    max_count: int = 100
    timeout_s: float = 10.0
    on_error: Callable[[str], None] | None = None


class _HeadRejected(Exception):
    """Raised in a parser callback to stop parsing; :meth:`LimitedHttpProtocol.send_400_response` answers."""


class LimitedHttpProtocol(HttpToolsProtocol):
    limits = HeadLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_raw = 0  # bytes received while the current head is incomplete (a memory bound)
        self._head_size = 0  # exact size of the URL and the complete header lines parsed so far
        self._head_count = 0
        self._in_head = True
        self._head_started = False  # the parser has seen the start of a request
        self._rejection: tuple[int, str, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ head size and count

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_raw += len(data)
        super().data_received(data)
        # A single header line that never ends is still buffered by the parser: bound what it holds.
        if (self._in_head and self._rejection is None and not self.transport.is_closing()
                and max(self._head_raw, self._head_size) > self.limits.max_bytes):
            self._reject_head_size()
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_raw = self._head_size = self._head_count = 0
        self._in_head = self._head_started = True
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)
        if self._head_size > self.limits.max_bytes:
            self._reject_head_size()
            raise _HeadRejected()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        self._head_count += 1
        if self._head_count > self.limits.max_count:
            self._rejection = (431, "header_fields_too_large",
                               f"more than {self.limits.max_count} request header lines")
            raise _HeadRejected()
        if self._head_size > self.limits.max_bytes:
            self._reject_head_size()
            raise _HeadRejected()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = self._head_started = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def _reject_head_size(self) -> None:
        self._rejection = (431, "header_fields_too_large",
                           f"request line and headers exceed {self.limits.max_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this when the parser fails, which a limit above makes it do on purpose."""
        status, code, message = self._rejection or (400, "invalid_http", "malformed HTTP request")
        self._send_error(status, code, message)

    # ------------------------------------------------------------------ head timeout

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._head_started:  # never started a request: nobody to answer
            self.transport.close()
            return
        self._send_error(408, "request_timeout",
                         f"request line and headers not received within {self.limits.timeout_s:g} s")

    # ------------------------------------------------------------------ answers

    def _send_error(self, status: int, code: str, message: str) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        body = json.dumps(error_body(message, "invalid_request_error", code, None)).encode()
        head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii")
        self.transport.write(head + body)
        self.transport.close()
        if self.limits.on_error is not None:
            self.limits.on_error(code)


def limited_protocol(limits: HeadLimits) -> type[LimitedHttpProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits (uvicorn instantiates it)."""
    return cast(type[LimitedHttpProtocol], type("MipicHttpProtocol", (LimitedHttpProtocol,), {"limits": limits}))

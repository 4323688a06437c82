"""HTTP limits of the real server protocol (uvicorn + mipic's limited protocol, on loopback): oversized or
too many request headers get 431, a connection that never sends a request is closed, a stalled head gets
408, idle keep-alive connections are closed, malformed HTTP gets JSON 400; each is counted."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from tests.conftest import free_port

from mipic.service.app import create_app
from mipic.service.server import uvicorn_config
from mipic.service.settings import Settings

HEAD_TIMEOUT_S = 0.5
KEEP_ALIVE_S = 1


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    settings = Settings(model_dir=tiny_model_dir, provider="cpu", bootstrap_default=False, port=port,  # type: ignore[arg-type]
                        max_header_bytes=4096, max_header_count=20, request_head_timeout_s=HEAD_TIMEOUT_S,
                        keep_alive_timeout_s=KEEP_ALIVE_S, log_level="warning")
    srv = uvicorn.Server(uvicorn_config(create_app(settings), settings, configure_logging=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield port, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=30)


def _exchange(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send ``raw``, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _parse(response: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _errors(url: str, code: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(f'mipic_errors_total{{code="{code}",endpoint="other"}}'):
            return float(line.split()[-1])
    return 0.0


def test_headers_over_the_byte_limit_get_431(server: tuple[int, str]) -> None:
    port, url = server
    before = _errors(url, "header_fields_too_large")
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    status, headers, body = _parse(_exchange(port, raw))
    assert status == 431 and headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert body["error"]["code"] == "header_fields_too_large"  # type: ignore[index]
    assert "4096 bytes" in body["error"]["message"]  # type: ignore[index]
    # just under the limit is fine
    ok = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 3900 + b"\r\n\r\n"
    assert _exchange(port, ok).startswith(b"HTTP/1.1 200")
    assert _errors(url, "header_fields_too_large") == before + 1
    assert httpx.get(url + "/health").status_code == 200


def test_too_many_header_lines_get_431(server: tuple[int, str]) -> None:
    port, _ = server
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(25))
    status, _, body = _parse(_exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"))
    assert status == 431 and "more than 20 request header lines" in body["error"]["message"]  # type: ignore[index]
    few = b"".join(b"X-H%d: v\r\n" % i for i in range(15))
    assert _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + few + b"\r\n").startswith(
        b"HTTP/1.1 200")


def test_an_endless_header_is_cut_off_early(server: tuple[int, str]) -> None:
    """16 MB of one header line: the server answers/closes after a few KB, not after reading it all."""
    port, url = server
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            for _ in range(256):
                s.sendall(b"b" * 65536)
                sent += 65536
        except OSError:  # the server closed the connection: broken pipe / reset
            pass
        try:
            reply = s.recv(65536)
        except OSError:
            reply = b""
    assert sent < 16 * 2**20, "the server kept reading a 16 MB header"
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431")
    assert httpx.get(url + "/health").status_code == 200


def test_a_connection_that_never_sends_a_request_is_closed(server: tuple[int, str]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        assert s.recv(1024) == b""  # closed by the server, nothing sent
        waited = time.monotonic() - t0
    assert HEAD_TIMEOUT_S - 0.1 <= waited < HEAD_TIMEOUT_S + 2


def test_a_stalled_request_head_gets_408(server: tuple[int, str]) -> None:
    port, url = server
    before = _errors(url, "request_timeout")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")  # ... and nothing more (slow-loris)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        waited = time.monotonic() - t0
    status, _, body = _parse(reply)
    assert status == 408 and body["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert HEAD_TIMEOUT_S - 0.1 <= waited < HEAD_TIMEOUT_S + 2
    assert _errors(url, "request_timeout") == before + 1


def test_idle_keep_alive_connections_are_closed(server: tuple[int, str]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(65536) == b""
        waited = time.monotonic() - t0
    assert KEEP_ALIVE_S - 0.2 <= waited < KEEP_ALIVE_S + 2


def test_malformed_http_gets_a_json_400(server: tuple[int, str]) -> None:
    port, url = server
    before = _errors(url, "invalid_http")
    status, _, body = _parse(_exchange(port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400 and body["error"]["code"] == "invalid_http"  # type: ignore[index]
    assert _errors(url, "invalid_http") == before + 1

"""Backends that misbehave at the socket level (real TCP servers written for the purpose): one
that accepts and never answers, streams that break off or stall mid-way, oversized bodies."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest


class RawServer:
    """A loopback TCP server whose connections are handled by `behave(conn)` in threads."""

    def __init__(self, behave) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.behave, self.open = behave, []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(conn)
            threading.Thread(target=self.behave, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


def hang(conn: socket.socket) -> None:
    """Accept, read the request, never answer (a hung process or a network partition)."""
    conn.recv(65536)


def stream_then(fault: str):
    """Answer 200 with a chunked SSE stream of two events, then close or stall mid-stream."""
    def behave(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for text in ("Half", " an answer"):
            event = b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n"
            conn.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        if fault == "close":
            conn.close()  # no terminating chunk: the body is incomplete
        else:
            time.sleep(30)
    return behave


@pytest.fixture
def raw_servers():
    servers = []

    def start(behave):
        servers.append(RawServer(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def ask(url, content, stream=False, **extra):
    return httpx.post(url + "/v1/chat/completions", timeout=30, json={
        "model": "m", "temperature": 0, "stream": stream, "messages": [{"role": "user", "content": content}], **extra})


async def test_a_backend_that_never_answers_times_out_and_the_next_one_serves(
        raw_servers, sim_backend, start_controller, redis_client):
    hung = raw_servers(hang)
    ctl = start_controller([hung.url, sim_backend], upstream_timeout=3.0)
    t0 = time.monotonic()
    first = ask(ctl.url, "Who discovered penicillin?")
    waited = time.monotonic() - t0
    assert first.status_code == 200 and first.headers["x-backend"] == sim_backend
    assert 3.0 <= waited < 30
    t0 = time.monotonic()
    second = ask(ctl.url, "Who discovered radium?")
    assert second.headers["x-backend"] == sim_backend and time.monotonic() - t0 < 3.0  # hung one sits out
    assert 'adaptive_upstream_errors_total{backend="%s"} 1.0' % hung.url in httpx.get(ctl.url + "/metrics").text


@pytest.mark.parametrize("fault", ["close", "stall"])
async def test_a_stream_that_breaks_off_ends_with_an_error_event_and_is_not_cached(
        raw_servers, start_controller, redis_client, fault):
    broken = raw_servers(stream_then(fault))
    ctl = start_controller([broken.url], upstream_timeout=1.0)
    reply = ask(ctl.url, "Tell me about the Danube", stream=True)
    assert reply.status_code == 200 and reply.headers["x-cache"] == "MISS"
    events = [e[6:] for e in reply.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == ["Half", " an answer"]
    error = json.loads(events[-2])["error"]
    assert error["code"] == 502 and "mid-stream" in error["message"]
    assert await redis_client.keys("va:doc:*") == []
    assert ctl.ctl.pool.backends[0].in_flight == 0  # the lease was released


async def test_oversized_bodies_get_413_and_store_nothing(sim_backend, start_controller, redis_client):
    ctl = start_controller([sim_backend], max_body_bytes=2048)
    big = ask(ctl.url, "x" * 4096)
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"

    def chunks():  # no content-length: the limit holds while streaming the body in
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 512
        yield b'"}]}'

    streamed = httpx.post(ctl.url + "/v1/chat/completions", content=chunks(), timeout=30)
    assert streamed.status_code == 413
    assert ask(ctl.url, "small enough").status_code == 200
    assert len(await redis_client.keys("va:doc:*")) == 1

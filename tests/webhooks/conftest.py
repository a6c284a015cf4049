"""A real HTTP receiver on 127.0.0.1 (threaded http.server) that answers as a test tells it, and
the settings that let webhooks reach it (allowlisted, short retry schedule)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """``answers``: the status of each request in turn (the last one repeats); ``delay``: seconds
    to wait before answering; ``location``: the Location header of a 3xx."""

    answers: list[int] = field(default_factory=lambda: [200])
    delay: float = 0.0
    location: str = ""
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self, port: int = 0) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # status line and body are two writes: no delayed-ACK stall between

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.monotonic()))
                    n = len(receiver.requests)
                    status = receiver.answers[min(n - 1, len(receiver.answers) - 1)]
                if receiver.delay:
                    time.sleep(receiver.delay)
                reply = f"answer {n}".encode()
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def make_receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        r = Receiver(**kw).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


@pytest.fixture(autouse=True)
def _webhook_settings(settings: Any) -> None:
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = ["127.0.0.1"]
    settings.MAILROOM_WEBHOOK_RETRY_SCHEDULE = [0, 0, 0, 0]
    settings.MAILROOM_WEBHOOK_TIMEOUT = 5.0

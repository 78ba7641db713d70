"""Fixtures: a real `idem demo` process, and a relay that loses answers."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

ROOT = Path(__file__).resolve().parents[3]


def idem_bin() -> str:
    path = os.environ.get("IDEM_BIN") or str(ROOT / "target" / "debug" / "idem")
    if not Path(path).exists():
        pytest.fail(f"the idem binary is not at {path}: build it (cargo build -p idem-gateway) or set IDEM_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"idem demo exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("idem demo did not start")


class Demo:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [idem_bin(), "--log", "warn", "demo", "--store", "memory://", "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"

    def payments(self) -> int:
        import requests

        return requests.get(f"{self.url}/payments", timeout=5).json()["count"]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class LossyLink:
    """A TCP relay that delivers requests but loses the first `lose` answers:
    it reads the server's answer and hangs up on the client."""

    def __init__(self, target_port: int, lose: int) -> None:
        self.lose = lose
        self.dropped = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.target = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        with self.lock:
            lose = self.lose > 0
            if lose:
                self.lose -= 1

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        if lose:
            if upstream.recv(65536):
                with self.lock:
                    self.dropped += 1
            # shutdown, not only close: the pump thread blocked in recv holds
            # the socket open, and the client would wait out its timeout.
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            return
        pump(upstream, client)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def demo() -> Iterator[Demo]:
    d = Demo()
    yield d
    d.stop()


@pytest.fixture
def slow_demo() -> Iterator[Demo]:
    d = Demo("--processing-delay", "800ms")
    yield d
    d.stop()


@pytest.fixture
def cases() -> List[dict]:
    import json

    return json.loads((ROOT / "clients" / "retry-cases.json").read_text())["cases"]


@pytest.fixture
def vectors() -> List[dict]:
    import json

    return json.loads((ROOT / "clients" / "content-keys.json").read_text(encoding="utf-8"))["vectors"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def always_503() -> Iterator[str]:
    """A server whose every answer is 503 with `Retry-After: 0` (its store is down)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = b'{"type":"urn:idem:problem:idempotency-store-unavailable","status":503}'
            self.send_response(503)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()

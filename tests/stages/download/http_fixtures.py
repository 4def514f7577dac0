"""A real HTTP server on 127.0.0.1 for the download tests and benchmark: real photos + hostile endpoints.

Every endpoint is bounded in time and bytes (``slow_s``, ``endless_s``, ``huge_bytes``), handler
threads are daemons, and ``stop()`` ends the loops still running, so no test can hang on the server.

Paths: /coco/<file>.jpg (the real COCO photos), /img/<n>.jpg (photo n modulo the set: as many
distinct URLs as a benchmark wants), /status/<code>, /slow, /endless (a body that drips until the
server's own deadline), /huge (a fast body without Content-Length), /huge-declared (a huge
Content-Length), /html, /truncated.jpg, /empty, /bomb.png (30000x30000), /redirect, /loop,
/redirect-unspecified (to 0.0.0.0, refused even when private networks are allowed),
/redirect-file (to file:///etc/passwd), /robots (X-Robots-Tag: noai), /robots-other-bot
(a noai aimed at another crawler), /flaky/<key> (503 the first time, the photo afterwards).
With ``tls=(certfile, keyfile)`` the same paths are served over https.
"""
from __future__ import annotations

import functools
import http.server
import pathlib
import struct
import threading
import time
import zlib
from collections import Counter


@functools.lru_cache(maxsize=1)
def bomb_png(side: int = 30000) -> bytes:
    """A valid side x side 1-bit grayscale PNG: ~112 MB of pixels zlib-compressed to ~110 KB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class FixtureServer:
    def __init__(self, coco_dir, slow_s: float = 3.0, endless_s: float = 15.0, huge_bytes: int = 64 << 20,
                 tls: tuple[str, str] | None = None):
        self.photos = sorted(pathlib.Path(coco_dir).glob("*.jpg"))
        if not self.photos:
            raise FileNotFoundError(f"no .jpg photos in {coco_dir}")
        self.photo_bytes = {p.name: p.read_bytes() for p in self.photos}
        self.names = [p.name for p in self.photos]
        self.slow_s, self.endless_s, self.huge_bytes = slow_s, endless_s, huge_bytes
        self.tls = tls  # (certfile, keyfile): serve https
        self.hits: Counter = Counter()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd = None
        self._thread = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "FixtureServer":
        bomb_png()  # built before serving: building it on the first request would look like a slow server
        server = self

        class Handler(_Handler):
            fixture = server

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 256  # many concurrent downloader threads; the default 5 drops SYNs
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        if self.tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            # handshake in the handler thread, not in the accept loop a silent client could block
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def count(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1

    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())


class _Handler(http.server.BaseHTTPRequestHandler):
    fixture: FixtureServer
    timeout = 30  # socket timeout for the server's own reads

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: C901 - one flat routing table reads best here
        fx, path = self.fixture, self.path.split("?", 1)[0]
        fx.count(path)
        photo0 = fx.photo_bytes[fx.names[0]]
        try:
            if path.startswith("/coco/") and path[6:] in fx.photo_bytes:
                self._send(200, fx.photo_bytes[path[6:]], "image/jpeg")
            elif path.startswith("/img/"):
                n = int(path[5:].split(".")[0])
                self._send(200, fx.photo_bytes[fx.names[n % len(fx.names)]], "image/jpeg")
            elif path.startswith("/status/"):
                self._send(int(path[8:]), b"error page", "text/plain")
            elif path == "/slow":
                fx.stopping.wait(fx.slow_s)
                self._send(200, photo0, "image/jpeg")
            elif path == "/endless":
                self._endless()
            elif path == "/huge":
                self._huge()
            elif path == "/huge-declared":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(10**10))
                self.end_headers()
                self.wfile.write(photo0[:1000])
            elif path == "/html":
                self._send(200, b"<!doctype html><html><body><h1>Not an image</h1></body></html>", "text/html")
            elif path == "/truncated.jpg":
                self._send(200, photo0[: len(photo0) // 2], "image/jpeg")
            elif path == "/empty":
                self._send(200, b"", "image/jpeg")
            elif path == "/bomb.png":
                self._send(200, bomb_png(), "image/png")
            elif path == "/redirect":
                self._redirect(f"/coco/{fx.names[1]}")
            elif path == "/loop":
                self._redirect("/loop")
            elif path == "/redirect-unspecified":
                self._redirect(f"http://0.0.0.0:{fx.port}/coco/{fx.names[0]}")
            elif path == "/redirect-file":
                self._redirect("file:///etc/passwd")
            elif path == "/robots":
                self._send(200, photo0, "image/jpeg", {"X-Robots-Tag": "noai"})
            elif path == "/robots-other-bot":
                self._send(200, photo0, "image/jpeg", {"X-Robots-Tag": "otherbot: noai"})
            elif path.startswith("/flaky/"):
                if fx.hits[path] <= 1:
                    self._send(503, b"try later", "text/plain")
                else:
                    self._send(200, photo0, "image/jpeg")
            else:
                self._send(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (that is what several endpoints are for)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless(self) -> None:
        """Headers, then a few bytes every 0.2 s (never idle long enough for a read timeout)."""
        fx = self.fixture
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        self.wfile.write(b"\xff\xd8")
        stop_at = time.monotonic() + fx.endless_s
        while time.monotonic() < stop_at and not fx.stopping.wait(0.2):
            self.wfile.write(b"\x00" * 16)
            self.wfile.flush()

    def _huge(self) -> None:
        """A body as fast as the socket takes it, no Content-Length, up to huge_bytes."""
        fx = self.fixture
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        block, sent = b"\x00" * (1 << 20), 0
        while sent < fx.huge_bytes and not fx.stopping.is_set():
            self.wfile.write(block)
            sent += len(block)

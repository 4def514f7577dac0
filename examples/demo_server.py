"""A tiny image server on 127.0.0.1 for the demo: serves a `winnow sample` pool's bytes by uid.

It lets the demo start from what a real run starts from — a list of (url, caption) pairs — and go
through the real download stage. It listens on loopback only and stops with the demo.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _content_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"


class ImageServer:
    """Serves ``images[uid]`` at ``/img/<uid>``; unknown uids are 404."""

    def __init__(self, images: dict[str, bytes]):
        self.images = images
        store = self.images

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                uid = self.path.rsplit("/", 1)[-1]
                data = store.get(uid)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", _content_type(data))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep the demo's output readable
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""The downloader's network policy, enforced where the bytes move: inside the HTTP connection.

img2dataset fetches with ``urllib.request.urlopen`` and lets urllib follow redirects, so checking
URLs up front is not enough (a public name can resolve to 10.0.0.1, a public page can redirect to
http://169.254.169.254/). Instead the download worker processes install an opener built here whose
connections

* resolve the host themselves, refuse the whole request if any resolved address is private,
  loopback, link-local (or never-routable) and then connect to the very address they checked, so a
  second DNS answer cannot swap it (every redirect hop opens a new connection and is checked again);
* carry a hard deadline per connection (a watchdog thread shuts the socket down), so a server that dribbles
  headers or a body forever cannot hold a thread past it;
* stop reading a body past ``max_bytes`` (Content-Length checked first, then the bytes counted);
* only speak http and https: no proxy, file, ftp or data handlers are installed, and redirects to
  other schemes are refused.

Errors carry a ``winnow:<reason>`` prefix so the stage can turn img2dataset's error strings back
into precise rejection reasons (see download_reasons.py). Standard library only: this module is imported
by the stage registry and must stay light.
"""
from __future__ import annotations

import functools
import heapq
import http.client
import ipaddress
import itertools
import os
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class NetworkPolicy:
    """What one download attempt may do; picklable, sent to the worker processes."""

    allow_private_networks: bool = False
    max_bytes: int = 0  # 0 = no limit
    deadline_s: float = 30.0  # per connection, from connect to the last body byte
    max_redirects: int = 10


class PolicyError(OSError):
    """A refusal by the policy; ``str()`` starts with ``winnow:<reason>`` for ``classify``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"winnow:{reason} {detail}")


def address_refusal(ip_text: str, allow_private_networks: bool) -> str | None:
    """Why a connection to ``ip_text`` is refused (None = allowed).

    Unspecified (0.0.0.0 reaches this host), multicast and reserved addresses are never image
    hosts and stay refused even with ``allow_private_networks``; that option opens loopback,
    private, link-local and other non-global ranges (tests use it to reach 127.0.0.1).
    """
    ip = ipaddress.ip_address(ip_text.split("%", 1)[0])
    if ip.version == 6:  # an IPv4 address wrapped in IPv6 is judged as that IPv4 address
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_reserved and not ip.is_loopback:  # ::1 sits inside IPv6's reserved ::/8
        return "reserved address"
    if allow_private_networks:
        return None
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_private:
        return "private address"
    if not ip.is_global:
        return "non-global address"
    return None


def resolve_checked(host: str, port: int, allow_private_networks: bool) -> list[tuple]:
    """getaddrinfo results for host:port, or PolicyError if any resolved address is refused.

    Refusing when *any* answer is internal (rather than skipping it) defeats names that mix a
    public and a private address to get past a check that looks at one of them.
    """
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        why = address_refusal(sockaddr[0], allow_private_networks)
        if why:
            raise PolicyError("refused_address", f"{host} resolves to {sockaddr[0]} ({why})")
    return infos


def _connect_checked(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *,
                     allow_private_networks: bool):
    """socket.create_connection, but only to addresses that passed the policy (no second lookup)."""
    host, port = address
    error = None
    for family, socktype, proto, _, sockaddr in resolve_checked(host, port, allow_private_networks):
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"cannot connect to {host}:{port}")


class _Deadline:
    """A connection's time limit; once armed, the watchdog shuts its socket down when time is up."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self.sock = None

    def start(self, sock) -> None:
        """Arm for ``sock`` (the socket reads go through, after any TLS wrapping)."""
        self.sock = sock
        _WATCHDOG.watch(self)

    def expire(self) -> None:
        if self.done:
            return
        self.expired = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def check(self) -> None:
        if self.expired or time.monotonic() > self.at:
            raise PolicyError("timeout", "download deadline exceeded")

    def cancel(self) -> None:
        self.done = True


class _Watchdog:
    """One thread per process expiring deadlines in time order (not a timer thread per request)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._count = itertools.count()
        self._pid = None

    def watch(self, deadline: _Deadline) -> None:
        with self._cond:
            if self._pid != os.getpid():  # first use in this process (a forked child has no thread)
                self._pid, self._heap = os.getpid(), []
                threading.Thread(target=self._run, name="winnow-download-deadlines", daemon=True).start()
            heapq.heappush(self._heap, (deadline.at, next(self._count), deadline))
            if self._heap[0][2] is deadline:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None)
                _, _, deadline = heapq.heappop(self._heap)
            deadline.expire()  # a cancelled (finished) one does nothing


_WATCHDOG = _Watchdog()


class BoundedResponse(http.client.HTTPResponse):
    """An HTTPResponse whose read() enforces max_bytes and the connection's deadline."""

    def __init__(self, sock, *args, max_bytes: int, deadline: _Deadline, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self._max_bytes = max_bytes
        self._deadline = deadline

    def read(self, amt=None):
        if amt is not None:
            return super().read(amt)
        if self._max_bytes and self.length is not None and self.length > self._max_bytes:
            raise PolicyError("too_large", f"Content-Length {self.length} > max_bytes {self._max_bytes}")
        chunks, total = [], 0
        while True:
            try:
                chunk = super().read(READ_CHUNK)
            except Exception:
                self._deadline.check()
                raise
            if not chunk:
                break
            total += len(chunk)
            if self._max_bytes and total > self._max_bytes:
                raise PolicyError("too_large", f"body exceeds max_bytes {self._max_bytes}")
            self._deadline.check()
            chunks.append(chunk)
        self._deadline.check()  # a shutdown by the timer looks like a clean end of body
        if self.length:  # http.client returns short bodies without complaint when read in chunks
            raise http.client.IncompleteRead(b"".join(chunks), self.length)
        return b"".join(chunks)

    def close(self):
        super().close()
        self._deadline.cancel()


class _GuardedConnection:
    """Mixin for HTTP(S)Connection: checked connect, deadline timer, bounded responses."""

    def _guard(self, policy: NetworkPolicy) -> None:
        self._deadline = _Deadline(policy.deadline_s)
        self._create_connection = functools.partial(
            _connect_checked, allow_private_networks=policy.allow_private_networks)
        self.response_class = functools.partial(BoundedResponse, max_bytes=policy.max_bytes,
                                                deadline=self._deadline)

    def connect(self):
        self._deadline.check()
        try:
            super().connect()
        except Exception:
            self._deadline.cancel()
            raise
        self._deadline.start(self.sock)

    def getresponse(self):
        # No close() override: http.client closes the connection as soon as a response that ends
        # with the connection arrives, while its body is still to be read under the deadline.
        try:
            return super().getresponse()
        except PolicyError:
            self._deadline.cancel()
            raise
        except Exception:
            self._deadline.cancel()
            self._deadline.check()
            raise


class GuardedHTTPConnection(_GuardedConnection, http.client.HTTPConnection):
    def __init__(self, *args, policy: NetworkPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self._guard(policy)


class GuardedHTTPSConnection(_GuardedConnection, http.client.HTTPSConnection):
    def __init__(self, *args, policy: NetworkPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self._guard(policy)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: NetworkPolicy):
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        return self.do_open(functools.partial(GuardedHTTPConnection, policy=self.policy), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: NetworkPolicy, context=None):
        super().__init__(context=context)
        self.policy = policy

    def https_open(self, req):
        return self.do_open(functools.partial(GuardedHTTPSConnection, policy=self.policy), req,
                            context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling (loop detection included), limited to http(s) targets."""

    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirections = max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urlsplit(newurl).scheme.lower()
        if scheme and scheme not in ALLOWED_SCHEMES:
            raise PolicyError("bad_scheme", f"redirect to a {scheme}: URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener(policy: NetworkPolicy, ssl_context=None) -> urllib.request.OpenerDirector:
    """An opener with only guarded http/https handlers: no proxies, files, ftp or data URLs.

    ``ssl_context`` defaults to the system's verified one (tests pass one trusting their own CA).
    """
    opener = urllib.request.OpenerDirector()
    for handler in (_HTTPHandler(policy), _HTTPSHandler(policy, ssl_context), _RedirectHandler(policy.max_redirects),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                    urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener

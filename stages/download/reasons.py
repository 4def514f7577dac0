"""Turning a URL or img2dataset's (status, error_message) into one precise rejection reason.

img2dataset reports a failure as free text (an exception's str()); winnow's own refusals carry a
``winnow:<reason>`` marker (see download_safety). The reasons are listed in docs/download.md.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from winnow.stages.download.safety import ALLOWED_SCHEMES


def scheme_refusal(url: str | None) -> str | None:
    """Reason for a URL the stage never hands to the downloader (None = try it)."""
    if url is None or not url.strip():
        return "no_url"
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "bad_url"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return "bad_scheme"
    if not parts.hostname:
        return "bad_url"
    return None


_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")


def classify(status: str | None, message: str | None) -> str | None:
    """img2dataset's (status, error_message) -> a precise rejection reason (None = success)."""
    if status == "success":
        return None
    msg = message or ""
    low = msg.lower()
    marker = re.search(r"winnow:([a-z_0-9]+)", msg)
    if marker:
        return marker.group(1)
    if "x-robots-tag" in low:
        return "robots_noai"
    if "can't contain control characters" in low or "codec can't encode" in low or "nonnumeric port" in low:
        return "bad_url"  # spaces or non-ASCII characters urllib will not send, a port that is not a number
    if "unknown url type" in low or ("redirection to url" in low and "not allowed" in low):
        return "bad_scheme"  # urllib refuses redirects to file: etc. before our handler sees them
    code = _HTTP_STATUS.search(msg)
    if code:
        c = int(code.group(1))
        if 300 <= c < 400:
            return "redirect_loop" if "infinite loop" in low else "http_3xx"
        return "http_5xx" if c >= 500 else f"http_{c}"
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if any(s in low for s in ("name or service not known", "nodename nor servname", "name resolution",
                              "no address associated", "getaddrinfo failed")):
        return "dns_error"
    if "connection refused" in low:
        return "connection_refused"
    if "ssl" in low or "certificate" in low:
        return "tls_error"
    if "incompleteread" in low or "incomplete read" in low:
        return "incomplete_body"
    if status == "failed_to_resize":
        return "decode_error"
    return "network_error" if msg else "no_result"

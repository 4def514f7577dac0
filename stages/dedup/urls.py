"""URL normalisation for exact dedup: two spellings of one address become one string.

``normalize_url`` is the reference (urllib, row by row); ``normalize_urls`` does a column, in Arrow for
the plain http(s) URLs that make up most of a pool and with the reference for the rest.
"""
from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def normalize_url(url: str, ignore_scheme: bool = True, strip_www: bool = True,
                  drop_params: list[str] | tuple[str, ...] = ()) -> str:
    """Canonical form of a URL for equality: case-folded scheme/host, default port, fragment and
    tracking parameters dropped, query sorted, percent-escapes normalised. Unparseable -> stripped text."""
    u = url.strip()
    try:
        p = urlsplit(u)
        host = (p.hostname or "").lower().rstrip(".")
        port = p.port
    except ValueError:
        return u
    scheme = p.scheme.lower()
    if port and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    if strip_www and host.startswith("www."):
        host = host[4:]
    path = quote(unquote(p.path), safe="/:@!$&'()*+,;=-._~") or "/"
    query = [(k, v) for k, v in parse_qsl(p.query, keep_blank_values=True) if not _dropped(k, drop_params)]
    q = urlencode(sorted(query))
    prefix = "//" if (ignore_scheme and scheme in ("http", "https")) or not scheme else f"{scheme}://"
    if not host:  # data:, mailto:, relative: nothing to canonicalise beyond the text
        return u.split("#", 1)[0]
    return f"{prefix}{host}{path}" + (f"?{q}" if q else "")


# URLs that normalize_url would only case-fold: http(s), a plain host, no port, no query, a path of
# characters percent-normalisation leaves alone. Most image URLs; done in Arrow, the rest in Python.
_SIMPLE_URL = (r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]*[A-Za-z0-9][A-Za-z0-9.-]*"
               r"(/[A-Za-z0-9/._~!$&'()*+,;=:@-]*)?(#.*)?$")


def normalize_urls(urls, ignore_scheme: bool = True, strip_www: bool = True,
                   drop_params: list[str] | tuple[str, ...] = ()) -> pa.Array:
    """``normalize_url`` over a column (null for null or blank URLs), vectorised for simple URLs."""
    arr = urls.combine_chunks() if isinstance(urls, pa.ChunkedArray) else urls
    arr = arr.cast(pa.string())
    simple = pc.fill_null(pc.match_substring_regex(arr, _SIMPLE_URL), False)
    parts = pc.extract_regex(pc.if_else(simple, arr, pa.scalar("http://x", pa.string())),
                             r"^(?P<scheme>[A-Za-z]+)://(?P<host>[^/#]+)(?P<path>[^#]*)")
    host = pc.replace_substring_regex(pc.utf8_lower(pc.struct_field(parts, "host")), r"\.+$", "")
    if strip_www:
        host = pc.replace_substring_regex(host, r"^www\.", "", max_replacements=1)
    path = pc.struct_field(parts, "path")
    path = pc.if_else(pc.equal(path, ""), pa.scalar("/"), path)
    prefix = (pa.scalar("//") if ignore_scheme
              else pc.binary_join_element_wise(pc.utf8_lower(pc.struct_field(parts, "scheme")), "://", ""))
    fast = pc.binary_join_element_wise(prefix, host, path, "")
    out = pc.if_else(simple, fast, pa.scalar(None, pa.string()))
    slow = np.flatnonzero(~simple.to_numpy(zero_copy_only=False))
    if len(slow):
        values = out.to_pylist()
        for i, u in zip(slow, arr.take(pa.array(slow)).to_pylist()):
            values[i] = normalize_url(u, ignore_scheme, strip_www, drop_params) if u and u.strip() else None
        out = pa.array(values, pa.string())
    return out


def _dropped(key: str, patterns) -> bool:
    k = key.lower()
    return any(k.startswith(p[:-1].lower()) if p.endswith("*") else k == p.lower() for p in patterns)

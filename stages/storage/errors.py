"""A store's failures as one line naming the URL and what went wrong in words (see the package docstring)."""
from __future__ import annotations

import contextlib
import errno
import re

import pyarrow.fs as pafs

from winnow.stages.errors import WinnowError
from winnow.stages.storage import paths
from winnow.stages.storage.paths import resolve, scheme


class StorageError(WinnowError, OSError):
    """A store's failure as one line naming the URL. Also an OSError, so code that handles an unreadable
    local file (``except OSError``) handles an unreadable object the same way. ``why`` is the reason
    alone, for a caller that names the path its own way (``error``)."""

    why = ""


def _failure(message: str, why: str) -> StorageError:
    exc = StorageError(message)  # one argument: OSError reads two as (errno, strerror)
    exc.why = why
    return exc


def _reasons() -> tuple:
    """(pattern, phrase) over the messages of Arrow's AWS SDK (UPPER_SNAKE error names, curl codes) and
    of S3 itself (CamelCase codes); the first match wins, so the specific ones come first."""
    gave_up = f"gave up after {paths.RETRIES} attempts"
    endpoint = paths.current().endpoint_url or "the S3 endpoint"
    return ((r"NoSuchBucket|NO_SUCH_BUCKET|bucket does not exist", "no such bucket"),
            (r"InvalidAccessKeyId|INVALID_ACCESS_KEY_ID|SignatureDoesNotMatch|SIGNATURE_DOES_NOT_MATCH|"
             r"InvalidToken|INVALID_TOKEN|ExpiredToken|EXPIRED_TOKEN|UNRECOGNIZED_CLIENT|AUTHENTICATION",
             "credentials refused"),
            (r"ACCESS_DENIED|AccessDenied|Forbidden|HTTP status 403", "access denied"),
            (r"curlCode: (6|7)\b|Could not connect|Couldn't connect|Connection refused|Could not resolve",
             f"cannot connect to {endpoint}; {gave_up}"),
            (r"curlCode: 28\b|Timeout was reached|REQUEST_TIMEOUT|RequestTimeout",
             f"{endpoint} did not answer within {paths.REQUEST_TIMEOUT} s; {gave_up}"),
            (r"NETWORK_CONNECTION", f"the connection to {endpoint} failed; {gave_up}"),  # reset, broken, ...
            (r"SLOW_DOWN|SlowDown|HTTP status 503\b|THROTTL|Throttl|SERVICE_UNAVAILABLE",
             f"HTTP 503: the store is throttling or unavailable; {gave_up}"),
            (r"HTTP status 5\d\d\b|INTERNAL_FAILURE|InternalError", f"the store failed (HTTP 5xx); {gave_up}"))


def reason(exc: BaseException) -> str:
    """A store's error as a short phrase: what went wrong in words, else the message's first line."""
    if isinstance(exc, StorageError) and exc.why:
        return exc.why
    text = str(exc)
    for pattern, phrase in _reasons():
        if re.search(pattern, text):
            return phrase
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def error(path: str, what: str, exc: BaseException) -> WinnowError:
    return _failure(f"{what} {path}: {reason(exc)}", reason(exc))


def _bucket_missing(path: str) -> bool:
    """True only when the store says the bucket of ``path`` does not exist (a HEAD on the bucket)."""
    if scheme(path) not in ("s3", "s3a", "gs", "gcs"):
        return False
    fs, p = resolve(path)
    try:
        return fs.get_file_info(p.split("/", 1)[0]).type == pafs.FileType.NotFound
    except OSError:
        return False


def _diagnosed(path: str, exc: OSError) -> str:
    """A HEAD refused has no body, so "403" may mean a bad key as well as no permission: a listing
    (whose refusal has a body with the error's name) tells which."""
    why = reason(exc)
    if why == "access denied" and "No response body" in str(exc):
        fs, p = resolve(path)
        try:
            fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
        except OSError as listing:
            return reason(listing) if reason(listing) == "credentials refused" else why
    return why


@contextlib.contextmanager
def _on_store(path: str, doing: str):
    """Around a call to a store: an OSError becomes one line naming the URL. A missing object stays
    FileNotFoundError (as a missing local file is), unless its bucket is what is missing."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        if _bucket_missing(path):
            raise _failure(f"{path}: cannot {doing} (no such bucket)", "no such bucket") from None
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
    except OSError as exc:
        why = _diagnosed(path, exc)
        raise _failure(f"{path}: cannot {doing} ({why})", why) from None


def _listed(path: str, entries: list) -> list:
    """An empty listing on a store may be a missing bucket: say so rather than list nothing."""
    if not entries and _bucket_missing(path):
        raise _failure(f"{path}: cannot list (no such bucket)", "no such bucket")
    return entries

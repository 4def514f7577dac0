"""One filesystem layer for every data path: local disk, ``s3://`` (and S3-compatible stores), ``gs://``,
and any fsspec URL (``hf://``, ``memory://``, ...) for reading.

Paths stay strings all the way through winnow (a local path or a URL), and every reader and writer of data
(inputs, run directories, exports, side datasets) calls this module instead of ``os``/``open``/``glob``.
It is built on ``pyarrow.fs``: Arrow's own S3/GCS clients are what winnow's Parquet reads and writes use
anyway (no second copy of the bytes through Python), they retry with bounded backoff, and fsspec
filesystems plug in through ``PyFileSystem(FSSpecHandler)`` for the schemes Arrow lacks.

Object stores have no rename. ``atomic_write`` writes a local temp file and then uploads it in one PUT
(a multipart upload completes atomically), so an object is either whole or absent; a completion marker
written after its piece is therefore the last object of that piece. Existence of a marker is asked of the
object itself (``exists``: a HEAD), never read from a listing.

Endpoints: ``configure(endpoint_url=...)`` (the pipeline's ``storage:`` key), else ``AWS_ENDPOINT_URL_S3``,
else ``AWS_ENDPOINT_URL``, as boto3 and the AWS CLI read them. Credentials come from the AWS chain
(environment, config files, instance role), which Arrow's AWS SDK walks itself.

Errors: a store that cannot be used raises ``StorageError`` (a WinnowError, and an OSError for code that
handles unreadable files): one line naming the URL and what went wrong in words (no such bucket,
credentials refused, access denied, cannot connect, throttled), after at most ``RETRIES`` attempts,
each bounded by ``CONNECT_TIMEOUT``/``REQUEST_TIMEOUT``. A missing object stays FileNotFoundError, as a
missing local file is.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob as globlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from winnow.stages.errors import WinnowError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Bounded: Arrow's standard AWS retry strategy backs off exponentially (with jitter, up to 1, 2, 4, 8 s)
# between attempts, so a throttled or failing store gives up after RETRIES attempts and ~15 s.
RETRIES = 5
CONNECT_TIMEOUT = 10  # seconds: a closed port fails at once; an address that drops packets, after this
REQUEST_TIMEOUT = 60  # seconds one request may go unanswered before it counts as a failed attempt


class StorageError(WinnowError, OSError):
    """A store's failure as one line naming the URL. Also an OSError, so code that handles an unreadable
    local file (``except OSError``) handles an unreadable object the same way. ``why`` is the reason
    alone, for a caller that names the path its own way (``error``)."""

    why = ""


def _failure(message: str, why: str) -> StorageError:
    exc = StorageError(message)  # one argument: OSError reads two as (errno, strerror)
    exc.why = why
    return exc


@dataclass(frozen=True)
class Settings:
    """What a process needs to reach the stores; shipped to Ray workers with the work (``apply``)."""

    endpoint_url: str = ""
    region: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


_settings = Settings()
_filesystems: dict[tuple, pafs.FileSystem] = {}


def configure(endpoint_url: str = "", region: str = "") -> Settings:
    """Set this process's store settings (empty values fall back to the AWS environment variables)."""
    global _settings
    _settings = Settings(endpoint_url or "", region or "")
    _filesystems.clear()
    return _settings


def current() -> Settings:
    """The settings in force, the environment's endpoint resolved in, so a worker gets the driver's view."""
    env = os.environ
    endpoint = _settings.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL", "")
    return Settings(endpoint, _settings.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION", ""))


def apply(settings: Settings) -> None:
    """On a worker: take the driver's settings (a no-op when they are already in force)."""
    if settings != _settings:
        configure(settings.endpoint_url, settings.region)


# -- paths ------------------------------------------------------------------------------------------
def scheme(path: str) -> str:
    m = _URL.match(path)
    return m.group(1).lower() if m else ""


def is_remote(path: str) -> bool:
    return scheme(path) not in ("", "file")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(_local(base), *parts)


def abspath(path: str) -> str:
    return path.rstrip("/") if is_remote(path) else os.path.abspath(_local(path))


def isabs(path: str) -> bool:
    return is_remote(path) or os.path.isabs(_local(path))


def relpath(path: str, root: str) -> str:
    if is_remote(path):
        root = root.rstrip("/") + "/"
        return path[len(root):] if path.startswith(root) else path
    return os.path.relpath(_local(path), _local(root))


def _endpoint(url: str) -> tuple[str, str]:
    """(scheme, host:port) Arrow wants from an endpoint URL."""
    m = re.match(r"^(https?)://([^/]+)", url)
    return (m.group(1), m.group(2)) if m else ("https", url)


def _s3(bucket: str) -> pafs.FileSystem:
    s = current()
    kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=RETRIES),
              "connect_timeout": CONNECT_TIMEOUT, "request_timeout": REQUEST_TIMEOUT}
    if s.endpoint_url:
        kwargs["scheme"], kwargs["endpoint_override"] = _endpoint(s.endpoint_url)
        kwargs["force_virtual_addressing"] = False
    kwargs["region"] = s.region or "us-east-1"
    return pafs.S3FileSystem(**kwargs)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URL; filesystems are made once per process."""
    sch = scheme(path)
    if sch in ("", "file"):
        fs = _filesystems.setdefault(("local",), pafs.LocalFileSystem())
        return fs, os.path.abspath(_local(path))
    rest = path[len(sch) + 3:]
    if sch in ("s3", "s3a"):
        key = ("s3", current())
        if key not in _filesystems:
            _filesystems[key] = _s3(rest.split("/", 1)[0])
        return _filesystems[key], rest.rstrip("/")
    if sch in ("gs", "gcs"):
        return _filesystems.setdefault(("gcs",), pafs.GcsFileSystem()), rest.rstrip("/")
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        key = ("fsspec", sch)
        if key not in _filesystems:
            _filesystems[key] = PyFileSystem(FSSpecHandler(fsspec.filesystem(sch)))
        return _filesystems[key], fsspec.get_filesystem_class(sch)._strip_protocol(path)
    except (ImportError, ValueError) as exc:
        raise WinnowError(f"{path}: no filesystem for the scheme '{sch}://' ({exc})") from None


# -- errors -----------------------------------------------------------------------------------------
def _reasons() -> tuple:
    """(pattern, phrase) over the messages of Arrow's AWS SDK (UPPER_SNAKE error names, curl codes) and
    of S3 itself (CamelCase codes); the first match wins, so the specific ones come first."""
    gave_up = f"gave up after {RETRIES} attempts"
    endpoint = current().endpoint_url or "the S3 endpoint"
    return ((r"NoSuchBucket|NO_SUCH_BUCKET|bucket does not exist", "no such bucket"),
            (r"InvalidAccessKeyId|INVALID_ACCESS_KEY_ID|SignatureDoesNotMatch|SIGNATURE_DOES_NOT_MATCH|"
             r"InvalidToken|INVALID_TOKEN|ExpiredToken|EXPIRED_TOKEN|UNRECOGNIZED_CLIENT|AUTHENTICATION",
             "credentials refused"),
            (r"ACCESS_DENIED|AccessDenied|Forbidden|HTTP status 403", "access denied"),
            (r"curlCode: (6|7)\b|Could not connect|Couldn't connect|Connection refused|Could not resolve",
             f"cannot connect to {endpoint}; {gave_up}"),
            (r"curlCode: 28\b|Timeout was reached|REQUEST_TIMEOUT|RequestTimeout",
             f"{endpoint} did not answer within {REQUEST_TIMEOUT} s; {gave_up}"),
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


# -- queries ----------------------------------------------------------------------------------------
def info(path: str) -> pafs.FileInfo:
    fs, p = resolve(path)
    with _on_store(path, "look up"):
        return fs.get_file_info(p)


def exists(path: str) -> bool:
    """Asked of the object itself (a HEAD on a store), never of a listing."""
    if not is_remote(path):
        return os.path.exists(_local(path))
    return info(path).type != pafs.FileType.NotFound


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(_local(path))
    return info(path).type == pafs.FileType.File


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(_local(path))
    return info(path).type == pafs.FileType.Directory


def getsize(path: str) -> int:
    return stat(path)[0]


def stat(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a file or object (a store keeps seconds)."""
    if not is_remote(path):
        st = os.stat(_local(path))
        return st.st_size, st.st_mtime_ns
    i = info(path)
    if i.type == pafs.FileType.NotFound:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    return i.size or 0, i.mtime_ns or 0


def listdir(path: str) -> list[str]:
    """Names directly under ``path`` (files and folders), sorted; [] when it does not exist."""
    if not is_remote(path):
        return sorted(os.listdir(_local(path))) if os.path.isdir(_local(path)) else []
    fs, p = resolve(path)
    with _on_store(path, "list"):
        entries = _listed(path, fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)))
    return sorted(posixpath.basename(e.path.rstrip("/")) for e in entries)


def list_entries(path: str) -> dict[str, bool]:
    """What is directly under a folder, in one listing: full path (as ``path`` spells it) -> is a folder."""
    if not is_remote(path):
        root = _local(path)
        return {os.path.join(root, n): os.path.isdir(os.path.join(root, n)) for n in sorted(os.listdir(root))}
    fs, p = resolve(path)
    with _on_store(path, "list"):
        entries = _listed(path, fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)))
    return {_spelled(path, p, e.path): e.type == pafs.FileType.Directory for e in sorted(entries, key=lambda e: e.path)}


def list_files(path: str, recursive: bool = False) -> list[str]:
    """Full paths of the files under ``path`` (as ``path`` spells them), sorted."""
    if not is_remote(path):
        root = _local(path)
        if not os.path.isdir(root):
            return []
        if not recursive:
            return sorted(os.path.join(root, n) for n in os.listdir(root) if os.path.isfile(os.path.join(root, n)))
        return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)
    fs, p = resolve(path)
    with _on_store(path, "list"):
        entries = _listed(path, fs.get_file_info(pafs.FileSelector(p, recursive=recursive, allow_not_found=True)))
    return sorted(_spelled(path, p, e.path) for e in entries if e.type == pafs.FileType.File)


def _spelled(path: str, inner_root: str, inner: str) -> str:
    """An entry listed under ``path`` spelled as the caller spelled ``path`` (whatever the scheme)."""
    return f"{path.rstrip('/')}/{inner[len(inner_root):].lstrip('/')}"


def glob(pattern: str) -> list[str]:
    """Files matching a glob (``*``, ``?``, ``[...]`` within one folder level, ``**`` across levels,
    names starting with ``.`` only when the pattern says so), as Python's glob matches local paths;
    on a store, the prefix before the first wildcard is listed and matched level by level."""
    if not is_remote(pattern):
        return sorted(p for p in globlib.glob(_local(pattern), recursive=True) if os.path.isfile(p))
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    base = head.rsplit("/", 1)[0]
    levels = pattern[len(base) + 1:].split("/")
    deep = len(levels) > 1 or "**" in levels
    return [p for p in list_files(base, recursive=deep) if _matches(p[len(base) + 1:].split("/"), levels)]


def _matches(names: list[str], levels: list[str]) -> bool:
    """Path segments against pattern segments, as glob(recursive=True) does: ``**`` is any number of
    levels, a wildcard never matches a leading dot."""
    if not levels:
        return not names
    if levels[0] == "**":
        return any(_matches(names[i:], levels[1:]) for i in range(len(names) + 1)
                   if not any(n.startswith(".") for n in names[:i]))
    return bool(names) and (names[0][:1] != "." or levels[0][:1] == ".") \
        and fnmatch.fnmatchcase(names[0], levels[0]) and _matches(names[1:], levels[1:])


# -- reading ----------------------------------------------------------------------------------------
def open_input(path: str, seekable: bool = True):
    """A binary file object for reading (random access for Parquet footers, streaming for tars)."""
    if not is_remote(path):
        return open(_local(path), "rb")
    fs, p = resolve(path)
    with _on_store(path, "read"):
        return fs.open_input_file(p) if seekable else fs.open_input_stream(p)


def read_bytes(path: str) -> bytes:
    with _on_store(path, "read") if is_remote(path) else contextlib.nullcontext():
        with open_input(path, seekable=False) as f:
            return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str):
    return json.loads(read_bytes(path))


def read_parquet(path: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    if not is_remote(path):
        return pq.read_table(_local(path), columns=columns, filters=filters)
    fs, p = resolve(path)
    with _on_store(path, "read"):
        return pq.read_table(p, columns=columns, filters=filters, filesystem=fs)


def dataset(path: str):
    """A ``pyarrow.dataset`` of Parquet at a file, folder or glob, on any filesystem this module reaches."""
    import pyarrow.dataset as ds

    if any(ch in path for ch in "*?["):
        files = glob(path)
        if not files:
            raise FileNotFoundError(errno.ENOENT, "no Parquet files match", path)
        fs = resolve(files[0])[0]
        with _on_store(path, "read"):
            return ds.dataset([resolve(f)[1] for f in files], filesystem=fs, format="parquet")
    fs, p = resolve(path)
    if not is_remote(path):
        return ds.dataset(p, filesystem=fs, format="parquet")
    with _on_store(path, "read"):
        return ds.dataset(p, filesystem=fs, format="parquet")


def parquet_file(path: str) -> pq.ParquetFile:
    if not is_remote(path):
        return pq.ParquetFile(_local(path))
    with _on_store(path, "read"):
        return pq.ParquetFile(open_input(path))


def read_schema(path: str) -> pa.Schema:
    return parquet_file(path).schema_arrow


def read_metadata(path: str) -> pq.FileMetaData:
    return parquet_file(path).metadata


# -- writing ----------------------------------------------------------------------------------------
def makedirs(path: str) -> None:
    """Local folders are made; a store has none (a prefix exists once an object is under it)."""
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes a local file; then it becomes ``path`` in one step: a rename on local disk,
    one upload on a store (the object appears whole when the upload completes, or not at all). A failure
    is one line naming ``path``, and nothing half-written is left under the final name."""
    if not is_remote(path):
        local = _local(path)
        tmp = f"{local}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
            write(tmp)
            os.replace(tmp, local)
        except OSError as exc:
            raise _failure(f"output {path}: cannot write ({reason(exc)})", reason(exc)) from None
        finally:  # whatever stopped write() (an error of its own, Ctrl-C), no temp file stays behind
            _discard(tmp)
        return
    fd, tmp = tempfile.mkstemp(prefix="winnow-upload-")
    os.close(fd)
    try:
        write(tmp)
        fs, p = resolve(path)
        pafs.copy_files(tmp, p, source_filesystem=resolve(tmp)[0], destination_filesystem=fs)
    except OSError as exc:
        why = _diagnosed(path, exc)
        raise _failure(f"output {path}: cannot write ({why})", why) from None
    finally:
        _discard(tmp)


def _discard(tmp: str) -> None:
    try:
        os.remove(tmp)
    except OSError:
        pass


def write_bytes(data: bytes, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_json(obj, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)

    atomic_write(path, write)


def write_parquet(table: pa.Table, path: str) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def remove(path: str) -> None:
    """Remove a file or object; gone already is fine."""
    if not is_remote(path):
        try:
            os.remove(_local(path))
        except FileNotFoundError:
            pass
        return
    fs, p = resolve(path)
    try:
        with _on_store(path, "remove"):
            fs.delete_file(p)
    except FileNotFoundError:
        pass


def rmtree(path: str) -> None:
    """Remove a folder (a prefix on a store) and everything under it; absent is fine."""
    if not is_remote(path):
        if os.path.isdir(_local(path)):
            shutil.rmtree(_local(path))
        return
    fs, p = resolve(path)
    with _on_store(path, "remove"):
        if fs.get_file_info(p).type != pafs.FileType.Directory:
            return
        if "/" in p.strip("/"):
            fs.delete_dir(p)
        else:  # a bucket's root: empty it, never delete the bucket itself
            fs.delete_dir_contents(p, missing_dir_ok=True)


def ensure_writable(path: str) -> None:
    """Fail early, in one line naming the output, when it cannot be written (a probe object or file)."""
    probe = join(path, f".write-test-{os.getpid()}")
    try:
        if not is_remote(path):
            os.makedirs(_local(path), exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=_local(path), prefix=".write-test-", delete=True):
                pass
            return
        fs, p = resolve(probe)
        with fs.open_output_stream(p) as f:
            f.write(b"")
        fs.delete_file(p)
    except OSError as exc:
        why = _diagnosed(path, exc) if is_remote(path) else reason(exc)
        raise _failure(f"output {path}: not writable ({why})", why) from None

"""Where a path lives: local disk or a store's URL, the process's store settings (endpoint, region),
and the ``pyarrow.fs`` filesystem that reaches it (made once per process). See the package docstring."""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from winnow.stages.errors import WinnowError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Bounded: Arrow's standard AWS retry strategy backs off exponentially (with jitter, up to 1, 2, 4, 8 s)
# between attempts, so a throttled or failing store gives up after RETRIES attempts and ~15 s.
RETRIES = 5
CONNECT_TIMEOUT = 10  # seconds: a closed port fails at once; an address that drops packets, after this
REQUEST_TIMEOUT = 60  # seconds one request may go unanswered before it counts as a failed attempt


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


# -- paths -------------------------------------------------------------------------------------------
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

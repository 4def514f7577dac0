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

Modules: ``paths`` (settings, URLs, filesystems), ``errors`` (one-line failures), ``read`` (queries,
listings, reads), ``write`` (atomic writes, removal); callers use this package's names. The retry and
timeout bounds live in ``paths`` (patch them there).

Errors: a store that cannot be used raises ``StorageError`` (a WinnowError, and an OSError for code that
handles unreadable files): one line naming the URL and what went wrong in words (no such bucket,
credentials refused, access denied, cannot connect, throttled), after at most ``RETRIES`` attempts,
each bounded by ``CONNECT_TIMEOUT``/``REQUEST_TIMEOUT``. A missing object stays FileNotFoundError, as a
missing local file is.
"""
from winnow.stages.storage.errors import StorageError, error, reason
from winnow.stages.storage.paths import (
    CONNECT_TIMEOUT,
    REQUEST_TIMEOUT,
    RETRIES,
    Settings,
    abspath,
    apply,
    configure,
    current,
    is_remote,
    isabs,
    join,
    relpath,
    resolve,
    scheme,
)
from winnow.stages.storage.read import (
    dataset,
    exists,
    getsize,
    glob,
    info,
    isdir,
    isfile,
    list_entries,
    list_files,
    listdir,
    open_input,
    parquet_file,
    read_bytes,
    read_json,
    read_metadata,
    read_parquet,
    read_schema,
    read_text,
    stat,
)
from winnow.stages.storage.write import (
    atomic_write,
    ensure_writable,
    makedirs,
    remove,
    rmtree,
    write_bytes,
    write_json,
    write_parquet,
)

__all__ = ["CONNECT_TIMEOUT", "REQUEST_TIMEOUT", "RETRIES", "Settings", "StorageError", "abspath", "apply",
           "atomic_write", "configure", "current", "dataset", "ensure_writable", "error", "exists", "getsize",
           "glob", "info", "is_remote", "isabs", "isdir", "isfile", "join", "list_entries", "list_files",
           "listdir", "makedirs", "open_input", "parquet_file", "read_bytes", "read_json", "read_metadata",
           "read_parquet", "read_schema", "read_text", "reason", "relpath", "remove", "resolve", "rmtree",
           "scheme", "stat", "write_bytes", "write_json", "write_parquet"]

"""Connecting to Ray and speaking to the user about it: embedded local Ray or a cluster, quiet logs,
user errors raised inside workers turned back into one-line WinnowErrors."""
from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import time

from winnow.stages import storage
from winnow.stages.errors import WinnowError

_REMOTE: dict = {}
CONNECT_TIMEOUT_ENV = "WINNOW_RAY_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 30.0  # seconds; a head node that is still starting gets this long
# An HTTP/2 client preface and an empty SETTINGS frame: any gRPC server (Ray's GCS, the Ray Client
# server) answers with a SETTINGS frame; Ray's dashboard (HTTP/1.1, the port `winnow submit` takes) does not.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


def connect(address: str | None, min_cpus: float = 0) -> bool:
    """Reuse an initialised Ray; else connect to ``address`` or start an embedded local one
    with this machine's CPUs, or ``min_cpus`` logical ones if more (see ray_adapter.cpus_needed).

    Returns True when this call started or joined Ray (and so should shut it down).
    """
    import ray

    if ray.is_initialized():
        _quiet_data()
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from an embedded cluster
    if address:
        check_reachable(address, connect_timeout())
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # "local" always starts a fresh embedded instance, even when another one runs on this host.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                     num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)))
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "an embedded local Ray"
        raise WinnowError(f"cannot start or reach Ray ({where}): {_first_line(exc)}") from None
    _quiet_data()
    return True


def connect_timeout() -> float:
    """Seconds to wait for a Ray address to answer: $WINNOW_RAY_CONNECT_TIMEOUT, default 30."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise WinnowError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: must be a number of seconds > 0")
    return value


def check_reachable(address: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds, in one line, when nothing Ray-like answers at ``address``.

    ray.init(address=...) retries the GCS 20 times at ~30 s each when nothing answers, printing
    "Failed to connect to GCS" all along: over ten minutes for a typo. So first connect ourselves,
    retrying a refused connection until the deadline (a head node may be starting), and check the
    endpoint answers as a gRPC server does. What ray.init does past that point is Ray's own.
    """
    host, port = _endpoint(address)
    if host is None:
        return  # another client scheme: Ray's own code decides what it means
    deadline = time.monotonic() + timeout
    why = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.1)) as sock:
                if _is_tls() or _answers_grpc(sock, max(deadline - time.monotonic(), 1.0)):
                    return
            raise WinnowError(f"cannot reach Ray at {address}: {host}:{port} accepts connections but does not speak "
                              "gRPC as Ray's GCS and Ray Client do (the dashboard port is for `winnow submit`)")
        except socket.gaierror:
            raise WinnowError(f"cannot reach Ray at {address}: unknown host {host!r}") from None
        except TimeoutError:
            why = "no answer"
        except OSError as exc:
            why = (exc.strerror or type(exc).__name__).lower()
        if time.monotonic() + 0.25 >= deadline:
            raise WinnowError(f"cannot reach Ray at {address}: {why} at {host}:{port} for {timeout:g} s "
                              f"(${CONNECT_TIMEOUT_ENV} sets how long to wait)")
        time.sleep(0.25)


def _endpoint(address: str) -> tuple[str | None, int]:
    """(host, port) that ``ray.init(address)`` dials; (None, 0) for what only Ray can interpret."""
    if address == "auto":  # as ray.init resolves it: $RAY_ADDRESS, else the cluster `ray start` recorded
        address = os.environ.get("RAY_ADDRESS") or _recorded_cluster()
    hostport = address[len("ray://"):].split("/")[0] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if "://" in hostport or not sep or not port.isdigit():
        return None, 0  # another client scheme, or no port: left to ray.init
    return host.strip("[]"), int(port)


def _recorded_cluster() -> str:
    from ray._private import services

    try:
        return services.canonicalize_bootstrap_address_or_die("auto")
    except (ConnectionError, ValueError) as exc:  # none running, or several to choose from
        raise WinnowError(f"cannot reach Ray at auto: {_first_line(exc)}") from None


def _is_tls() -> bool:
    """With RAY_USE_TLS the first bytes are a TLS handshake; reaching the port is all we check."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _answers_grpc(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        sock.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # silent or closed: not a gRPC server either
        return False
    return head[3] == _H2_SETTINGS


def _quiet_data() -> None:
    """winnow prints its own per-stage progress; Ray Data's bars and banners would drown it.

    Group barriers shuffle with Ray Data's sort-based shuffle (plain tasks) unless
    RAY_DATA_DEFAULT_SHUFFLE_STRATEGY says otherwise: the hash shuffle starts a pool of aggregator
    actors per groupby, which costs seconds to tens of seconds before the first row moves.
    """
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    if not os.environ.get("RAY_DATA_DEFAULT_SHUFFLE_STRATEGY"):
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    data_logger = logging.getLogger("ray.data")
    data_logger.setLevel(logging.WARNING)
    for handler in data_logger.handlers:  # the log file keeps everything; the console only what helps
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, _NoTaskErrorEcho) for f in handler.filters):
            handler.addFilter(_NoTaskErrorEcho())


class _NoTaskErrorEcho(logging.Filter):
    """Drops Ray Data's console echo of a failed task: the exception itself reaches the caller, which
    prints it once (a WinnowError as one line, anything else with its worker-side traceback); and the
    notice that progress bars are off (winnow prints its own progress)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("Progress bars disabled"):
            return False  # we turned them off on purpose
        return record.levelno < logging.ERROR


def shutdown() -> None:
    import ray

    ray.shutdown()


# Keys cluster_resources() adds beside Ray's own: whether an autoscaler runs, and the most GPUs its node
# types could add (0 when it has no GPU node type or does not say which node types it has).
AUTOSCALER = "winnow:autoscaler"
SCALABLE_GPU = "winnow:autoscaler_GPU"
_MAX_SCALABLE = 1024.0  # an unbounded GPU node type (max_workers -1) still sizes a finite actor pool


def cluster_resources() -> dict:
    """Ray's cluster resources now, plus what its autoscaler can add (``autoscaler_view``)."""
    import ray

    return {**ray.cluster_resources(), **autoscaler_view()}


def autoscaler_view() -> dict:
    """What the connected cluster's autoscaler can add, as far as Ray 2.x says.

    Autoscaler v2 (KubeRay, ``RAY_enable_autoscaler_v2=1``, Anyscale) reports its node types to the GCS
    (``ray._private.state.state.get_cluster_config()``, which Ray Data's own autoscaler reads): from it,
    the most GPUs its node types add. The v1 autoscaler (``ray up``) reports no node types' resources,
    only a status in the GCS's internal KV: then we know one runs, not what it can add. A cluster of
    ``ray start`` nodes has a status too, from a read-only monitor whose node types are its nodes: what
    it has now is all it will have.
    """
    try:
        from ray._private import state

        most = state.state.get_max_resources_from_cluster_config()
    except Exception:  # an older or newer Ray without it: say nothing rather than guess
        most = None
    if most is not None:
        return {AUTOSCALER: 1.0, SCALABLE_GPU: min(float(most.get("GPU", 0) or 0), _MAX_SCALABLE)}
    try:
        import json

        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except Exception:
        return {}
    # `ray start --head` runs the v1 monitor too, with a read-only provider that names each node type after
    # its node ("node_<id>"): that is a fixed set of nodes, not an autoscaler that can add any.
    mapping = report.get("node_type_mapping") or {}
    if not report or all(kind == f"node_{node}" for node, kind in mapping.items()):
        return {}
    return {AUTOSCALER: 1.0}


def remote_task(fn):
    """``fn`` as a Ray task for file work (merging a shard's pieces): reserves no CPU, retried if its
    worker dies (it writes deterministic names atomically, so a retry overwrites)."""
    import ray

    key = (fn, storage.current())
    if key not in _REMOTE:
        _REMOTE[key] = ray.remote(num_cpus=0, max_retries=3)(with_storage(fn, key[1]))
    return _REMOTE[key]


def with_storage(fn, settings: storage.Settings):
    """``fn`` run with the driver's store settings (endpoint, region) in force on the worker: the pipeline's
    ``storage:`` key is set on the driver, and a worker process knows only what is shipped to it."""

    def task(*args, **kwargs):
        storage.apply(settings)
        return fn(*args, **kwargs)

    task.__name__ = task.__qualname__ = getattr(fn, "__name__", "task")
    return task


def guard(fn):
    """Run ``fn``; a WinnowError raised in a Ray worker comes back as the same one-line error."""
    from ray.exceptions import RayTaskError

    try:
        return fn()
    except WinnowError as exc:
        if not isinstance(exc, RayTaskError):  # Ray's copy subclasses WinnowError but reads as a traceback
            raise
        raise WinnowError(user_error(exc)) from None
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        raise WinnowError(message) from None


def user_error(exc: BaseException) -> str | None:
    """The message of the first WinnowError in ``exc``'s causes (Ray wraps worker exceptions)."""
    from ray.exceptions import RayTaskError

    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, WinnowError) and not isinstance(e, RayTaskError):
            return _first_line(e)
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    # Ray Data wraps a UDF's exception in a UserCodeException and pickling drops the chain: the
    # worker's WinnowError (or a subclass of it, as storage.StorageError) survives only as a line of
    # the traceback text, "module.Class: message".
    for line in str(exc).splitlines():
        m = re.match(r"(winnow\.[\w.]+)\.(\w+): (.*)", line)
        cls = getattr(sys.modules.get(m.group(1)), m.group(2), None) if m else None
        if isinstance(cls, type) and issubclass(cls, WinnowError):
            return m.group(3)
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

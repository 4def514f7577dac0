"""One run at a time per output directory: ``OUT/.winnow.lock`` names the run that holds it.

Two runs into one output would overwrite each other's checkpoints and remove each other's temporary
pieces mid-write (the ``FileNotFoundError`` on a ``.tmp`` file), so every run that writes a run
directory holds this lock for as long as it runs (``run.execute``), and a second one refuses with one
line naming the holder. The file is created with ``O_CREAT | O_EXCL``, so of two runs only one gets it.

A lock whose process is gone (same host, pid not running, or running but started later: a reused pid)
is stale and taken over with a warning. Check-and-replace happens under ``flock`` on the output
directory, so of two newcomers racing for one stale lock, the second re-reads the first's fresh lock
and refuses. Where the file system cannot ``flock`` a directory, a stale lock is not taken over (that
could let two newcomers win); the error says to delete it. A lock held on another host is never taken
over: this host cannot tell whether that process is alive. On an object store (no exclusive create, no
flock) the lock is an object written, then read back after a pause: see ``_acquire_remote``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass

from winnow.pipeline import rundir
from winnow.stages import storage
from winnow.stages.errors import WinnowError

SERIALISE_WAIT_S = 10.0
REMOTE_SETTLE_S = 0.5  # between writing a lock object and reading it back (see _acquire_remote)

@dataclass
class Lock:
    out: str
    path: str
    token: str


@contextlib.contextmanager
def held(out: str):
    """Hold ``out``'s lock for the ``with`` body; released however it ends (error, Ctrl-C)."""
    lock = acquire(out)
    try:
        yield lock
    finally:
        release(lock)


def acquire(out: str) -> Lock:
    path = rundir.lock_path(out)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "proc_start": _proc_start(os.getpid()),
          "token": uuid.uuid4().hex}
    if storage.is_remote(out):
        return _acquire_remote(out, path, me)
    with _serialised(out) as serialised:
        holder = _read(path)
        if holder is not None:
            if holder.get("host") != me["host"]:
                raise WinnowError(f"{_in_use(out, holder)}; a lock of another host is never taken over: wait for "
                                  f"that run, pick another --output, or delete {path} if it is gone")
            if _alive(holder):
                raise WinnowError(f"{_in_use(out, holder)}; wait for it or pick another --output")
            if not serialised:
                raise WinnowError(f"output {out}: stale lock {path} of pid {holder.get('pid')} (no longer running), "
                                  "and this file system cannot lock to take it over safely; delete it and rerun")
            os.unlink(path)
            print(f"winnow: warning: output {out}: took over the lock of pid {holder.get('pid')} on host "
                  f"{holder.get('host')} since {holder.get('started')}, which is no longer running", file=sys.stderr)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # created between our read and now by a run that could not serialise either
            raise WinnowError(f"{_in_use(out, _read(path) or {})}; wait for it or pick another --output") from None
        try:
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return Lock(out, path, me["token"])


def _acquire_remote(out: str, path: str, me: dict) -> Lock:
    """An object store has no exclusive create (through Arrow) and no flock: write the lock object, wait,
    read it back. Of two runs racing, the later PUT wins and the earlier one reads the other's token and
    refuses; runs that start ``REMOTE_SETTLE_S`` apart always see each other. A stale lock (same host, dead
    pid) is taken over as on disk; one of another host never is."""
    holder = _read(path)
    if holder is not None:
        if holder.get("host") != me["host"] or _alive(holder):
            raise WinnowError(f"{_in_use(out, holder)}; wait for it, pick another --output, or delete {path} "
                              "if that run is gone")
        print(f"winnow: warning: output {out}: took over the lock of pid {holder.get('pid')} on host "
              f"{holder.get('host')} since {holder.get('started')}, which is no longer running", file=sys.stderr)
    storage.write_json(me, path)
    time.sleep(REMOTE_SETTLE_S)
    holder = _read(path) or {}
    if holder.get("token") != me["token"]:
        raise WinnowError(f"{_in_use(out, holder)}; wait for it or pick another --output")
    return Lock(out, path, me["token"])


def release(lock: Lock) -> None:
    """Remove the lock if it is still ours (never one a later run took over)."""
    if storage.is_remote(lock.out):
        try:
            if (_read(lock.path) or {}).get("token") == lock.token:
                storage.remove(lock.path)
        except (OSError, WinnowError):
            pass
        return
    try:
        with _serialised(lock.out):
            holder = _read(lock.path)
            if holder is not None and holder.get("token") == lock.token:
                os.unlink(lock.path)
    except (OSError, WinnowError):  # the output went away, or someone rewrote the lock: nothing of ours left
        pass


def _in_use(out: str, holder: dict) -> str:
    return (f"output {out} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
            f"{holder.get('started', '?')} (a run into the same output)")


def _read(path: str) -> dict | None:
    try:
        if storage.is_remote(path) and not storage.exists(path):
            return None
        text = storage.read_text(path)
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        if isinstance(holder, dict):
            return holder
    except ValueError:
        pass
    # An unreadable lock cannot say whose it is, so it is never taken over automatically.
    raise WinnowError(f"lock file {path} is unreadable; if no run is using {os.path.dirname(path)}, delete it "
                      "and rerun")


def _peek(path: str) -> dict:
    """What the lock file says, or nothing, for a message only."""
    try:
        return _read(path) or {}
    except (OSError, WinnowError):
        return {}


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # not ours to judge: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    start = holder.get("proc_start")
    return start is None or _proc_start(pid) in (None, start)  # a different start time: the pid was reused


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def _serialised(out: str):
    """``flock`` on the output directory around check-and-replace; yields False where it cannot lock.

    Held for milliseconds; waited for a bounded time (a holder stopped inside it must not hang us)."""
    fd = os.open(out, os.O_RDONLY)
    locked = False
    try:
        deadline = time.monotonic() + SERIALISE_WAIT_S
        while not locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WinnowError(f"{_in_use(out, _peek(rundir.lock_path(out)))}; wait for it or pick another "
                                      "--output") from None
                time.sleep(0.02)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
            os.close(fd)
            raise
    except BaseException:
        os.close(fd)
        raise
    try:
        yield locked
    finally:
        os.close(fd)  # closing drops the flock


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

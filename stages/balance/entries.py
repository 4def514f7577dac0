"""Helpers of the metaclip stage: metadata loading, automaton cache, Arrow <-> numpy CSR, the uid-hash sample."""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.kernels import balance as bal
from winnow.stages import storage
from winnow.stages.errors import WinnowError

DEFAULT_T = 20_000.0  # MetaCLIP-400M; 170,000 for the 2.5B pool
SINGLE = "all"  # group name when one metadata list serves every row


@functools.lru_cache(maxsize=64)
def load_metadata(path: str) -> list[str]:
    """A MetaCLIP metadata file: a JSON list of strings (entry id = position)."""
    try:
        entries = storage.read_json(path)
    except FileNotFoundError:
        raise WinnowError(f"metaclip metadata {path}: not found") from None
    except (OSError, ValueError) as exc:
        raise WinnowError(f"metaclip metadata {path}: not a readable JSON file ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise WinnowError(f"metaclip metadata {path}: must be a JSON list of strings (MetaCLIP's metadata.json)")
    return entries


@functools.lru_cache(maxsize=8)
def cached_matcher(path: str, version: str):
    """One automaton per (file, semantics) per process, shared by stage instances (reruns, several stages)."""
    from winnow.kernels.substring_match import build_matcher

    return build_matcher(load_metadata(path), version)


def as_strings(col, name: str) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    try:
        return col.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise WinnowError(f"metaclip: column '{name}' must be text, got {col.type}") from None


def entries_csr(col) -> tuple[np.ndarray, np.ndarray]:
    """A list<int32> column as (offsets, ids) numpy CSR; null lists are empty."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return offsets, ids


def utf8_buffers(col) -> tuple[np.ndarray, np.ndarray]:
    """Arrow's own UTF-8 bytes and offsets of a string column (null -> empty) for vectorised hashing."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    col = pc.fill_null(col.cast(pa.large_string()), "")
    _, off_buf, data_buf = col.buffers()
    offsets = np.frombuffer(off_buf, np.int64)[col.offset:col.offset + len(col) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets


def concat_csr(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    shifts = np.cumsum([0] + [len(i) for _, i in parts[:-1]])
    offsets = np.concatenate([[0]] + [o[1:] + s for (o, _), s in zip(parts, shifts)]).astype(np.int64)
    return offsets, np.concatenate([i for _, i in parts])


def bottom_k(sample: dict, k: int) -> dict:
    """The k rows with the smallest hashes, sorted by hash: the same set and order however rows were split."""
    order = bal.smallest_k(sample["hash"], k)
    offsets, ids = bal.csr_take(sample["offsets"], sample["ids"], order)
    return {"hash": sample["hash"][order], "group": sample["group"][order], "offsets": offsets, "ids": ids}

"""MetaCLIP substring matching: which metadata entries occur in a caption, exactly as the reference does.

Reference semantics (facebookresearch/MetaCLIP, ``substr_matching.py`` and ``curation/substr_matching.py``):

* v1: the caption is padded with one space on each side, each of ``, . ; : ? !`` and the backtick gets a space on
  both sides, ``\\t \\n \\r`` become spaces; entry ``e`` matches when ``" e "`` is a substring. Case-sensitive, no
  other normalisation: entries are NOT spaced the same way, so an entry containing one of those punctuation marks
  (``"St. Louis"``, ``"e.g."``) can never match, and non-breaking spaces are not spaces.
* v2 (MetaCLIP 2): the caption is ``str.strip()``-ed first, then spaced as in v1; an entry is padded with a space only
  on a side whose end character is not CJK-like (CJK, Thai, Lao, Burmese, Khmer, Tibetan) or punctuation, so
  ``"猫"`` matches inside ``"我的猫很可爱"`` and ``"'hood"`` inside ``"neighbor'hood"``.

Each entry's id is its position in the metadata list. A row's ids are unique and sorted; overlapping occurrences
count once. Duplicate entries all match (every position holding the string), as the reference's plain
``entry in text`` loop does (its pyahocorasick variant would keep only the last position).

Speed, v1: whole-token matching over a trie of entry tokens (kernels/token_match.py explains why that is exact).
Speed, v2 (and v1 with ``method="automaton"``): one Aho-Corasick pass (pyahocorasick) over all captions of a chunk
joined by a separator character that no key contains, so no match can span two captions; end offsets map back to
rows with numpy, and the per-match Python work is a C-level ``np.fromiter`` over the automaton's iterator.
"""
from __future__ import annotations

import itertools
import pickle
import string
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa

from winnow.kernels.caption_spacing import spacing
from winnow.kernels.token_match import build_token_trie, match_tokens

# MetaCLIP 2 treats these (besides string.punctuation) as punctuation when deciding whether to pad an entry.
V2_EXTRA_PUNCTUATION = frozenset("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
_CJK_LIKE_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
    (0x2FF0, 0x2FFF),  # CJK
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF),  # th lo my km bo
)
VERSIONS = ("v1", "v2")
# Texts are matched this many at a time: bounds the joined string and its numpy views.
CHUNK_TEXTS = 65536


def is_cjk_or_punct(char: str) -> bool:
    """MetaCLIP 2's ``is_cjk_or_similar``: an entry side ending in such a character gets no space."""
    if char in string.punctuation or char in V2_EXTRA_PUNCTUATION:
        return True
    cp = ord(char)
    return cp >= 0x0E00 and any(lo <= cp <= hi for lo, hi in _CJK_LIKE_RANGES)


def spaced_entry(entry: str, version: str = "v1") -> str:
    """The key searched for: ``" entry "`` in v1; v2 leaves a side unpadded after a CJK-like/punctuation char."""
    if version == "v1" or not entry:  # the reference crashes on an empty v2 entry; pad it like v1
        return f" {entry} "
    left = "" if is_cjk_or_punct(entry[0]) else " "
    right = "" if is_cjk_or_punct(entry[-1]) else " "
    return f"{left}{entry}{right}"


def prepare_text(text: str, version: str = "v1") -> str:
    """The caption as the reference searches it."""
    return spacing(text.strip() if version == "v2" else text)


@dataclass
class EntryMatcher:
    """A token trie (v1) or an Aho-Corasick automaton over the spaced entries, plus what maps keys to entry ids."""

    automaton: object | None  # pyahocorasick, for v2 and method="automaton"
    version: str
    n_entries: int
    separator: str  # a character no key contains and spacing never produces
    trie: object | None = None  # kernels.token_match.TokenTrie, for v1 by default
    # key index -> entry ids, only for keys shared by duplicate entries (key index = first entry id)
    duplicates: dict[int, list[int]] = field(default_factory=dict)
    dup_offsets: np.ndarray | None = None  # CSR over key index when duplicates exist
    dup_ids: np.ndarray | None = None


def build_matcher(entries: Sequence[str], version: str = "v1", method: str = "auto") -> EntryMatcher:
    """Build once per worker (about a second for 500k entries).

    ``method``: "auto" (v1: token trie, v2: automaton) or "automaton" (pyahocorasick for either version).
    """
    import ahocorasick

    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if method not in ("auto", "automaton"):
        raise ValueError(f"method must be 'auto' or 'automaton', got {method!r}")
    by_tokens = version == "v1" and method == "auto"
    automaton = None if by_tokens else ahocorasick.Automaton(ahocorasick.STORE_INTS)
    first_of: dict[str, int] = {}
    duplicates: dict[int, list[int]] = {}
    distinct: list[tuple[str, int]] = []
    # Insert in the metadata's own order: nodes are allocated in insertion order, and a sorted list keeps
    # shared prefixes close in memory, which is what the per-character walk is bound by.
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise TypeError(f"metadata entry {i} is {type(entry).__name__}, not a string")
        key = spaced_entry(entry, version)
        first = first_of.setdefault(key, i)
        if first != i:
            duplicates.setdefault(first, [first]).append(i)
            continue
        distinct.append((entry, i))
        if automaton is not None:
            automaton.add_word(key, i)
    trie = None
    if by_tokens:
        trie = build_token_trie(distinct)
    else:
        automaton.make_automaton()
    if automaton is not None and len(automaton):
        # The search is bound by cache misses on trie nodes and their child arrays. Built incrementally, child
        # arrays are reallocated as they grow and end up scattered; unpickling allocates every node and its
        # children afresh in traversal order, so a path's nodes sit together: ~15% faster matching.
        automaton = pickle.loads(pickle.dumps(automaton))
    used = set("".join(first_of))
    separator = next(c for c in map(chr, itertools.chain(range(0, 9), range(14, 32), range(0xE000, 0xF900)))
                     if c not in used)
    matcher = EntryMatcher(automaton, version, len(entries), separator, trie, duplicates)
    if duplicates:
        counts = np.ones(len(entries), np.int64)
        for first, ids in duplicates.items():
            counts[first] = len(ids)
        matcher.dup_offsets = np.concatenate([[0], np.cumsum(counts)])
        parts = [[i] if i not in duplicates else duplicates[i] for i in range(len(entries))]
        matcher.dup_ids = np.fromiter(itertools.chain.from_iterable(parts), np.int32, int(matcher.dup_offsets[-1]))
    return matcher


def match_texts(texts: Sequence[str | None] | pa.Array, matcher: EntryMatcher) -> tuple[np.ndarray, np.ndarray]:
    """Entry ids of every text as CSR: ``ids[offsets[i]:offsets[i+1]]`` are text i's ids, unique and sorted.

    ``texts``: a list of str or an Arrow string array. A ``None`` text matches nothing.
    """
    if matcher.trie is None and isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    elif matcher.trie is not None and not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(texts, pa.string())
    offsets = [np.zeros(1, np.int64)]
    ids = []
    base = 0
    for start in range(0, len(texts), CHUNK_TEXTS):
        off, got = _match_chunk(texts[start:start + CHUNK_TEXTS], matcher)
        offsets.append(off[1:] + base)
        ids.append(got)
        base += len(got)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    return np.concatenate(offsets), all_ids


def _match_chunk(texts, matcher: EntryMatcher) -> tuple[np.ndarray, np.ndarray]:
    n = len(texts)
    if matcher.trie is not None:
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        return _to_csr(*match_tokens(texts, matcher.trie), n, matcher)
    if n == 0 or len(matcher.automaton) == 0:
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int32)
    nulls = np.fromiter((t is None for t in texts), bool, n)
    texts = ["" if t is None else t for t in texts]  # joined as "", its matches dropped below
    if matcher.version == "v2":
        texts = [t.strip() for t in texts]
    sep = matcher.separator
    joined = f" {sep} ".join(texts)
    if joined.count(sep) != n - 1:
        # A caption contains the separator: match it caption by caption (rare; correctness first).
        return _match_one_by_one(texts, nulls, matcher)
    # Spacing the joined string equals spacing each caption and joining with the separator: spacing never
    # touches it, and each caption keeps its own padding spaces (" a " + sep + " b ").
    spaced = spacing(joined)
    # Character offsets of the separators = row boundaries; ASCII strings are their own byte offsets.
    if spaced.isascii():
        chars = np.frombuffer(spaced.encode("ascii"), np.uint8)
    else:
        chars = np.frombuffer(spaced.encode("utf-32-le", "surrogatepass"), np.uint32)
    bounds = np.flatnonzero(chars == ord(sep))
    flat = np.fromiter(itertools.chain.from_iterable(matcher.automaton.iter(spaced)), np.int64)
    ends, keys = flat[0::2], flat[1::2]
    rows = np.searchsorted(bounds, ends)  # separators before the match's last char = its row
    real = ~nulls[rows]  # a None text matches nothing, not even the empty entry
    return _to_csr(rows[real], keys[real], n, matcher)


def _match_one_by_one(texts: list[str], nulls: np.ndarray, matcher: EntryMatcher) -> tuple[np.ndarray, np.ndarray]:
    rows, keys = [], []
    for i, text in enumerate(texts):
        if nulls[i]:
            continue
        for _, key in matcher.automaton.iter(spacing(text)):
            rows.append(i)
            keys.append(key)
    return _to_csr(np.asarray(rows, np.int64), np.asarray(keys, np.int64), len(texts), matcher)


def _to_csr(rows: np.ndarray, keys: np.ndarray, n: int, matcher: EntryMatcher) -> tuple[np.ndarray, np.ndarray]:
    if matcher.dup_offsets is not None and len(keys):
        starts, stops = matcher.dup_offsets[keys], matcher.dup_offsets[keys + 1]
        reps = stops - starts
        rows = np.repeat(rows, reps)
        within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        keys = matcher.dup_ids[np.repeat(starts, reps) + within].astype(np.int64)
    # (row, id) pairs, unique and sorted: one sort of a combined key. Matches arrive in row order, so a
    # stable (timsort/radix) sort of the nearly sorted keys is far cheaper than np.unique's.
    width = max(matcher.n_entries, 1)
    pairs = np.sort(rows * width + keys, kind="stable")
    if len(pairs) > 1:
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    rows_u = pairs // width
    ids = (pairs - rows_u * width).astype(np.int32)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows_u, minlength=n), out=offsets[1:])
    return offsets, ids


def match_naive(text: str | None, entries: Sequence[str], version: str = "v1") -> list[int]:
    """The reference's own method, ``" entry " in text`` over every entry: slow, for tests and benchmarks."""
    if text is None:
        return []
    spaced = prepare_text(text, version)
    return [i for i, e in enumerate(entries) if spaced_entry(e, version) in spaced]

"""Per-row seeded sampling for batched generation: Gumbel-max with counter-based noise.

``torch.multinomial`` draws from one generator shared by the whole batch, so a row's sampled
caption would depend on which rows it was batched with, on the batch size and on the sharding.
Here each row carries its own 63-bit seed (derived from ``(seed, uid, k)``) and the noise for
token ``v`` at decoding step ``t`` is a pure hash of ``(row_seed, t, v)`` (splitmix64), computed on
the logits' device. ``argmax(logits / T + Gumbel)`` is an exact sample from ``softmax(logits / T)``,
so greedy decoding over the noised scores samples — identically in any batch, on CPU or GPU.
"""
from __future__ import annotations

import hashlib

import torch

_MASK64 = (1 << 64) - 1


def _i64(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_MIX1 = _i64(0xBF58476D1CE4E5B9)
_MIX2 = _i64(0x94D049BB133111EB)
_STEP = _i64(0xD1B54A32D192ED03)


def row_seed(seed: int, key: str, k: int = 0) -> int:
    """A 63-bit seed for caption ``k`` of row ``key`` under run ``seed`` (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}\x1f{k}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic on signed ints)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (wrapping multiply), bit-identical on CPU and CUDA."""
    x = x ^ _shr(x, 30)
    x = x * _MIX1
    x = x ^ _shr(x, 27)
    x = x * _MIX2
    return x ^ _shr(x, 31)


def uniform_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """(B, vocab) float32 uniforms in (0, 1), a pure function of (seed[b], step, token id)."""
    tokens = torch.arange(vocab, dtype=torch.int64, device=seeds.device)
    step_t = torch.full((1, 1), step + 1, dtype=torch.int64, device=seeds.device)
    x = splitmix64(seeds.to(torch.int64)[:, None] + step_t * _STEP)  # decorrelate steps first
    x = splitmix64(x + (tokens[None, :] + 1) * _GOLDEN)
    return (_shr(x, 40).to(torch.float32) + 0.5) / float(1 << 24)


def gumbel_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    return -torch.log(-torch.log(uniform_noise(seeds, step, vocab)))


class SeededGumbel:
    """A logits processor: adds per-row Gumbel noise so greedy decoding samples reproducibly.

    Put it last, after temperature / top-k / top-p warpers (masked tokens stay at -inf). The step
    counter starts at the first call, so left padding (which lengthens the prompt) does not shift
    a row's noise.
    """

    def __init__(self, seeds: list[int]):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self._start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._start is None:
            self._start = input_ids.shape[-1]
        if scores.shape[0] != self.seeds.shape[0]:
            raise ValueError(f"SeededGumbel got {scores.shape[0]} rows for {self.seeds.shape[0]} seeds")
        step = input_ids.shape[-1] - self._start
        noise = gumbel_noise(self.seeds.to(scores.device), step, scores.shape[-1])
        return scores.float() + noise

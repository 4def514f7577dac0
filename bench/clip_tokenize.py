"""Caption tokenisation for CLIP scoring, captions/s on one core: open_clip's SimpleTokenizer vs ours.

At GPU rates the captions are the CPU side's work (nvJPEG decodes the images): ViT-B-32's 10,000 images/s
target needs 10,000 captions/s tokenised in the engine's prefetch thread. Real CC3M validation captions
(15,833); "cold" = fresh tokenizers (empty caches: open_clip's BPE cache, our word cache), "warm" = the
same captions again. The ids are checked equal before anything is timed.

    python -m bench.clip_tokenize [--rounds 3]
"""
from __future__ import annotations

import argparse
import pathlib
import time

CC3M = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "captions" / "cc3m_val.tsv"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import open_clip.tokenizer as oct
    import torch

    from winnow.kernels.clip_tokenizer import fast_tokenizer

    if not CC3M.is_file():
        raise SystemExit(f"CC3M captions not found at {CC3M}")
    captions = [line.split("\t")[0] for line in CC3M.read_text(encoding="utf-8").splitlines()]
    torch.set_num_threads(1)
    if not torch.equal(fast_tokenizer(oct.SimpleTokenizer())(captions), oct.SimpleTokenizer()(captions)):
        raise SystemExit("ids differ from open_clip's: not timing a wrong tokenizer")
    sides = {"open_clip": oct.SimpleTokenizer, "winnow": lambda: fast_tokenizer(oct.SimpleTokenizer())}
    best = {(name, phase): float("inf") for name in sides for phase in ("cold", "warm")}
    for _ in range(args.rounds):
        for name, make in sides.items():
            tok = make()
            for phase in ("cold", "warm"):
                t0 = time.process_time()
                tok(captions)
                best[name, phase] = min(best[name, phase], time.process_time() - t0)
    print(f"CLIP tokenisation, {len(captions)} CC3M captions, context 77, one core (CPU time), best of {args.rounds}")
    for phase in ("cold", "warm"):
        rates = [len(captions) / best[name, phase] for name in sides]
        print(f"  {phase}: open_clip {rates[0]:9.0f} captions/s, winnow {rates[1]:9.0f} captions/s -> "
              f"{rates[1] / rates[0]:.2f}x")


if __name__ == "__main__":
    main()

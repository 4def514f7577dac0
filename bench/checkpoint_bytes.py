"""What a run writes besides its decisions: bytes under OUT/work/ and the CPU it costs, before vs after.

    python -m bench.checkpoint_bytes [--mb 280] [--baseline GITREF] [--rounds 2] [--kept] [--data DIR]

Data: a ~``--mb`` MB Parquet (uid, caption, image) of the real COCO photos in ../shared/data, each row a
distinct random crop re-encoded as JPEG (so dedup_phash has real work and few duplicates); generated once
under ``--data`` and reused. Command: ``winnow stage dedup_phash --input DATA --output OUT`` (``--kept``
adds OUT/kept/), each run its own process, timed end to end; user and system CPU seconds are that
child's own (``os.wait4``), and the bytes are summed over the files under OUT/work/ and OUT/ once it ends.

``--baseline GITREF`` runs the same command on the code of GITREF (a detached ``git worktree`` of this
repository in a temporary folder) in the same rounds, interleaved with the current code, so machine load
hits both alike; the table shows every run and the best of each.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = os.path.join(REPO, "..", "shared", "data", "images", "coco")


def make_data(path: str, mb: float, seed: int = 0) -> str:
    """One Parquet shard of about ``mb`` MB: random crops (60-100% of each side) of the COCO photos."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    target = os.path.join(path, "pool.parquet")
    if os.path.exists(target):
        return target
    photos = sorted(os.path.join(COCO, n) for n in os.listdir(COCO) if n.endswith(".jpg"))
    if not photos:
        sys.exit(f"no COCO photos in {COCO}")
    rng = np.random.default_rng(seed)
    images, captions, size = [], [], 0
    while size < mb * 1e6:
        src = photos[len(images) % len(photos)]
        with Image.open(src) as im:
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            buf = io.BytesIO()
            im.convert("RGB").crop((x, y, x + cw, y + ch)).save(buf, format="JPEG", quality=int(rng.integers(88, 97)))
        images.append(buf.getvalue())
        captions.append(f"a photo, crop {len(images)} of {os.path.basename(src)}")
        size += len(images[-1])
    table = pa.table({"uid": [f"coco-{i:06d}" for i in range(len(images))], "caption": captions,
                      "image": pa.array(images, pa.binary())})
    os.makedirs(path, exist_ok=True)
    pq.write_table(table, target + ".tmp")
    os.replace(target + ".tmp", target)
    return target


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)


def baseline_root(ref: str, where: str) -> str:
    """A detached worktree of ``ref`` with the namespace layout (winnow/{pipeline,stages,kernels})."""
    tree = os.path.join(where, "tree")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", tree, ref], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = os.path.join(where, "root", "winnow")
    os.makedirs(root)
    for name in ("pipeline", "stages", "kernels"):
        os.symlink(os.path.join(tree, name), os.path.join(root, name))
    return os.path.dirname(root)


def run_once(root: str, data: str, out: str, kept: bool) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    # the baseline's root goes first on the path (a package found first wins); "" keeps this checkout's
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", ""), REPO) if p)
    env = dict(os.environ, PYTHONPATH=path, NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [sys.executable, "-m", "winnow.pipeline.cli", "stage", "dedup_phash", "--input", data, "--output", out,
           "--quiet"] + (["--kept"] if kept else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"winnow stage failed:\n{err}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "work": folder_bytes(os.path.join(out, "work")), "total": folder_bytes(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=280.0)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "winnow-bench-checkpoint"))
    ap.add_argument("--baseline", help="git ref whose code runs beside this checkout's (e.g. main, HEAD~3)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kept", action="store_true", help="also write OUT/kept/ (winnow stage --kept)")
    args = ap.parse_args()

    data = make_data(args.data, args.mb)
    print(f"input: {data}: {os.path.getsize(data) / 1e6:.1f} MB; machine: {os.cpu_count()} cores")
    variants = [("current", "")]
    scratch = tempfile.mkdtemp(prefix="winnow-bench-")
    try:
        if args.baseline:
            variants.insert(0, (f"baseline {args.baseline}", baseline_root(args.baseline, scratch)))
        results: dict[str, list[dict]] = {name: [] for name, _ in variants}
        for _ in range(args.rounds):
            for name, root in variants:
                results[name].append(run_once(root, data, os.path.join(scratch, "out"), args.kept))
        print(f"\nwinnow stage dedup_phash{' --kept' if args.kept else ''}, best of {args.rounds} (all runs below)")
        head = f"{'code':<22}{'OUT/work MB':>12}{'OUT MB':>9}{'wall s':>8}{'user s':>8}{'sys s':>7}{'RSS MB':>8}"
        print(head)
        for name, runs in results.items():
            best = min(runs, key=lambda r: r["wall"])
            print(f"{name:<22}{best['work'] / 1e6:>12.1f}{best['total'] / 1e6:>9.1f}{best['wall']:>8.2f}"
                  f"{best['user']:>8.2f}{best['sys']:>7.2f}{best['rss_mb']:>8.0f}")
        for name, runs in results.items():
            print(f"  {name}: " + "; ".join(f"wall {r['wall']:.2f} user {r['user']:.2f} sys {r['sys']:.2f}"
                                            for r in runs))
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", os.path.join(scratch, "tree")],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

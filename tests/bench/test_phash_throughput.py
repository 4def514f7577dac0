"""The pHash agreement figure in docs/dedup.md comes from `bench.phash_throughput --agreement`: keep it runnable."""
import io

import imagehash
import pytest
from PIL import Image

from bench.phash_throughput import bit_differences, brightened
from winnow.kernels.phash import phash_bytes


@pytest.mark.timeout(60)
def test_bit_differences_are_hamming_distances_to_imagehash(coco_dir):
    datas = [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))[:4]]
    images = datas + brightened(datas)
    ours = phash_bytes(images)[0]
    expected = [bin(int(h) ^ int(str(imagehash.phash(Image.open(io.BytesIO(d)))), 16)).count("1")
                for h, d in zip(ours, images)]
    assert bit_differences(images).tolist() == expected
    assert all(e % 2 == 0 for e in expected)  # each hash sets 32 of its 64 bits

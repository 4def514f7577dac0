"""What runs inside the download worker processes: img2dataset's Downloader, made safe.

Imported only in the spawned worker processes: it imports img2dataset, which is slow to import
(torch comes with it), so neither the stage's process nor the stage registry loads it.

* ``SafeDownloader`` is img2dataset's ``Downloader`` (thread pool, retries, X-Robots-Tag, sha256)
  that first installs the guarded urllib opener from ``download_safety`` in the worker process,
  so every connection and redirect hop is checked.
* ``ArrowSampleWriter`` is its sample writer: img2dataset's Parquet layout, as Arrow IPC.
* ``ImageCheck`` stands where img2dataset's Resizer goes: it reads the header, refuses
  decompression bombs before any pixel is decoded, decodes once to catch truncated files, then
  either returns the original bytes untouched or hands over to img2dataset's Resizer.
"""
from __future__ import annotations

import io
import os
import urllib.request

import pyarrow as pa
from img2dataset.downloader import Downloader

from winnow.stages.download.safety import NetworkPolicy, build_opener

# Formats a web image may be; PIL can parse many more (EPS, PSD, ...) that no crawl needs.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")  # JPEG covers MPO


class ImageCheck:
    """img2dataset resizer protocol: (stream, bbox) -> (bytes, w, h, orig_w, orig_h, error)."""

    def __init__(self, max_pixels: int, min_image_size: int, resizer=None):
        self.max_pixels = max_pixels
        self.min_image_size = min_image_size
        self.resizer = resizer  # img2dataset Resizer when a resize was asked, else keep the bytes

    def __call__(self, img_stream, blurring_bbox_list=None):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # max_pixels below is the guard, checked from the header
        data = img_stream.getvalue()
        if not data:
            return _fail("empty_body", "zero-byte body")
        try:
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Exception as exc:  # UnidentifiedImageError, or a broken header
            return _fail("not_an_image", type(exc).__name__)
        with im:
            w, h = im.size
            if self.max_pixels and w * h > self.max_pixels:
                return _fail("too_many_pixels", f"{w}x{h} > max_pixels {self.max_pixels}")
            if min(w, h) < self.min_image_size:
                return _fail("too_small", f"{w}x{h} < min_image_size {self.min_image_size}")
            try:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # JPEG: DCT-scaled, still reads every byte
                im.load()
            except Exception as exc:
                return _fail("decode_error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if self.resizer is None:
            return data, w, h, w, h, None
        img, rw, rh, ow, oh, err = self.resizer(io.BytesIO(data), blurring_bbox_list)
        if err is not None:
            return _fail("too_small" if "too small" in err else "decode_error", err)
        return img, rw, rh, ow, oh, None


class ArrowSampleWriter:
    """img2dataset's sample-writer protocol (as its ParquetSampleWriter: one row per URL, the bytes
    in a column named after encode_format), written as an uncompressed Arrow IPC file in row_id order.

    The stage memory-maps it back: no decode, and when a batch's rows are all downloaded its image
    column is these files' bytes as they are, without a copy (Parquet would snappy-compress JPEG
    bytes that do not compress, to be decoded again in the stage's process). Rows arrive in
    completion order and are held until close() to be written sorted (a shard is at most
    MAX_SHARD_ROWS images).
    """

    def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
        self.schema = schema.append(pa.field(encode_format, pa.binary()))
        self.column = encode_format
        self.path = os.path.join(output_folder, f"{shard_id:0{oom_shard_count}d}.arrow")
        self.rows: list[dict] = []

    def write(self, img_str, key, caption, meta):
        self.rows.append({**meta, "key": key, self.column: img_str})

    def close(self):
        self.rows.sort(key=lambda r: r["row_id"])
        with pa.OSFile(self.path + ".tmp", "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
            for start in range(0, len(self.rows), 256):
                writer.write_batch(pa.RecordBatch.from_pylist(self.rows[start:start + 256], schema=self.schema))
        os.replace(self.path + ".tmp", self.path)  # complete, or absent (then its rows get no_result)
        self.rows = []


def _fail(reason: str, detail: str):
    return None, None, None, None, None, f"winnow:{reason} {detail}"


class SafeDownloader(Downloader):
    """img2dataset's Downloader behind the guarded opener (installed in this worker process)."""

    def __init__(self, policy: NetworkPolicy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy

    def __call__(self, row):
        # Process-wide, but these worker processes only ever download for this stage.
        urllib.request.install_opener(build_opener(self.policy))
        return super().__call__(row)


def make_downloader(policy: NetworkPolicy, output_folder: str, *, threads: int, timeout: float, retries: int,
                    user_agent_token: str | None, robots_directives: list[str] | None, max_pixels: int,
                    min_image_size: int, resize_mode: str, image_size: int, encode_format: str,
                    shard_rows: int) -> SafeDownloader:
    resizer = None
    if resize_mode != "no":
        from img2dataset.resizer import Resizer

        resizer = Resizer(image_size=image_size, resize_mode=resize_mode, resize_only_if_bigger=False,
                          encode_format=encode_format, min_image_size=min_image_size)
    return SafeDownloader(
        policy,
        sample_writer_class=ArrowSampleWriter,
        resizer=ImageCheck(max_pixels, min_image_size, resizer),
        thread_count=threads,
        save_caption=False,
        extract_exif=False,
        output_folder=output_folder,
        column_list=["row_id", "url"],
        timeout=timeout,
        number_sample_per_shard=max(shard_rows, 2),
        oom_shard_count=5,
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format=encode_format,
        retries=retries,
        user_agent_token=user_agent_token,
        disallowed_header_directives=robots_directives or None,
    )


def run_shard(policy: NetworkPolicy, output_folder: str, shard: tuple[int, str], **settings):
    """One img2dataset shard -> (ok, shard), its rows written to output_folder/<shard>.arrow."""
    return make_downloader(policy, output_folder, **settings)(shard)

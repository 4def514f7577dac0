"""The download stage against a real HTTP server on 127.0.0.1 (tests/stages/http_fixtures.py).

Stages here use one worker process each: starting one costs seconds (img2dataset's imports), so
the stages are module-scoped and shared by the tests that can share them.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.stages.download.http_fixtures import FixtureServer
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards
from winnow.pipeline.plan import Step
from winnow.pipeline.run import execute
from winnow.stages import registry
from winnow.stages.base import GlobalStage
from winnow.stages.download.fetch import Download
from winnow.stages.download.previous import previous_files
from winnow.stages.download.reasons import classify, scheme_refusal
from winnow.stages.download.safety import NetworkPolicy, PolicyError, address_refusal, build_opener
from winnow.stages.errors import WinnowError

# Generous enough for a loaded 2-core CI box; /slow and /endless outlast them by far.
FAST = {"timeout": 2.0, "deadline": 4.0, "max_bytes": 5_000_000, "processes": 1, "threads": 16}


@pytest.fixture(scope="module")
def server(coco_dir):
    srv = FixtureServer(coco_dir, slow_s=6.0, endless_s=20.0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def open_stage():
    """allow_private_networks=true: the only server there is listens on 127.0.0.1."""
    stage = Download(allow_private_networks=True, **FAST)
    stage.ensure_setup()
    yield stage
    stage.close()


def run_stage(stage, urls):
    table = pa.table({"uid": [f"u{i}" for i in range(len(urls))], "url": pa.array(urls, pa.string())})
    out, stats = Step(stage, "map").run(table)
    assert out.num_rows == len(urls) and out["uid"].to_pylist() == table["uid"].to_pylist()
    return out, stats


HOSTILE = {  # path -> the outcome it must end with (None = downloaded)
    "/status/404": "http_404",
    "/status/403": "http_403",
    "/status/500": "http_5xx",
    "/status/503": "http_5xx",
    "/slow": "timeout",
    "/endless": "timeout",
    "/huge": "too_large",
    "/huge-declared": "too_large",
    "/html": "not_an_image",
    "/truncated.jpg": "decode_error",
    "/empty": "empty_body",
    "/bomb.png": "too_many_pixels",
    "/redirect": None,
    "/loop": "redirect_loop",
    "/redirect-unspecified": "refused_address",
    "/redirect-file": "bad_scheme",
    "/robots": "robots_noai",
    "/robots-other-bot": None,
}


@pytest.mark.timeout(180)
def test_every_hostile_endpoint_ends_with_its_outcome(server, open_stage):
    photos = server.names[:4]
    urls = ([server.url(p) for p in HOSTILE] + [server.url(f"/coco/{n}") for n in photos]
            + [server.url(f"/coco/{photos[0]}", host="localhost"), "ftp://example.com/a.jpg",
               "file:///etc/passwd", None, "   ", "http:///no-host.jpg", server.url("/a photo.jpg"),
               server.url("/caf\u00e9.jpg")])
    expected = list(HOSTILE.values()) + [None] * 5 + ["bad_scheme", "bad_scheme", "no_url", "no_url"] + ["bad_url"] * 3
    out, stats = run_stage(open_stage, urls)
    got = out["reject_reason"].to_pylist()
    assert dict(zip(urls, got)) == dict(zip(urls, expected))
    assert set(out.filter(pc.is_valid(out["reject_reason"]))["reject_stage"].to_pylist()) == {"download"}
    assert stats["rows_in"] == len(urls) and stats["kept"] == expected.count(None)
    # successes carry the original bytes, untouched, with their true sizes and hash
    served = {server.url(p): server.photo_bytes[server.names[1] if p == "/redirect" else server.names[0]]
              for p in ("/redirect", "/robots-other-bot")}
    served.update({server.url(f"/coco/{n}"): server.photo_bytes[n] for n in photos})
    served[urls[len(HOSTILE) + 4]] = server.photo_bytes[photos[0]]
    rows = {r["url"]: r for r in out.to_pylist()}
    for url, data in served.items():
        row = rows[url]
        assert row["image"] == data
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        size = Image.open(io.BytesIO(data)).size
        assert (row["width"], row["height"]) == size == (row["original_width"], row["original_height"])
        assert row["download_error"] is None
    for url, reason in zip(urls, got):
        if reason is not None:
            assert rows[url]["image"] is None and rows[url]["sha256"] is None
        if reason in ("http_404", "timeout", "too_large", "decode_error"):
            assert rows[url]["download_error"]  # img2dataset's own message is kept for debugging


@pytest.mark.timeout(120)
def test_private_addresses_are_refused_by_default_before_any_request(server):
    stage = Download(**FAST)
    try:
        stage.ensure_setup()
        name = server.names[5]
        urls = [server.url(f"/coco/{name}"), server.url(f"/coco/{name}", host="localhost"),
                f"http://[::1]:{server.port}/coco/{name}", f"http://0.0.0.0:{server.port}/coco/{name}"]
        before = server.hits[f"/coco/{name}"]
        out, _ = run_stage(stage, urls)
        assert out["reject_reason"].to_pylist() == ["refused_address"] * 4
        assert server.hits[f"/coco/{name}"] == before  # refused before connecting, not after
        assert "localhost resolves to 127.0.0.1" in out["download_error"][1].as_py()
    finally:
        stage.close()


@pytest.mark.timeout(120)
def test_resize_and_min_image_size(server):
    stage = Download(allow_private_networks=True, resize_mode="center_crop", image_size=64, min_image_size=430,
                     **FAST)
    try:
        stage.ensure_setup()
        names = server.names[:8]
        sizes = [Image.open(io.BytesIO(server.photo_bytes[n])).size for n in names]
        assert any(min(s) < 430 for s in sizes) and any(min(s) >= 430 for s in sizes)
        out, _ = run_stage(stage, [server.url(f"/coco/{n}") for n in names])
        for row, size in zip(out.to_pylist(), sizes):
            if min(size) < 430:
                assert row["reject_reason"] == "too_small"
                continue
            assert row["reject_reason"] is None
            assert (row["width"], row["height"]) == (64, 64)
            assert (row["original_width"], row["original_height"]) == size
            assert Image.open(io.BytesIO(row["image"])).size == (64, 64)
    finally:
        stage.close()


def write_urls(tmp_path, server, shards: dict[str, list[str]]):
    folder = tmp_path / "urls"
    folder.mkdir()
    for name, paths in shards.items():
        pq.write_table(pa.table({"url": [server.url(p) for p in paths],
                                 "caption": [f"photo number {i} of {name}" for i in range(len(paths))]}),
                       folder / f"{name}.parquet")
    return folder


def pipeline(input_dir, before=(), **params):
    stage = {"stage": "download", "allow_private_networks": True, **FAST, **params}
    return parse_pipeline({"input": str(input_dir), "stages": [{"stage": s} for s in before] + [stage]})


class CaptionCount(GlobalStage):
    """A global stage that decides nothing: placed first, it puts the download in segment 1 (as
    metaclip-400m.yaml does, balancing before downloading)."""

    name = "test_caption_count"

    def partial(self, table):
        return table.num_rows

    def combine(self, parts):
        return sum(parts)

    def finalize(self, combined):
        return {"rows": combined}

    def apply(self, table, artifact):
        return table


def manifest(out) -> pa.Table:
    return pq.read_table(os.path.join(out, "manifest")).sort_by("uid")


@pytest.mark.timeout(180)
def test_rerun_skips_downloaded_shards(tmp_path, server):
    urls = write_urls(tmp_path, server, {"a": [f"/img/{i}.jpg" for i in range(100, 106)] + ["/status/404"],
                                         "b": [f"/img/{i}.jpg" for i in range(200, 205)]})
    out = str(tmp_path / "run")
    execute(pipeline(urls), out, progress=False)
    first = manifest(out)
    assert first.num_rows == 12 and len(set(first["uid"].to_pylist())) == 12
    hits = server.total_hits()
    execute(pipeline(urls), out, progress=False)  # nothing left to do: no request at all
    assert server.total_hits() == hits
    assert manifest(out).equals(first)
    # an interrupted run: shard b's checkpoint is missing, so only its 5 URLs are fetched again
    os.remove(os.path.join(out, "work", "seg-0", f"part-{list_shards(str(urls))[1].stem}.parquet"))
    execute(pipeline(urls), out, progress=False)
    assert server.total_hits() == hits + 5
    assert manifest(out).equals(first)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("before", [(), ("tests.stages.download.test_fetch:CaptionCount",)], ids=["seg0", "seg1"])
def test_retry_failed_fetches_only_failed_urls_and_merges(tmp_path, server, before):
    photos = [f"/img/{i}.jpg" for i in range(300, 304)]
    flaky = [f"/flaky/retry-a-{len(before)}", f"/flaky/retry-b-{len(before)}"]
    urls = write_urls(tmp_path, server, {"a": photos + [flaky[0], "/status/404"], "b": [flaky[1], "/img/305.jpg"]})
    first_out = str(tmp_path / "first")
    execute(pipeline(urls, before), first_out, progress=False)
    first = manifest(first_out)
    assert sorted(r for r in first["reject_reason"].to_pylist() if r) == ["http_404", "http_5xx", "http_5xx"]
    hits_before = dict(server.hits)

    second_out = str(tmp_path / "second")
    execute(pipeline(urls, before, retry_failed=True, previous=first_out), second_out, progress=False)
    second = manifest(second_out)
    new_hits = {p: n - hits_before.get(p, 0) for p, n in server.hits.items() if n != hits_before.get(p, 0)}
    assert new_hits == {flaky[0]: 1, flaky[1]: 1, "/status/404": 1}  # successes not refetched
    assert second["uid"].to_pylist() == first["uid"].to_pylist()  # every row once: merged, not appended
    assert [r for r in second["reject_reason"].to_pylist() if r] == ["http_404"]
    kept = pq.read_table(os.path.join(second_out, "kept"))
    assert kept.num_rows == 7 and len(set(kept["uid"].to_pylist())) == 7
    for row in kept.to_pylist():
        assert hashlib.sha256(row["image"]).hexdigest() == row["sha256"]
    reused = {r["uid"]: r["sha256"] for r in first.to_pylist() if r["sha256"]}
    assert {r["uid"]: r["sha256"] for r in second.to_pylist() if r["uid"] in reused} == reused


@pytest.mark.timeout(300)
@pytest.mark.ray
def test_local_and_ray_runners_give_the_same_manifest(tmp_path, server, request):
    request.getfixturevalue("ray_local")
    paths = [f"/img/{i}.jpg" for i in range(400, 410)] + ["/status/404", "/html", "/truncated.jpg", "/loop",
                                                          "/robots", "/redirect", "/bomb.png", "/empty"]
    urls = write_urls(tmp_path, server, {"a": paths[:9], "b": paths[9:]})
    execute(pipeline(urls), str(tmp_path / "local"), runner="local", progress=False)
    execute(pipeline(urls), str(tmp_path / "ray"), runner="ray", progress=False)
    cols = ["uid", "url", "reject_stage", "reject_reason", "sha256", "width", "height"]
    local, ray = manifest(tmp_path / "local"), manifest(tmp_path / "ray")
    assert local.num_rows == len(paths)
    assert ray.select(cols).to_pylist() == local.select(cols).to_pylist()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl CLI)."""
    openssl = shutil.which("openssl") or pytest.skip("openssl not found")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.timeout(120)
def test_https_goes_through_the_same_guards(coco_dir, tls_files, open_stage):
    with FixtureServer(coco_dir, endless_s=20.0, tls=tls_files) as srv:
        photo = f"/coco/{srv.names[0]}"
        trusting = ssl.create_default_context(cafile=tls_files[0])
        opener = build_opener(NetworkPolicy(True, 5_000_000, 2.0, 10), trusting)
        assert opener.open(srv.url(photo), timeout=2).read() == srv.photo_bytes[srv.names[0]]
        t0 = time.monotonic()
        with pytest.raises(PolicyError, match="winnow:timeout"):  # TLS records keep coming: the deadline cuts
            opener.open(srv.url("/endless"), timeout=2).read()
        assert time.monotonic() - t0 < 8
        with pytest.raises(PolicyError, match="winnow:too_large"):
            opener.open(srv.url("/huge"), timeout=2).read()
        refusing = build_opener(NetworkPolicy(False, 0, 2.0, 10), trusting)
        with pytest.raises(urllib.error.URLError, match="winnow:refused_address"):
            refusing.open(srv.url(photo), timeout=2)
        # through the stage, with the system's trust store: a self-signed certificate is refused
        out, _ = run_stage(open_stage, [srv.url(photo)])
        assert out["reject_reason"].to_pylist() == ["tls_error"]


def test_address_policy():
    for ip in ("127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1",
               "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "100.64.0.1"):
        assert address_refusal(ip, allow_private_networks=False), ip
        assert address_refusal(ip, allow_private_networks=True) is None, ip
    for ip in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255"):
        assert address_refusal(ip, allow_private_networks=True), ip  # never an image host
    for ip in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"):
        assert address_refusal(ip, allow_private_networks=False) is None, ip


def test_scheme_and_message_classification():
    assert [scheme_refusal(u) for u in ("https://a.org/x.jpg", "HTTP://A.ORG/x", "data:image/png;base64,AA",
                                        "javascript:alert(1)", "//a.org/x.jpg", "", None)] == \
        [None, None, "bad_scheme", "bad_scheme", "bad_scheme", "no_url", "no_url"]
    cases = {
        "<urlopen error [Errno -2] Name or service not known>": "dns_error",
        "<urlopen error [Errno 111] Connection refused>": "connection_refused",
        "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed>": "tls_error",
        "The read operation timed out": "timeout",
        "HTTP Error 410: Gone": "http_410",
        "HTTP Error 502: Bad Gateway": "http_5xx",
        "IncompleteRead(10 bytes read, 90 more expected)": "incomplete_body",
        "<urlopen error winnow:refused_address x resolves to 10.0.0.1 (private address)>": "refused_address",
        "Remote end closed connection without response": "network_error",
        "URL can't contain control characters. '/a b.jpg' (found at least ' ')": "bad_url",
        "'ascii' codec can't encode character '\\xe9' in position 5: ordinal not in range(128)": "bad_url",
    }
    assert {m: classify("failed_to_download", m) for m in cases} == cases
    assert classify("success", None) is None


def test_params_are_listed_and_validated(tmp_path):
    params = {p.name for p in registry()["download"].params}
    assert {"resize_mode", "image_size", "min_image_size", "max_bytes", "max_pixels", "timeout", "retries",
            "processes", "threads", "user_agent_token", "respect_robots", "allow_private_networks",
            "retry_failed", "previous"} <= params
    assert Download().allow_private_networks is False and Download().resize_mode == "no"
    with pytest.raises(WinnowError, match="retry_failed needs 'previous'"):
        Download(retry_failed=True)
    with pytest.raises(WinnowError, match="'timeout' must be > 0"):
        Download(timeout=0)
    with pytest.raises(WinnowError, match="resize_mode"):
        Download(resize_mode="stretch")
    with pytest.raises(WinnowError, match="no Parquet files"):
        previous_files(str(tmp_path))


def test_set_up_stage_pickles_without_its_pool(open_stage):
    clone = pickle.loads(pickle.dumps(open_stage))
    assert clone.config == open_stage.config and not clone._ready and "_pool" not in clone.__dict__


EXIT_AFTER_RAY_KILLED_CHILDREN = """
import os, signal, time
from multiprocessing import resource_tracker
from winnow.stages.download import fetch as download
if __name__ == "__main__":
    download.worker_pool(1)
    # what Ray's core worker does as an actor exits: SIGKILL every child, the resource tracker included
    os.kill(resource_tracker._resource_tracker._pid, signal.SIGKILL)
    time.sleep(0.5)
"""


def test_exit_after_the_resource_tracker_was_killed_is_quiet(tmp_path):
    """The download pool's semaphores are cleaned up at exit without a KeyError traceback apiece (seen at
    the end of every Ray download pass before: a new tracker was started to unregister names it never saw)."""
    script = tmp_path / "exit_after_kill.py"
    script.write_text(EXIT_AFTER_RAY_KILLED_CHILDREN)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = {**os.environ, "PYTHONPATH": repo, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "KeyError" not in proc.stderr and "died unexpectedly" not in proc.stderr, proc.stderr[-2000:]

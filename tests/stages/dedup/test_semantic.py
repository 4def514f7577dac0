"""SemDeDup on planted clusters of near-duplicate embeddings, through the real runners and real faiss."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute
from winnow.stages.dedup.embeddings import EMB, emb_column, emb_matrix
from winnow.stages.dedup.semantic import CENTROID_SIM, CLUSTER, SemDedup, SemDedupKMeans, within_cluster_duplicates
from winnow.stages.errors import WinnowError

D = 96


def planted_embeddings(seed=0, n_topics=12, n_groups=300, n_single=700):
    """Topics (what k-means should find) holding items; some items have 1-4 near copies (cos ~0.99).

    Distinct items of one topic are similar (cos ~0.6-0.85) but far below the duplicate threshold.
    Returns (uids, (n, D) float32 vectors, group id per row).
    """
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(n_topics, D))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    vecs, groups = [], []
    for g in range(n_groups + n_single):
        item = topics[rng.integers(n_topics)] * 2.0 + rng.normal(size=D) / np.sqrt(D) * 1.2
        item /= np.linalg.norm(item)
        copies = int(rng.integers(2, 6)) if g < n_groups else 1
        for _ in range(copies):
            vecs.append(item + rng.normal(size=D) / np.sqrt(D) * 0.08)
            groups.append(g)
    order = rng.permutation(len(vecs))
    vecs = np.array(vecs, np.float32)[order]
    groups = np.array(groups)[order]
    uids = [f"e{i:05d}" for i in range(len(vecs))]
    return uids, vecs, groups


def write_inputs(tmp_path, uids, vecs, n_shards, seed, side: bool):
    """Input shards (uid, url[, embedding]) dealt in a random order; optionally a side dataset of embeddings."""
    src = tmp_path / f"in-{n_shards}-{seed}-{side}"
    src.mkdir()
    perm = np.random.default_rng(seed).permutation(len(uids))
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float16).ravel()), D)
    table = pa.table({"uid": uids, "url": [f"http://x.org/{u}.jpg" for u in uids]})
    if not side:
        table = table.append_column("image_embedding", emb)
    for k in range(n_shards):
        pq.write_table(table.take(pa.array(perm[k::n_shards])), src / f"part-{k}.parquet")
    if side:
        side_dir = tmp_path / f"side-{n_shards}-{seed}"
        side_dir.mkdir()
        # the clip_score layout: image and text embeddings, files per batch, a retried batch's duplicate file
        text = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(len(uids) * D, np.float16)), D)
        side_t = pa.table({"uid": uids, "image_embedding": emb, "text_embedding": text})
        half = len(uids) // 2
        pq.write_table(side_t.slice(0, half), side_dir / "part-a.parquet")
        pq.write_table(side_t.slice(half), side_dir / "part-b.parquet")
        pq.write_table(side_t.slice(half, 50), side_dir / "part-c.parquet")
        return src, side_dir
    return src, None


def run(tmp_path, src, kmeans_params, semdedup_params=None, name="out", runner="local"):
    stages = [{"stage": "semdedup_kmeans", "n_clusters": 12, "sample_size": 2000, **kmeans_params},
              {"stage": "semdedup", **(semdedup_params or {})}]
    cfg = parse_pipeline({"input": str(src), "stages": stages, "seed": 11, "write_kept": False})
    execute(cfg, str(tmp_path / name), runner=runner, progress=False)
    return {r["uid"]: r for r in pq.read_table(tmp_path / name / "manifest").to_pylist()}


def precision_recall(manifest, uids, groups):
    group = dict(zip(uids, groups))
    rejected = [u for u, r in manifest.items() if r["reject_reason"] == "dup:semantic"]
    correct = sum(group[manifest[u]["dup_of"]] == group[u] for u in rejected)
    expected = len(uids) - len(set(groups))  # all but one row of each planted group
    return correct / max(1, len(rejected)), correct / expected


@pytest.fixture(scope="module")
def planted():
    return planted_embeddings()


def test_planted_clusters_precision_recall_from_side_dataset(tmp_path, planted):
    uids, vecs, groups = planted
    src, side = write_inputs(tmp_path, uids, vecs, 3, seed=1, side=True)
    m = run(tmp_path, src, {"embeddings": str(side)})
    precision, recall = precision_recall(m, uids, groups)
    print(f"\nsemdedup eps=0.05: precision {precision:.4f} recall {recall:.4f}")
    assert precision >= 0.99 and recall >= 0.99
    kept_groups = [g for u, g in zip(uids, groups) if m[u]["reject_reason"] is None]
    assert len(set(kept_groups)) == len(set(groups))  # no planted item lost entirely
    assert all(m[u][CLUSTER] is not None and 0 <= m[u][CLUSTER] < 12 for u in uids)
    assert EMB not in next(iter(m.values()))  # the bytes column stays out of the manifest


def test_decisions_independent_of_sharding_and_source(tmp_path, planted):
    uids, vecs, _ = planted
    src1, side1 = write_inputs(tmp_path, uids, vecs, 1, seed=2, side=True)
    src4, _ = write_inputs(tmp_path, uids, vecs, 4, seed=3, side=False)
    a = run(tmp_path, src1, {"embeddings": str(side1)}, name="a")
    b = run(tmp_path, src4, {"embedding_column": "image_embedding"}, name="b")
    key = lambda m: {u: (r["reject_reason"], r["dup_of"], r[CLUSTER]) for u, r in m.items()}  # noqa: E731
    assert key(a) == key(b)


def test_a_tighter_eps_removes_less(tmp_path, planted):
    uids, vecs, groups = planted
    src, _ = write_inputs(tmp_path, uids, vecs, 2, seed=4, side=False)
    loose = run(tmp_path, src, {"embedding_column": "image_embedding"}, {"eps": 0.5}, name="loose")
    tight = run(tmp_path, src, {"embedding_column": "image_embedding"}, {"eps": 0.001}, name="tight")
    n = lambda m: sum(r["reject_reason"] == "dup:semantic" for r in m.values())  # noqa: E731
    assert n(tight) < 0.2 * (len(uids) - len(set(groups))) < n(loose)
    assert precision_recall(loose, uids, groups)[0] < 0.99  # eps 0.5 also merges distinct items of a topic


def _cluster_table(vectors, sims, scores):
    ok = np.ones(len(vectors), bool)
    return pa.table({"uid": [f"u{i}" for i in range(len(vectors))], EMB: emb_column(vectors, ok),
                     CENTROID_SIM: pa.array(sims, pa.float32()), "clip_score": pa.array(scores, pa.float32()),
                     CLUSTER: pa.array([0] * len(vectors), pa.int32()),
                     "reject_stage": pa.nulls(len(vectors), pa.string()),
                     "reject_reason": pa.nulls(len(vectors), pa.string()),
                     "dup_of": pa.nulls(len(vectors), pa.string())})


@pytest.mark.parametrize("prefer,survivor", [("farthest", "u2"), ("closest", "u1"), ("max:clip_score", "u0"),
                                             ("min:clip_score", "u3"), ("uid", "u0")])
def test_survivor_policies(prefer, survivor):
    rng = np.random.default_rng(0)
    base = rng.normal(size=D)
    vectors = np.stack([base + rng.normal(size=D) * 0.01 for _ in range(4)]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = _cluster_table(vectors, sims=[0.5, 0.9, 0.1, 0.4], scores=[0.9, 0.3, 0.2, 0.1])
    out = SemDedup(prefer=prefer).decide_group(table).to_pylist()
    assert [r["uid"] for r in out if r["reject_reason"] is None] == [survivor]
    assert all(r["dup_of"] == survivor for r in out if r["reject_reason"] == "dup:semantic")


def test_within_cluster_blocks_equal_the_full_matrix():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2600, 32)).astype(np.float32)
    x[1500:2600] = x[:1100] + rng.normal(size=(1100, 32)).astype(np.float32) * 0.05  # dups across blocks
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = within_cluster_duplicates(x, 0.95)
    s = x @ x.T
    s[np.triu_indices(len(x))] = -np.inf  # only better rows (j < i)
    is_dup = s.max(axis=1) > 0.95
    assert ((got >= 0) == is_dup).all() and is_dup.sum() >= 1000
    kept = ~is_dup
    for i in np.flatnonzero(is_dup)[:200]:
        cand = np.flatnonzero((s[i] > 0.95) & kept)
        expect = cand[np.argmax(s[i, cand])] if len(cand) else np.argmax(s[i])
        assert got[i] == expect


def test_embedding_bytes_round_trip_with_missing_rows():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(5, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ok = np.array([True, False, True, True, False])
    back, ok2 = emb_matrix(pa.chunked_array([emb_column(v, ok)]).take(pa.array([4, 3, 2, 1, 0])))
    assert ok2.tolist() == ok[::-1].tolist()
    np.testing.assert_allclose(back[ok2], v[ok][::-1], atol=2e-3)


def test_configuration_errors_are_one_line(tmp_path, planted):
    with pytest.raises(WinnowError, match="embedding_column"):
        SemDedupKMeans()
    with pytest.raises(WinnowError, match="prefer"):
        SemDedup(prefer="median")
    with pytest.raises(WinnowError, match="semdedup_kmeans"):
        SemDedup().prepare(pa.table({"uid": ["a"]}))
    bad = tmp_path / "side.parquet"
    pq.write_table(pa.table({"id": ["a"], "emb": pa.array([[1.0, 2.0]])}), bad)
    stage = SemDedupKMeans(embeddings=str(bad))
    with pytest.raises(WinnowError, match="no 'uid' column"):
        stage.setup()


def test_rows_without_embedding_pass_through(tmp_path, planted):
    uids, vecs, _ = planted
    src, side = write_inputs(tmp_path, uids[:400], vecs[:400], 2, seed=5, side=True)
    extra = pa.table({"uid": ["zz-missing"], "url": ["http://x.org/zz.jpg"]})
    pq.write_table(extra, src / "part-extra.parquet")
    m = run(tmp_path, src, {"embeddings": str(side)})
    assert m["zz-missing"]["reject_reason"] is None and m["zz-missing"][CLUSTER] is None


@pytest.mark.ray
def test_local_and_ray_runners_decide_the_same(tmp_path, planted, ray_local):
    uids, vecs, _ = planted_embeddings(seed=1, n_groups=60, n_single=100)
    src, side = write_inputs(tmp_path, uids, vecs, 3, seed=6, side=True)
    local = run(tmp_path, src, {"embeddings": str(side)}, name="local")
    ray = run(tmp_path, src, {"embeddings": str(side)}, name="ray", runner="ray")
    key = lambda m: {u: (r["reject_reason"], r["dup_of"], r[CLUSTER]) for u, r in m.items()}  # noqa: E731
    assert key(local) == key(ray)
    assert sum(r["reject_reason"] == "dup:semantic" for r in ray.values()) > 100

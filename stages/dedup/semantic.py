"""SemDeDup (Abbas et al. 2023): semantic dedup of image embeddings, in two stages.

``semdedup_kmeans`` (global): attaches each row's L2-normalised embedding (from an embedding column or
the clip_score side dataset keyed by uid), draws a deterministic sample (the ``sample_size`` rows with
the smallest hash of (seed, uid): the same rows whatever the sharding), trains spherical k-means with
faiss on it (the barrier's artifact: the centroids), then assigns every row its nearest centroid.

``semdedup`` (group): the runner's shuffle brings each cluster together; inside it, rows are ranked
by ``prefer`` and a row is a duplicate when a better-ranked row of its cluster has cosine similarity
> 1 - eps (the paper's rule: compared with every better row, kept or not). ``dup_of`` names the most
similar better row that was kept, or the most similar better row when none of them was.

Rows without an embedding get no cluster and pass through unchanged.
"""
from __future__ import annotations

import base64
import hashlib

import numpy as np
import pyarrow as pa

from winnow.stages.base import GlobalStage, GroupStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.dedup.embeddings import EMB, SOURCE_PARAMS, EmbeddingSource, emb_column, emb_matrix, normalize
from winnow.stages.dedup.survivors import DUP_OF, check_prefer, mark_duplicates, prefer_columns, survivor_order
from winnow.stages.errors import WinnowError

CLUSTER = "semdedup_cluster"
CENTROID_SIM = "semdedup_centroid_sim"
BLOCK = 2048  # rows per similarity block: bounds memory for big clusters

def sample_priority(uids: list[str], seed: int) -> np.ndarray:
    """A uint64 per uid from (seed, uid): the k smallest are the sample, whatever the sharding."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "big")
                     for u in uids], dtype=np.uint64)


class SemDedupKMeans(GlobalStage):
    name = "semdedup_kmeans"
    help = "SemDeDup step 1: spherical k-means (faiss) on a deterministic sample, then nearest-centroid assignment"
    params = SOURCE_PARAMS + (
        Param("n_clusters", int, 1000, "number of k-means clusters (capped at the sample size)", min=1),
        Param("sample_size", int, 100_000, "rows used to train k-means: those with the smallest hash of (seed, uid)",
              min=1),
        Param("niter", int, 20, "k-means iterations", min=1),
    )
    resources = Resources(cpus=1)
    stateful = True
    reads_image = ()  # embeddings from a column or a side dataset

    def validate(self):
        where = f"stage '{self.instance_name}'"
        self._source = EmbeddingSource(self.embedding_column, self.embeddings, self.embedding_field, where)
        self._centroids = None

    def setup(self):
        self._source.open()

    def produces(self):
        return {EMB: pa.large_binary(), CLUSTER: pa.int32(), CENTROID_SIM: pa.float32()}

    def prepare(self, table: pa.Table) -> pa.Table:
        vectors, ok = self._source.vectors(table)
        return set_column(table, EMB, emb_column(vectors, ok))

    def partial(self, table: pa.Table) -> dict:
        vectors, ok = emb_matrix(table[EMB]) if table.num_rows else (np.zeros((0, 0), np.float32), np.zeros(0, bool))
        uids = [u for u, good in zip(table["uid"].to_pylist(), ok) if good]
        return _smallest({"prio": sample_priority(uids, self.seed), "emb": vectors[ok].astype(np.float16)},
                         self.sample_size)

    def combine(self, parts: list[dict]) -> dict:
        parts = [p for p in parts if len(p["prio"])]
        if not parts:
            return {"prio": np.zeros(0, np.uint64), "emb": np.zeros((0, 0), np.float16)}
        return _smallest({"prio": np.concatenate([p["prio"] for p in parts]),
                          "emb": np.concatenate([p["emb"] for p in parts])}, self.sample_size)

    def finalize(self, combined: dict) -> dict:
        import faiss

        order = np.argsort(combined["prio"], kind="stable")  # a fixed training order: same input, same centroids
        x = normalize(combined["emb"][order].astype(np.float32))
        if len(x) == 0:
            return {"k": 0, "d": 0, "sample": 0, "centroids": ""}
        k = min(self.n_clusters, len(x))
        # faiss trains on at most 256 points per centroid (its own seeded subsample of this sample)
        km = faiss.Kmeans(x.shape[1], k, niter=self.niter, spherical=True, seed=self.seed, verbose=False,
                          min_points_per_centroid=1)
        km.train(x)
        c = normalize(km.centroids.astype(np.float32))
        return {"k": k, "d": int(x.shape[1]), "sample": len(x),
                "centroids": base64.b64encode(np.ascontiguousarray(c).tobytes()).decode("ascii")}

    def apply(self, table: pa.Table, artifact: dict) -> pa.Table:
        n = table.num_rows
        cluster = np.zeros(n, np.int32)
        sim = np.zeros(n, np.float32)
        vectors, ok = emb_matrix(table[EMB])
        if artifact["k"] and ok.any():
            c = self._centroid_matrix(artifact)
            if vectors.shape[1] != c.shape[1]:
                raise WinnowError(f"stage '{self.instance_name}': embeddings have {vectors.shape[1]} dims, "
                                  f"centroids {c.shape[1]}")
            for a in range(0, n, 16384):  # bounded memory: a block of rows x all centroids
                s = vectors[a:a + 16384] @ c.T
                cluster[a:a + 16384] = s.argmax(axis=1)
                sim[a:a + 16384] = s.max(axis=1)
        else:
            ok = np.zeros(n, bool)
        table = set_column(table, CLUSTER, pa.array(cluster, pa.int32(), mask=~ok))
        return set_column(table, CENTROID_SIM, pa.array(sim, pa.float32(), mask=~ok))

    def _centroid_matrix(self, artifact: dict) -> np.ndarray:
        if self._centroids is None or self._centroids[0] != artifact["centroids"]:
            c = np.frombuffer(base64.b64decode(artifact["centroids"]), np.float32).reshape(artifact["k"], artifact["d"])
            self._centroids = (artifact["centroids"], c)
        return self._centroids[1]


def _smallest(part: dict, k: int) -> dict:
    if len(part["prio"]) <= k:
        return part
    keep = np.argpartition(part["prio"], k - 1)[:k]
    return {"prio": part["prio"][keep], "emb": part["emb"][keep]}


class SemDedup(GroupStage):
    name = "semdedup"
    help = "SemDeDup step 2: within each k-means cluster, reject rows with cosine similarity > 1 - eps to a better row"
    key_column = CLUSTER
    reads_image = ()
    params = (
        Param("eps", float, 0.05, "duplicates have cosine similarity > 1 - eps",
              min=0.0, max=2.0, open_min=True, open_max=True),
        Param("prefer", str, "farthest", "survivor: 'farthest' from the centroid (paper's default), 'closest', "
                                         "'uid', or 'max:COLUMN' / 'min:COLUMN' (e.g. max:clip_score)"),
    )
    resources = Resources(cpus=1)

    def validate(self):
        check_prefer(self.prefer, f"stage '{self.instance_name}'", ("farthest", "closest"))

    def produces(self):
        return {DUP_OF: pa.string()}

    def prepare(self, table: pa.Table) -> pa.Table:
        for col in (CLUSTER, EMB, CENTROID_SIM):
            if col not in table.column_names:
                raise WinnowError(f"stage '{self.instance_name}' needs column '{col}': put a semdedup_kmeans "
                                  "stage before it")
        return table

    def decide_columns(self):
        return ["uid", EMB, CENTROID_SIM, CLUSTER] + prefer_columns(self.prefer)

    def decide_group(self, group: pa.Table) -> pa.Table:
        vectors, _ = emb_matrix(group[EMB])
        if self.prefer in ("farthest", "closest"):
            sim = group[CENTROID_SIM].to_numpy(zero_copy_only=False).astype(np.float64)
            order = survivor_order(group, "uid", values=-sim if self.prefer == "farthest" else sim)
        else:
            order = survivor_order(group, self.prefer)
        dup_rank = within_cluster_duplicates(vectors[order], 1.0 - self.eps)
        dup = np.full(group.num_rows, -1, dtype=np.int64)
        is_dup = dup_rank >= 0
        dup[order[is_dup]] = order[dup_rank[is_dup]]
        return mark_duplicates(self, group, dup, "dup:semantic")


def within_cluster_duplicates(x: np.ndarray, threshold: float) -> np.ndarray:
    """Rows of ``x`` (unit vectors, best first): for each, the better row it duplicates, or -1.

    Row i is a duplicate when max_{j<i} cos(x_i, x_j) > threshold. It points at the most similar
    better row that is itself kept, else at the most similar better row. Done in row blocks.
    """
    n = len(x)
    dup = np.full(n, -1, dtype=np.int64)
    kept = np.ones(n, dtype=bool)
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        s = x[a:b] @ x[:b].T  # (block, b): each block row against every better-or-equal row
        s[np.arange(b - a)[:, None] <= np.arange(b)[None, :] - a] = -np.inf  # only j < i counts
        best = s.max(axis=1)
        is_dup = best > threshold
        kept[a:b] = ~is_dup
        rows = np.flatnonzero(is_dup)
        if len(rows):
            sub = s[rows]
            prefer_kept = np.where(kept[None, :b] & (sub > threshold), sub, -np.inf)
            has_kept = np.isfinite(prefer_kept.max(axis=1))
            dup[a + rows] = np.where(has_kept, prefer_kept.argmax(axis=1), sub.argmax(axis=1))
    return dup

"""The audit's neighbour search at any size: near-duplicate pairs and each photo's nearest photos, over unit-length
feature rows (cosine similarity = dot product).

Below EXACT_UP_TO rows every pair is compared (audit.near_pairs, audit.outlier_scores). Above it, a faiss inverted
file of 8-bit codes of the rows' first principal axes (PCA, IVF, SQ8: 256 bytes a photo, so memory stays near the
feature matrix's own) proposes each photo's CANDIDATES nearest; their cosines are then computed exactly from the rows,
so every similarity reported is exact and only recall is approximate (docs/results.md measures it against the exact
search). A photo whose candidates are all near duplicates may have more: those few rows are compared with every row."""

import numpy as np
import pandas as pd
from tqdm import tqdm

EXACT_UP_TO = 12_000  # rows: every pair compared up to here, where that is faster than the index (docs/results.md)
CANDIDATES = 32  # nearest rows proposed per photo by the index, their cosines then computed exactly
PROBES = 16  # inverted lists searched per photo
QUERY_BLOCK = 1024  # photos searched at once: the exact re-ranking holds QUERY_BLOCK x CANDIDATES rows
PCA_DIMS = 256  # the index compares rows on their first 256 principal axes; the candidates' cosines use them all
PCA_SAMPLE = 20_000  # rows the principal axes are computed from
INDEX_MIN_ROWS = 1_000  # fewer usable photos than this are always compared pair by pair
SEED = 0  # the training sample's and the k-means' seed: the same index, run to run


def search_method(setting: str, rows: int) -> str:
    """audit.search as run: auto is exact up to EXACT_UP_TO rows and the index above; index as set, but exact below
    INDEX_MIN_ROWS (too few rows to train it); exact as set."""
    if setting == "auto":
        return "exact" if rows <= EXACT_UP_TO else "index"
    return "exact" if rows < INDEX_MIN_ROWS else setting


def project(pca, unit: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """unit[rows] on the PCA's axes (as they are without one), block by block: never a full-width copy of many rows."""
    if pca is None:
        return np.ascontiguousarray(unit[rows])
    out = np.empty((len(rows), pca.d_out), dtype=np.float32)
    for start in range(0, len(rows), 16384):
        out[start : start + 16384] = pca.apply(np.ascontiguousarray(unit[rows[start : start + 16384]]))
    return out


def build_index(unit: np.ndarray, rows: np.ndarray) -> tuple:
    """A faiss index of unit[rows] (ids: their positions in unit), with the PCA it searches in: the first PCA_DIMS
    principal axes (trained on PCA_SAMPLE rows), about 4 sqrt(n) inverted lists (trained on at most 64 projected rows
    per list), 8-bit scalar codes; L2 distance, which ranks unit rows as cosine does (the PCA centres the rows, which
    would change inner products). Seeded samples: the same index run to run on one machine."""
    import faiss  # the audit's search for large sets: imported only when it is used

    dim = unit.shape[1]
    lists = max(1, min(int(4 * np.sqrt(len(rows))), len(rows) // 39))  # faiss wants 39 training rows per list
    order = np.random.default_rng(SEED).permutation(rows)
    pca = None
    if dim > PCA_DIMS:
        pca = faiss.PCAMatrix(dim, PCA_DIMS)
        pca.train(np.ascontiguousarray(unit[np.sort(order[:PCA_SAMPLE])]))
    index = faiss.index_factory(pca.d_out if pca else dim, f"IVF{lists},SQ8")
    index.cp.seed = SEED
    index.train(project(pca, unit, np.sort(order[: 64 * lists])))
    for start in range(0, len(rows), 65536):
        block = rows[start : start + 65536]
        index.add_with_ids(project(pca, unit, block), block.astype(np.int64))
    index.nprobe = PROBES
    return pca, index


def exact_candidates(unit: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's candidates (-1: none) re-ranked by their exact cosine, highest first (ties by position):
    positions and similarities, -1 and -inf where there was no candidate."""
    safe = np.where(candidates >= 0, candidates, 0)
    sims = np.einsum("qd,qkd->qk", unit[queries], unit[safe])
    sims = np.where(candidates >= 0, sims, -np.inf)
    order = np.lexsort((safe, -sims), axis=1)
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(sims, order, axis=1)


def indexed_neighbours(
    unit: np.ndarray, rows: np.ndarray, threshold: float, neighbours: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Over unit[rows]: near-duplicate pairs (i < j, positions in unit, cosine >= threshold; columns i, j,
    similarity) and each row's outlier score (its mean cosine distance to its `neighbours` nearest, less the nearest:
    itself or a copy), by the index; rows whose candidates all reach the threshold are compared with every row."""
    pca, index = build_index(unit, rows)
    k = min(max(CANDIDATES, neighbours + 1), len(rows))
    pairs, scores, crowded = [], np.zeros(len(rows)), []
    for start in tqdm(range(0, len(rows), QUERY_BLOCK), desc="audit: neighbours", unit="block"):
        queries = rows[start : start + QUERY_BLOCK]
        _, found = index.search(project(pca, unit, queries), k)
        found, sims = exact_candidates(unit, queries, found)
        near = np.isfinite(sims) & (sims >= threshold) & (found != queries[:, None])
        at, col = np.nonzero(near)
        pairs.append(pd.DataFrame({"i": queries[at], "j": found[at, col], "similarity": sims[at, col]}))
        distances = np.where(np.isfinite(sims), 1 - sims, np.nan)[:, 1 : neighbours + 1]  # less the nearest
        scores[start : start + len(queries)] = mean_found(distances)
        crowded.extend(queries[near.sum(axis=1) >= k - 1])
    if crowded:
        pairs.append(exact_rows(unit, rows, np.array(crowded), threshold))
    pairs = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame({"i": [], "j": [], "similarity": []})
    low, high = np.minimum(pairs.i, pairs.j), np.maximum(pairs.i, pairs.j)
    pairs = pairs.assign(i=low, j=high).drop_duplicates(["i", "j"]).sort_values(["i", "j"], kind="stable")
    return pairs.reset_index(drop=True).astype({"i": int, "j": int, "similarity": float}), scores


def mean_found(distances: np.ndarray) -> np.ndarray:
    """Each row's mean over the distances found (NaN: no candidate in the lists searched); 0 where none was."""
    found = np.isfinite(distances)
    return np.where(found, distances, 0).sum(axis=1) / np.maximum(found.sum(axis=1), 1)


def exact_rows(unit: np.ndarray, rows: np.ndarray, queries: np.ndarray, threshold: float) -> pd.DataFrame:
    """Every pair of a query and another of rows at cosine >= threshold, comparing blocks of queries with blocks of
    rows (never a copy of all the rows)."""
    found = []
    for start in range(0, len(queries), 256):
        block = queries[start : start + 256]
        block_rows = unit[block]
        for at_row in range(0, len(rows), 65536):
            others = rows[at_row : at_row + 65536]
            sims = block_rows @ unit[others].T
            at, col = np.nonzero((sims >= threshold) & (others[None, :] != block[:, None]))
            found.append(pd.DataFrame({"i": block[at], "j": others[col], "similarity": sims[at, col]}))
    return pd.concat(found, ignore_index=True)

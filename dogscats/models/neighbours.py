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
SEED = 0  # the training sample's and the k-means' seed: the same index, run to run


def search_method(setting: str, rows: int) -> str:
    """audit.search as run: exact or index as set; auto is exact up to EXACT_UP_TO rows, the index above."""
    if setting != "auto":
        return setting
    return "exact" if rows <= EXACT_UP_TO else "index"


def build_index(unit: np.ndarray, rows: np.ndarray):
    """A faiss index of unit[rows] (ids: their positions in unit): projected on the first PCA_DIMS principal axes,
    about 4 sqrt(n) inverted lists, 8-bit scalar codes; L2 distance, which ranks unit rows as cosine does (the PCA
    centres the rows, which would change inner products). Trained on a seeded sample of at most 64 rows per list."""
    import faiss  # the audit's search for large sets: imported only when it is used

    dim = unit.shape[1]
    lists = int(np.clip(4 * np.sqrt(len(rows)), 1, len(rows) // 39))  # faiss wants 39 training rows per list
    pca = f"PCA{PCA_DIMS}," if dim > PCA_DIMS else ""
    index = faiss.index_factory(dim, f"{pca}IVF{lists},SQ8")
    faiss.extract_index_ivf(index).cp.seed = SEED
    sample = np.sort(np.random.default_rng(SEED).permutation(rows)[: min(len(rows), 64 * lists)])
    index.train(np.ascontiguousarray(unit[sample]))
    for start in range(0, len(rows), 65536):
        block = rows[start : start + 65536]
        index.add_with_ids(np.ascontiguousarray(unit[block]), block.astype(np.int64))
    faiss.extract_index_ivf(index).nprobe = PROBES
    return index


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
    index = build_index(unit, rows)
    k = min(max(CANDIDATES, neighbours + 1), len(rows))
    pairs, scores, crowded = [], np.zeros(len(rows)), []
    for start in tqdm(range(0, len(rows), QUERY_BLOCK), desc="audit: neighbours", unit="block"):
        queries = rows[start : start + QUERY_BLOCK]
        _, found = index.search(np.ascontiguousarray(unit[queries]), k)
        found, sims = exact_candidates(unit, queries, found)
        near = np.isfinite(sims) & (sims >= threshold) & (found != queries[:, None])
        at, col = np.nonzero(near)
        pairs.append(pd.DataFrame({"i": queries[at], "j": found[at, col], "similarity": sims[at, col]}))
        distances = np.where(np.isfinite(sims), 1 - sims, 2.0)[:, 1 : neighbours + 1]  # less the nearest
        scores[start : start + len(queries)] = distances.mean(axis=1) if distances.shape[1] else 0.0
        crowded.extend(queries[near.sum(axis=1) >= k - 1])
    if crowded:
        pairs.append(exact_rows(unit, rows, np.array(crowded), threshold))
    pairs = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame({"i": [], "j": [], "similarity": []})
    low, high = np.minimum(pairs.i, pairs.j), np.maximum(pairs.i, pairs.j)
    pairs = pairs.assign(i=low, j=high).drop_duplicates(["i", "j"]).sort_values(["i", "j"], kind="stable")
    return pairs.reset_index(drop=True).astype({"i": int, "j": int, "similarity": float}), scores


def exact_rows(unit: np.ndarray, rows: np.ndarray, queries: np.ndarray, threshold: float) -> pd.DataFrame:
    """Every pair of a query and another of rows at cosine >= threshold, comparing blocks of queries with blocks of
    rows (never a copy of all the rows)."""
    found = []
    for start in range(0, len(queries), 256):
        block = queries[start : start + 256]
        for at_row in range(0, len(rows), 65536):
            others = rows[at_row : at_row + 65536]
            sims = unit[block] @ unit[others].T
            at, col = np.nonzero((sims >= threshold) & (others[None, :] != block[:, None]))
            found.append(pd.DataFrame({"i": block[at], "j": others[col], "similarity": sims[at, col]}))
    return pd.concat(found, ignore_index=True)

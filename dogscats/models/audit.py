"""A data audit of the labelled and test photos: likely wrong labels (confident learning on the out-of-fold
probabilities, cleanlab), exact (md5) and near (feature cosine) duplicates classed as leaks or conflicts, and outliers
(far from every photo in feature space: the mean cosine distance to the nearest photos); one table of findings and
an HTML page of them.

Every score is "higher = worse": a label issue's is 1 - p(given label) (cleanlab's self-confidence), a duplicate's the
two photos' cosine similarity (1 for the same bytes), an outlier's mean cosine distance to its nearest photos."""

import html
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.neighbors import NearestNeighbors
from tqdm import tqdm

from dogscats.data.feature_store import read_feature_blocks, split_layout
from dogscats.data.overrides import covered
from dogscats.models.evaluation import thumbnail_html
from dogscats.models.neighbours import indexed_neighbours

KINDS = ("label", "conflict", "leak", "duplicate", "outlier")  # the table's and the page's order
COLUMNS = ["id", "kind", "score", "other_id", "given", "suggested", "split", "fold", "other_split", "other_fold"]


def label_issues(ids: list[str], y: np.ndarray, p: np.ndarray, p_tiebreak: np.ndarray) -> pd.DataFrame:
    """The photos whose label looks wrong: those confident learning flags (cleanlab's find_label_issues, prune by
    noise rate) and those whose most probable class is not their label: id, given and suggested (argmax) class index,
    score = 1 - p(given); the worst first, ties (clipped probabilities) by the same score on p_tiebreak (e.g.
    unclipped), then id. Nothing when fewer than two classes are labelled.

    Confident learning counts a photo for another class only above that class's mean self-confidence (0.97 on the
    shared sample): with 40 labels flipped it left out 3 flipped photos at p(other class) 0.88 (docs/results.md)."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return pd.DataFrame({"id": [], "given": [], "suggested": [], "score": []})
    confident = find_label_issues(labels=y, pred_probs=p, filter_by="prune_by_noise_rate", n_jobs=1)
    flagged = confident | (p.argmax(axis=1) != y)
    score = 1 - get_label_quality_scores(y, p, method="self_confidence")
    tiebreak = 1 - get_label_quality_scores(y, p_tiebreak, method="self_confidence")
    rows = pd.DataFrame({"id": ids, "given": y, "suggested": p.argmax(axis=1), "score": score, "tiebreak": tiebreak})[
        flagged
    ]
    rows = rows.sort_values(["score", "tiebreak", "id"], ascending=[False, False, True], kind="stable")
    return rows.drop(columns="tiebreak").reset_index(drop=True)


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero), in float32."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1)


def audit_features(paths: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The labelled then the test photos' ids, features and usable flags from the backbones' feature files: each
    backbone's rows scaled to length 1, side by side and scaled by 1/sqrt(B), so that the cosine of two photos is the
    mean of their backbones' cosines. Read block by block into one matrix: memory is the matrix's own."""
    ids, usable, sizes = [], [], []
    for split in ("train", "test"):
        layouts = [split_layout(path, split) for path in paths]
        if any(layout[0] != layouts[0][0] for layout in layouts):
            raise ValueError(f"{', '.join(paths)}: their {split} images differ; rerun the features stages")
        ids += layouts[0][0]
        usable.append(layouts[0][2])
        sizes.append(len(layouts[0][0]))
        dims = [layout[1] for layout in layouts]  # each backbone's width, the same in both splits
    features = np.zeros((len(ids), sum(dims)), dtype=np.float32)
    for b, path in enumerate(paths):
        cols = slice(sum(dims[:b]), sum(dims[: b + 1]))
        for split, first in zip(("train", "test"), (0, sizes[0]), strict=True):
            for start, block in read_feature_blocks(path, split):
                features[first + start : first + start + len(block), cols] = unit_rows(block) / np.sqrt(len(paths))
    return ids, features, np.concatenate(usable)


def near_pairs(features: np.ndarray, threshold: float, block: int = 1024) -> pd.DataFrame:
    """Every pair (i < j) of rows whose cosine similarity is at least threshold, with it (columns i, j, similarity),
    by blocks of rows against the rows after them: memory block x N, never N x N."""
    unit = unit_rows(features)
    found = []
    for start in tqdm(range(0, len(unit), block), desc="near duplicates", unit="block", disable=len(unit) <= block):
        similarity = unit[start : start + block] @ unit[start:].T
        rows, cols = np.nonzero(np.triu(similarity, k=1) >= threshold)  # j > i within the block's own rows
        found.append(pd.DataFrame({"i": rows + start, "j": cols + start, "similarity": similarity[rows, cols]}))
    pairs = pd.concat(found, ignore_index=True) if found else pd.DataFrame({"i": [], "j": [], "similarity": []})
    return pairs.astype({"i": int, "j": int, "similarity": float})


def exact_pairs(md5s: list[str]) -> pd.DataFrame:
    """Every pair (i < j) of rows with the same (non-empty) md5, similarity 1."""
    frame = pd.DataFrame({"md5": md5s, "i": np.arange(len(md5s))})
    frame = frame[frame.md5 != ""]
    both = frame.merge(frame, on="md5", suffixes=("", "_other"))
    both = both[both.i < both.i_other]
    return pd.DataFrame({"i": both.i.to_numpy(), "j": both.i_other.to_numpy(), "similarity": 1.0}).astype(
        {"i": int, "j": int}
    )


def duplicate_kind(split: tuple[str, str], fold: tuple[int, int], label: tuple[str, str]) -> str:
    """conflict: both labelled, with different labels; leak: one labelled and one test, or labelled in different
    folds (the out-of-fold figures saw the photo); duplicate otherwise."""
    if label[0] and label[1] and label[0] != label[1]:
        return "conflict"
    if split[0] != split[1] or (split[0] == "train" and fold[0] != fold[1]):
        return "leak"
    return "duplicate"


def duplicates(manifest: pd.DataFrame, near: pd.DataFrame) -> pd.DataFrame:
    """Exact (md5) and near duplicate pairs (near: positions i < j in the manifest's rows, similarity: neighbour_search)
    of the manifest's rows (id, split, fold, label, md5), one row each: id, other_id (manifest order), kind, score =
    similarity, exact; an exact pair is not listed again as near."""
    exact = exact_pairs(manifest.md5.tolist())
    pairs = pd.concat([exact.assign(exact=True), near.assign(exact=False)], ignore_index=True)
    pairs = pairs.drop_duplicates(["i", "j"], keep="first")  # exact first
    rows = manifest.reset_index(drop=True)
    first, second = rows.iloc[pairs.i.to_numpy()], rows.iloc[pairs.j.to_numpy()]
    kinds = [
        duplicate_kind((a.split, b.split), (a.fold, b.fold), (a.label, b.label))
        for a, b in zip(first.itertuples(), second.itertuples(), strict=True)
    ]
    return pd.DataFrame(
        {
            "id": first.id.to_numpy(),
            "other_id": second.id.to_numpy(),
            "kind": kinds,
            "score": pairs.similarity.to_numpy(),
            "exact": pairs.exact.to_numpy(),
        }
    )


def neighbour_search(
    features: np.ndarray, usable: np.ndarray, threshold: float, neighbours: int, method: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Among the usable rows of features (unit rows: audit_features): the near-duplicate pairs (i < j, positions in
    features, cosine >= threshold) and each usable row's outlier score (outlier_scores), every pair compared (method
    exact) or by an approximate index (method index: dogscats.models.neighbours)."""
    positions = np.flatnonzero(usable)
    if method == "index":
        return indexed_neighbours(features, positions, threshold, neighbours)
    kept = features[positions]
    near = near_pairs(kept, threshold)
    near = near.assign(i=positions[near.i.to_numpy()], j=positions[near.j.to_numpy()])
    return near, outlier_scores(kept, neighbours)


def outlier_scores(features: np.ndarray, neighbours: int) -> np.ndarray:
    """Each row's mean cosine distance to its `neighbours` nearest other rows (sklearn's brute-force search, in
    blocks): in [0, 2], higher = further from every other photo, whatever its class; 0 for a lone row. The distance
    cleanlab's OutOfDistribution starts from, before its exp(-d / median) squashes the far tail together."""
    neighbours = min(neighbours, len(features) - 1)
    if neighbours < 1:
        return np.zeros(len(features))
    search = NearestNeighbors(n_neighbors=neighbours + 1, metric="cosine", algorithm="brute").fit(features)
    distances, _ = search.kneighbors(features)
    return np.sort(distances, axis=1)[:, 1:].mean(axis=1)  # less the nearest: the row itself (or a copy at 0)


def outliers(ids: list[str], scores: np.ndarray, fence: float) -> pd.DataFrame:
    """The rows scoring above Q3 + fence x IQR of all the scores (Tukey's fence), the worst first: id, score."""
    q1, q3 = np.percentile(scores, [25, 75]) if len(scores) else (0.0, 0.0)
    rows = pd.DataFrame({"id": ids, "score": scores})
    rows = rows[rows.score > q3 + fence * (q3 - q1)]
    return rows.sort_values(["score", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def findings_table(
    manifest: pd.DataFrame,
    labels: pd.DataFrame,
    pairs: pd.DataFrame,
    far: pd.DataFrame,
    classes: list[str],
    decided: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per finding (COLUMNS and file, other_file, exact, decision, other_decision, reviewed), the kinds in
    KINDS' order, each worst first (ties by id): the label issues (given, suggested as class names), the duplicate
    pairs and the outliers, with each photo's split, fold and file (its source: the path under data.raw) from the
    manifest, indexed by id, and its decision in data/overrides.csv (decided: id to action; "" for none), and whether
    the decisions cover the finding (data.overrides.covered)."""
    by_kind = [
        labels.assign(
            kind="label",
            given=[classes[i] for i in labels.given],
            suggested=[classes[i] for i in labels.suggested],
        )
    ]
    by_kind += [pairs[pairs.kind == kind] for kind in ("conflict", "leak", "duplicate")]
    by_kind.append(far.assign(kind="outlier"))
    table = pd.concat([frame.sort_values(["score", "id"], ascending=[False, True], kind="stable") for frame in by_kind])
    table = table.reset_index(drop=True).reindex(columns=[*COLUMNS, "exact"])
    table["other_id"] = table.other_id.fillna("")
    for side, column in (("", "id"), ("other_", "other_id")):
        table[f"{side}split"] = table[column].map(manifest.split).fillna("")
        table[f"{side}fold"] = table[column].map(manifest.fold).astype("Int64")
        table[f"{side}file"] = table[column].map(manifest.source).fillna("")
    for column in ("given", "suggested"):
        table[column] = table[column].fillna("")
    table["exact"] = table.exact.astype("boolean")
    decided = decided or {}
    table["decision"] = table.id.map(lambda id_: decided.get(id_, ""))
    table["other_decision"] = table.other_id.map(lambda id_: decided.get(id_, "") if id_ else "")
    table["reviewed"] = [  # a finding of one photo has no other: "" is neither a decision nor a labelled split
        covered([row.decision, row.other_decision], [row.split, row.other_split]) for row in table.itertuples()
    ]
    return table


def counts(table: pd.DataFrame) -> dict:
    """Findings per kind, every kind present (0 when none)."""
    return {kind: int((table.kind == kind).sum()) for kind in KINDS}


def _caption(row) -> str:
    """A finding's caption: what was found, its score, and where the photos lie."""
    where = f"{row.split}" + (f" fold {row.fold}" if row.split == "train" else "")
    if row.kind == "label":
        text = f"{row.id} ({where}): labelled {row.given}, looks like {row.suggested}; 1 - p(given) = {row.score:.4f}"
    elif row.kind == "outlier":
        text = f"{row.id} ({where}): outlier score {row.score:.4f}"
    else:
        other = f"{row.other_split}" + (f" fold {row.other_fold}" if row.other_split == "train" else "")
        match = "same bytes" if row.exact else f"cosine {row.score:.4f}"
        text = f"{row.id} ({where}) and {row.other_id} ({other}): {match}"
    if row.reviewed:
        done = ", ".join(f"{i} {d}" for i, d in ((row.id, row.decision), (row.other_id, row.other_decision)) if d)
        text += f"; reviewed ({done})" if done else "; nothing to decide (test photos)"
    return html.escape(text)


def cam_rows(table: pd.DataFrame, show: int, classes: list[str]) -> tuple[list[int], list[int]]:
    """The table's rows whose photos the page shows with a class activation map, and the class each map explains:
    the first `show` label issues, each for its suggested class (where the photo looks like it). A map answers "why
    this class?", a label issue's question; an outlier's or a duplicate's photo speaks for itself."""
    issues = table[table.kind == "label"].head(show)
    return issues.index.tolist(), [classes.index(c) for c in issues.suggested]


CAM_NOTE = (
    "<p>Beside each label issue's photo: its class activation map for the suggested class, over the photo as the"
    " network saw it (red: where the photo looks most like that class; blue: least).</p>"
)


def audit_html(table: pd.DataFrame, root: Path | str, show: int, title: str, overlays: dict | None = None) -> str:
    """The findings page: per kind, its count and its first `show` rows as thumbnails (both photos of a pair; their
    files lie under root, the manifest's image root), beside a photo its class activation map where overlays (data:
    URIs by the table's index: cam_rows) has one."""
    overlays = overlays or {}
    sections = []
    for kind in KINDS:
        rows = table[table.kind == kind]
        cards = []
        for index, row in zip(rows.index[:show], rows.head(show).itertuples(), strict=True):
            images = thumbnail_html(str(Path(root) / row.file), row.id)
            if overlays.get(index):
                images += f'<img class="cam" src="{overlays[index]}" alt="{html.escape(row.id)}: CAM">'
            if row.other_id:
                images += thumbnail_html(str(Path(root) / row.other_file), row.other_id)
            cards.append(f'<figure class="{kind}">{images}<figcaption>{_caption(row)}</figcaption></figure>')
        shown = f"the first {min(show, len(rows))} of {len(rows)}" if len(rows) > show else f"{len(rows)}"
        sections.append(f"<h2>{kind}: {shown}</h2>{''.join(cards)}")
    style = (
        "body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:6px;vertical-align:top;"
        "max-width:350px}img{max-width:170px;max-height:170px;margin-right:4px}figcaption{font-size:13px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{CAM_NOTE if overlays else ''}"
        f"{''.join(sections)}</body></html>\n"
    )

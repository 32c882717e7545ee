"""The data audit: label issues from out-of-fold probabilities, exact and near duplicates classed as leaks or
conflicts, outliers, the findings table and page, and the audit stage end to end on a tiny project."""

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from dogscats.data.feature_store import write_split
from dogscats.models.audit import (
    KINDS,
    audit_features,
    audit_html,
    cam_rows,
    counts,
    duplicate_kind,
    duplicates,
    exact_pairs,
    findings_table,
    label_issues,
    near_pairs,
    neighbour_search,
    outlier_scores,
    outliers,
    unit_rows,
)
from stages import audit, prepare

from ..conftest import PREPARE_ARGS, bomb_png, write_image

AUDIT_ARGS = (
    "data/split.csv",
    "data/oof_predictions.csv",
    "data/features",
    "data/audit.csv",
    "metrics/audit.html",
    "metrics/audit.json",
)


def _oof(n: int, flips: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True classes, given labels (flipped at flips) and a good model's out-of-fold probabilities of the truth."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    p_dog = np.where(truth == 1, rng.uniform(0.6, 0.99, n), rng.uniform(0.01, 0.4, n))
    given = truth.copy()
    given[flips] = 1 - given[flips]
    return truth, given, np.stack([1 - p_dog, p_dog], axis=1)


def test_label_issues_rank_the_planted_flips_first_with_given_and_suggested_labels():
    flips = [3, 17, 40, 88, 123, 150]
    truth, given, p = _oof(200, flips)
    p[:, 1] = np.clip(p[:, 1], 0.05, 0.95)  # clipped: ties, broken by the unclipped probabilities below
    p[:, 0] = 1 - p[:, 1]
    _, _, unclipped = _oof(200, flips)
    found = label_issues([f"img{i:03d}" for i in range(200)], given, p, unclipped)
    assert set(found.id[: len(flips)]) == {f"img{i:03d}" for i in flips}
    top = found.head(len(flips))
    assert (top.suggested.to_numpy() == truth[[int(i[3:]) for i in top.id]]).all()
    assert (found.given != found.suggested).all() and found.score.is_monotonic_decreasing
    first = int(found.id[0][3:])
    assert found.given[0] == given[first] and found.score[0] == pytest.approx(1 - p[first, given[first]])


def test_label_issues_of_one_class_are_none():
    assert label_issues(["a", "b"], np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]), np.ones((2, 2))).empty


def test_near_pairs_by_blocks_equal_the_full_similarity_matrix():
    rng = np.random.default_rng(1)
    features = np.abs(rng.normal(size=(50, 8))).astype(np.float32)
    features[30] = features[4] * 2 + 0.01  # a near copy at another scale
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    rows, cols = np.nonzero(np.triu(similarity, k=1) >= 0.93)
    pairs = near_pairs(features, 0.93, block=7)
    assert sorted(zip(pairs.i, pairs.j, strict=True)) == sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    assert (4, 30) in set(zip(pairs.i, pairs.j, strict=True)) and (pairs.i < pairs.j).all()


def test_audit_features_are_each_backbones_unit_rows_side_by_side(tmp_path):
    rng = np.random.default_rng(3)
    parts = {name: rng.normal(size=(7, dim)).astype(np.float32) for name, dim in (("b0", 5), ("b1", 3))}
    parts["b0"][2] = 0  # a photo that did not decode: zero features stay zero
    for name, features in parts.items():
        with h5py.File(tmp_path / f"{name}.h5", "w") as h5:
            write_split(h5, "train", ["a", "b", "c", "d"], np.zeros(4), [True] * 4, [features[:4]], features.shape[1])
            write_split(
                h5, "test", ["t1", "t2", "t3"], -np.ones(3), [True, False, True], [features[4:]], features.shape[1]
            )
    ids, features, usable = audit_features([str(tmp_path / "b0.h5"), str(tmp_path / "b1.h5")])
    expected = (np.concatenate([unit_rows(parts["b0"]), unit_rows(parts["b1"])], axis=1) / np.sqrt(2)).astype(
        np.float32
    )
    assert ids == ["a", "b", "c", "d", "t1", "t2", "t3"] and usable.tolist() == [True] * 5 + [False, True]
    np.testing.assert_array_equal(features, expected)
    assert np.allclose(np.linalg.norm(features[[0, 1, 3]], axis=1), 1) and features[2, :5].tolist() == [0.0] * 5


def test_exact_pairs_skip_files_without_an_md5():
    pairs = exact_pairs(["a", "b", "a", "", "", "a"])
    assert sorted(zip(pairs.i, pairs.j, strict=True)) == [(0, 2), (0, 5), (2, 5)] and (pairs.similarity == 1).all()


@pytest.mark.parametrize(
    ("split", "fold", "label", "kind"),
    [
        (("train", "train"), (1, 1), ("cat", "cat"), "duplicate"),
        (("train", "train"), (1, 2), ("cat", "cat"), "leak"),  # across folds: the out-of-fold figures saw it
        (("train", "test"), (1, 0), ("cat", ""), "leak"),
        (("test", "test"), (0, 0), ("", ""), "duplicate"),
        (("train", "train"), (1, 2), ("cat", "dog"), "conflict"),  # conflict first, whatever the folds
        (("train", "train"), (3, 3), ("cat", "dog"), "conflict"),
    ],
)
def test_duplicate_kinds(split, fold, label, kind):
    assert duplicate_kind(split, fold, label) == kind


def _manifest() -> pd.DataFrame:
    """Nine photos: a/b the same bytes across folds, c/d the same bytes with two labels, e near t1 (test), f near g
    (same fold), t2 unrelated; h did not decode (no md5, no features)."""
    rows = [
        ("a", "cat", "train", 1, "m1"),
        ("b", "cat", "train", 2, "m1"),
        ("c", "cat", "train", 1, "m2"),
        ("d", "dog", "train", 1, "m2"),
        ("e", "dog", "train", 2, "m3"),
        ("f", "dog", "train", 3, "m4"),
        ("g", "dog", "train", 3, "m5"),
        ("h", "cat", "train", 3, ""),
        ("t1", "", "test", 0, "m6"),
        ("t2", "", "test", 0, "m7"),
    ]
    frame = pd.DataFrame(rows, columns=["id", "label", "split", "fold", "md5"])
    return frame.assign(source=[f"{split}/{id_}.jpg" for id_, split in zip(frame.id, frame.split, strict=True)])


def _features(manifest: pd.DataFrame) -> np.ndarray:
    """Orthogonal directions, one per md5, with e/t1 and f/g near each other (cosine about 0.99)."""
    directions = np.eye(len(manifest), dtype=np.float32)
    groups = {"m1": 0, "m2": 1, "m3": 2, "m4": 3, "m5": 3, "m6": 2, "m7": 5, "": 6}
    features = np.stack([directions[groups[md5]] for md5 in manifest.md5])
    features[manifest.id == "g"] += 0.1 * directions[7]
    features[manifest.id == "t1"] += 0.1 * directions[8]
    return features


def _near(manifest: pd.DataFrame, usable: np.ndarray, threshold: float) -> pd.DataFrame:
    """The near pairs of _features among the usable rows, every pair compared."""
    return neighbour_search(unit_rows(_features(manifest)), usable, threshold, 3, "exact")[0]


def test_duplicates_find_exact_and_near_pairs_and_class_them():
    manifest = _manifest()
    usable = (manifest.md5 != "").to_numpy()
    found = duplicates(manifest, _near(manifest, usable, 0.95))
    got = {(row.id, row.other_id): (row.kind, row.exact) for row in found.itertuples()}
    assert got == {
        ("a", "b"): ("leak", True),
        ("c", "d"): ("conflict", True),
        ("e", "t1"): ("leak", False),
        ("f", "g"): ("duplicate", False),
    }
    assert found.set_index("id").score["e"] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    assert duplicates(manifest, _near(manifest, usable, 0.999)).id.tolist() == ["a", "c"]  # exact only


def test_outliers_are_the_photos_far_from_every_other():
    rng = np.random.default_rng(2)
    centres = np.abs(rng.normal(size=(2, 16)))
    features = np.concatenate([centres[i % 2] + rng.normal(0, 0.05, 16) for i in range(60)]).reshape(60, 16)
    features[17] = np.abs(rng.normal(size=16)) * 3  # another kind of photo altogether
    scores = outlier_scores(features, 10)
    assert scores.shape == (60,) and scores.argmax() == 17 and (scores >= 0).all() and (scores <= 2).all()
    found = outliers([f"p{i}" for i in range(60)], scores, fence=3.0)
    assert found.id.tolist() == ["p17"]
    assert outlier_scores(features[:1], 10).tolist() == [0.0]  # one photo: no neighbours


def _findings(decided: dict[str, str] | None = None) -> pd.DataFrame:
    """The findings table of _manifest's photos: two label issues (e, a), their duplicate pairs, an outlier (t2)."""
    manifest = _manifest()
    usable = (manifest.md5 != "").to_numpy()
    pairs = duplicates(manifest, _near(manifest, usable, 0.95))
    labels = pd.DataFrame({"id": ["e", "a"], "given": [1, 0], "suggested": [0, 1], "score": [0.9, 0.7]})
    far = pd.DataFrame({"id": ["t2"], "score": [0.5]})
    return findings_table(manifest.set_index("id"), labels, pairs, far, ["cat", "dog"], decided)


def test_findings_table_orders_each_kind_worst_first_and_names_the_photos():
    table = _findings()
    assert table.kind.tolist() == ["label", "label", "conflict", "leak", "leak", "duplicate", "outlier"]
    assert table.id.tolist() == ["e", "a", "c", "a", "e", "f", "t2"]
    first = table.iloc[0]
    assert (first.given, first.suggested, first.split, first.fold, first.file) == (
        "dog",
        "cat",
        "train",
        2,
        "train/e.jpg",
    )
    leak = table.iloc[4]
    assert (leak.other_id, leak.other_split, leak.other_file) == ("t1", "test", "test/t1.jpg")
    assert counts(table) == {"label": 2, "conflict": 1, "leak": 2, "duplicate": 1, "outlier": 1}
    assert list(counts(table.iloc[:0])) == list(KINDS)
    assert table.decision.tolist() == [""] * 7 and not table.reviewed.iloc[:6].any()  # no decisions yet
    assert table.reviewed.iloc[6]  # an outlier among the test photos: nothing to decide


def test_a_finding_is_reviewed_once_its_labelled_photos_are_decided_or_one_is_excluded():
    table = _findings({"e": "keep", "c": "relabel:cat", "f": "exclude"})
    found = {
        (row.kind, row.id, row.other_id): (row.decision, row.other_decision, row.reviewed) for row in table.itertuples()
    }
    assert found[("label", "e", "")] == ("keep", "", True)
    assert found[("label", "a", "")] == ("", "", False)
    conflict = next(key for key in found if key[0] == "conflict")
    assert found[conflict][0] == "relabel:cat" and not found[conflict][2]  # its other labelled photo is undecided
    leak_to_test = next(key for key in found if key[0] == "leak" and key[2] == "t1")
    assert found[leak_to_test] == ("keep", "", True)  # the labelled photo decided; a test photo cannot be
    duplicate = next(key for key in found if key[0] == "duplicate")
    assert found[duplicate][2]  # one of the pair excluded: nothing left to decide


def test_the_page_shows_at_most_show_findings_of_each_kind_and_survives_an_unreadable_photo(tmp_path):

    for name in ("a", "b", "c"):
        write_image(tmp_path / "train" / f"{name}.jpg", (200, 60, 40))
    (tmp_path / "train" / "c.jpg").write_bytes(b"not a jpeg")
    table = pd.DataFrame(
        {
            "id": ["a", "b", "a"],
            "kind": ["label", "label", "leak"],
            "score": [0.9, 0.8, 1.0],
            "other_id": ["", "", "c"],
            "given": ["cat", "cat", ""],
            "suggested": ["dog", "dog", ""],
            "split": ["train"] * 3,
            "fold": [1, 2, 1],
            "other_split": ["", "", "train"],
            "other_fold": [None, None, 2],
            "exact": [None, None, True],
            "file": ["train/a.jpg", "train/b.jpg", "train/a.jpg"],
            "other_file": ["", "", "train/c.jpg"],
            "decision": ["keep", "", ""],
            "other_decision": ["", "", ""],
            "reviewed": [True, False, False],
        }
    )
    page = audit_html(table, str(tmp_path), show=1, title="audit")
    assert page.count('<img src="data:image/jpeg;base64,') == 2  # one label issue of two, one side of the leak
    assert "label: the first 1 of 2" in page and "c: unreadable" in page and "same bytes" in page
    cams = {0: "data:image/jpeg;base64,CAM0", 1: "data:image/jpeg;base64,CAM1"}  # row 1 is not shown
    mapped = audit_html(table, str(tmp_path), show=1, title="audit", overlays=cams)
    assert mapped.count('<img class="cam" src="data:image/jpeg;base64,CAM') == 1 and "CAM0" in mapped
    assert "suggested class" in mapped and "suggested class" not in page


def _audit_inputs(raw: Path | str, in_project) -> None:
    """A prepared project of raw (audit.show 3): random features, and out-of-fold probabilities that find each photo
    of its class but dog.5, which looks like a cat."""
    in_project(data={"raw": str(raw)}, audit={"show": 3})
    prepare.main(*PREPARE_ARGS)
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(0)
    Path("data/features").mkdir()
    with h5py.File("data/features/efficientnet_lite2.h5", "w") as h5:
        h5.attrs["classes"] = ["cat", "dog"]
        for split in ("train", "test"):
            rows = manifest[manifest.split == split]
            features = np.abs(rng.normal(size=(len(rows), 32))).astype(np.float32)
            labels = np.array([{"cat": 0, "dog": 1}.get(label, -1) for label in rows.label])
            write_split(h5, split, rows.id.tolist(), labels, [True] * len(rows), [features], 32)
    labelled = manifest[manifest.split == "train"]
    y = (labelled.label == "dog").to_numpy().astype(int)
    p_dog = np.where(y == 1, 0.9, 0.1)
    p_dog[labelled.id.to_numpy() == "dog.5"] = 0.02  # labelled dog, looks like a cat
    oof = pd.DataFrame({"id": labelled.id, "label": y, "fold": labelled.fold, "p_cat": 1 - p_dog, "p_dog": p_dog})
    oof.assign(p_cat_head=oof.p_cat, p_dog_head=oof.p_dog).to_csv("data/oof_predictions.csv", index=False)


def test_the_audit_stage_writes_the_table_the_page_and_the_counts(kaggle_raw, in_project):
    (kaggle_raw / "test" / "7.jpg").write_bytes((kaggle_raw / "train" / "cat.2.jpg").read_bytes())  # a leak
    _audit_inputs(kaggle_raw, in_project)
    audit.main(*AUDIT_ARGS)
    table = pd.read_csv("data/audit.csv", dtype=str, keep_default_na=False)
    assert list(table.columns[:4]) == ["id", "kind", "score", "other_id"]
    label = table[table.kind == "label"]
    assert label.id.tolist()[:1] == ["dog.5"] and label.suggested.tolist()[:1] == ["cat"]
    leak = table[(table.kind == "leak") & (table.id == "cat.2")]
    assert leak.other_id.tolist() == ["7"] and leak.exact.tolist() == ["True"]  # the same bytes
    found = json.loads(Path("metrics/audit.json").read_text())
    assert found == {kind: int((table.kind == kind).sum()) for kind in KINDS} and found["leak"] >= 1
    page = Path("metrics/audit.html").read_text()
    assert page.count('<img src="data:image/jpeg;base64,') > 0 and 'class="cam"' not in page  # no classifier given
    first = Path("data/audit.csv").read_bytes(), Path("metrics/audit.html").read_bytes()
    audit.main(*AUDIT_ARGS)
    assert (Path("data/audit.csv").read_bytes(), Path("metrics/audit.html").read_bytes()) == first  # deterministic
    Path("data/overrides.csv").write_text("id,action\ndog.5,keep\n")
    audit.main(*AUDIT_ARGS, "", "data/overrides.csv")
    table = pd.read_csv("data/audit.csv", dtype=str, keep_default_na=False).set_index(["kind", "id"])
    assert table.loc[("label", "dog.5"), ["decision", "reviewed"]].tolist() == ["keep", "True"]
    assert "dog.5 keep" in Path("metrics/audit.html").read_text()


def test_a_tables_audit_page_finds_its_photos_and_maps_each_label_issue(kaggle_raw, in_project, capsys):
    from ..product.test_explain import export_tiny

    sources = sorted(p.relative_to(kaggle_raw.parent) for p in kaggle_raw.rglob("*.jpg"))
    labels = ["" if p.parent.name == "test" else p.name.split(".")[0] for p in sources]
    table_path = kaggle_raw.parent / "photos.csv"
    pd.DataFrame({"path": [str(p) for p in sources], "label": labels, "id": [p.stem for p in sources]}).to_csv(
        table_path, index=False
    )
    _audit_inputs(table_path, in_project)
    export_tiny(Path("models/classifier"), ["cat", "dog"])
    audit.main(*AUDIT_ARGS, "models/classifier")
    table = pd.read_csv("data/audit.csv", dtype=str, keep_default_na=False)
    shown = min(3, int((table.kind == "label").sum()))
    page = Path("metrics/audit.html").read_text()
    assert "unreadable" not in page and "no thumbnail" not in capsys.readouterr().err  # under the table's folder
    assert shown >= 1 and page.count('<img class="cam" src="data:image/jpeg;base64,') == shown
    assert "class activation map for the suggested class" in page
    audit.main(*AUDIT_ARGS, "models/missing")  # no classifier: the page without maps, and a line saying why
    assert 'class="cam"' not in Path("metrics/audit.html").read_text()
    assert "audit: metrics/audit.html: no class activation maps" in capsys.readouterr().err


def test_the_maps_are_the_shown_label_issues_for_their_suggested_class(tmp_path):
    table = pd.DataFrame(
        {"kind": ["label", "label", "label", "leak", "outlier"], "suggested": ["dog", "bird", "cat", "", ""]}
    ).set_index(pd.Index([0, 1, 2, 3, 4]))
    assert cam_rows(table, 2, ["bird", "cat", "dog"]) == ([0, 1], [2, 0])
    assert cam_rows(table[table.kind != "label"], 2, ["bird", "cat", "dog"]) == ([], [])


def test_the_audit_stage_shows_two_identical_unreadable_photos_with_their_reason(kaggle_raw, in_project):
    """Finding 7: two identical decompression bombs among the test photos crashed the thumbnails: no audit.html."""
    bomb_png(kaggle_raw / "test" / "8.png")
    (kaggle_raw / "test" / "9.png").write_bytes((kaggle_raw / "test" / "8.png").read_bytes())
    for name in ("8.png", "9.png"):  # the Kaggle layout's test photos are N.jpg: the same bytes, named so
        (kaggle_raw / "test" / name).rename(kaggle_raw / "test" / name.replace(".png", ".jpg"))
    _audit_inputs(kaggle_raw, in_project)
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False).set_index("id")
    assert "DecompressionBombError" in manifest.loc["8", "problem"]  # kept, flagged, as every unreadable test photo
    audit.main(*AUDIT_ARGS)
    table = pd.read_csv("data/audit.csv", dtype=str, keep_default_na=False)
    assert ((table.id == "8") & (table.other_id == "9") & (table.exact == "True")).any()
    page = Path("metrics/audit.html").read_text()
    assert "8: unreadable (DecompressionBombError" in page and "9: unreadable (DecompressionBombError" in page

"""The audit's approximate neighbour search against the exact one it stands in for."""

import numpy as np
import pytest

from dogscats.models.audit import neighbour_search, unit_rows
from dogscats.models.neighbours import CANDIDATES, EXACT_UP_TO, INDEX_MIN_ROWS, mean_found, search_method


def _photos(rows: int = 3000, dim: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows in 30 clusters, with planted near copies: 20 pairs, one crowd of CANDIDATES + 8 copies of a photo
    (more than the index proposes), and one photo far from all; the last row unusable."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(30, dim))
    features = centres[rng.integers(0, 30, rows)] + rng.normal(0, 0.6, (rows, dim))
    for n in range(20):
        features[100 + n] = features[2000 + n] + rng.normal(0, 0.05, dim)
    crowd = np.arange(500, 500 + CANDIDATES + 8)
    features[crowd] = features[499] + rng.normal(0, 0.02, (len(crowd), dim))
    features[7] = rng.normal(0, 5, dim)  # like nothing else
    usable = np.ones(rows, dtype=bool)
    usable[-1] = False
    return unit_rows(features), usable


@pytest.mark.parametrize("dim", [48, 300])  # 300: the index compares the first 256 principal axes
def test_the_index_finds_the_exact_searchs_pairs_with_their_exact_similarities_run_after_run(dim):
    features, usable = _photos(dim=dim)
    exact, exact_scores = neighbour_search(features, usable, 0.95, 10, "exact")
    found, scores = neighbour_search(features, usable, 0.95, 10, "index")
    assert len(exact) > (CANDIDATES + 9) * (CANDIDATES + 8) / 2  # the crowd's pairs are all there
    key = ["i", "j"]
    assert found[key].values.tolist() == exact.sort_values(key)[key].values.tolist()
    np.testing.assert_allclose(found.sort_values(key).similarity, exact.sort_values(key).similarity, atol=1e-5)
    assert (found.i < found.j).all() and found.j.max() < len(features) - 1  # never the unusable row
    again, scores_again = neighbour_search(features, usable, 0.95, 10, "index")
    assert again.equals(found) and np.array_equal(scores_again, scores)
    assert scores.shape == exact_scores.shape == (usable.sum(),)
    assert scores.argmax() == exact_scores.argmax() == 7
    assert (scores >= exact_scores - 1e-5).all()  # a neighbour missed leaves the mean distance no smaller
    assert np.median(scores - exact_scores) < 1e-3  # and most photos' nearest ten are found


def test_search_method_is_exact_for_small_sets_under_auto():
    assert search_method("auto", EXACT_UP_TO) == "exact" and search_method("auto", EXACT_UP_TO + 1) == "index"
    assert search_method("index", INDEX_MIN_ROWS) == "index" and search_method("exact", 10**7) == "exact"
    assert search_method("index", INDEX_MIN_ROWS - 1) == "exact"  # too few rows to train an index


def test_a_candidate_the_lists_did_not_give_counts_for_nothing():
    distances = np.array([[0.1, 0.3], [0.2, np.nan], [np.nan, np.nan]])
    assert mean_found(distances).tolist() == pytest.approx([0.2, 0.2, 0.0])

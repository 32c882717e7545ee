"""data/overrides.csv: exclude and relabel rows applied to the scanned photos, and prepare's counts."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from dogscats.data.overrides import apply_overrides, read_overrides
from stages import prepare

from ..conftest import PREPARE_ARGS

IMAGES = pd.DataFrame(
    {
        "id": ["cat.1", "cat.2", "dog.1", "dog.2", "7"],
        "label": ["cat", "cat", "dog", "dog", ""],
        "split": ["train", "train", "train", "train", "test"],
        "source": ["train/cat.1.jpg", "train/cat.2.jpg", "train/dog.1.jpg", "train/dog.2.jpg", "test/7.jpg"],
    }
)


def _overrides(tmp_path: Path, rows: str) -> tuple[pd.DataFrame, Path]:
    path = tmp_path / "overrides.csv"
    path.write_text("id,action\n" + rows)
    return read_overrides(path), path


def test_exclude_drops_and_relabel_changes_a_labelled_photo(tmp_path):
    overrides, path = _overrides(tmp_path, "cat.2,exclude\ndog.1, relabel:cat\ndog.2,keep\n")
    images, counts = apply_overrides(IMAGES, overrides, path)
    assert images.id.tolist() == ["cat.1", "dog.1", "dog.2", "7"]
    assert images.label.tolist() == ["cat", "cat", "dog", ""]  # keep: reviewed, the label stands
    assert counts == {"n_excluded": 1, "n_relabelled": 1, "n_kept": 1}


def test_a_missing_empty_or_header_only_file_changes_nothing(tmp_path):
    (tmp_path / "empty.csv").write_text("\n")
    empty = read_overrides(tmp_path / "empty.csv")
    for overrides in (read_overrides(tmp_path / "absent.csv"), empty, _overrides(tmp_path, "")[0]):
        images, counts = apply_overrides(IMAGES, overrides, "overrides.csv")
        assert images.equals(IMAGES) and counts == {"n_excluded": 0, "n_relabelled": 0, "n_kept": 0}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("cat.9,exclude\n", "line 2: no labelled photo has the id 'cat.9'"),
        ("dog.1,exclude\n7,relabel:cat\n", "line 3: '7' is a photo to predict"),
        ("dog.1,relabel:bird\n", "line 2: 'relabel:bird': 'bird' is not a class (cat, dog)"),
        ("dog.1,drop\n", "line 2: action 'drop' is neither exclude, relabel:<class> nor keep"),
        ("dog.1,exclude\ndog.1,relabel:cat\n", "line 3: 'dog.1' is overridden twice"),
        ("dog.1,keep\ndog.1,exclude\n", "line 3: 'dog.1' is overridden twice"),  # a reviewed photo too
        ("7,keep\n", "line 2: '7' is a photo to predict"),
        ("dog.1,exclude\ndog.2,exclude\n", "no labelled photo of class dog is left"),
        (
            "\ndog.1,exclude\n\n\ncat.9,exclude\n",
            "line 6: no labelled photo has the id 'cat.9'",
        ),  # finding 9: blanks count
        ("cat.1,relabel:../../x\n", "line 2: 'relabel:../../x': '../../x' is not a class"),
    ],
)
def test_a_bad_row_stops_naming_the_file_and_line(tmp_path, rows, message):
    overrides, path = _overrides(tmp_path, rows)
    with pytest.raises(ValueError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
        apply_overrides(IMAGES, overrides, path)


def test_wrong_columns_stop(tmp_path):
    (tmp_path / "o.csv").write_text("photo,action\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'o.csv'}: the overrides need the columns id,action")):
        read_overrides(tmp_path / "o.csv")


def test_prepare_applies_the_overrides_and_counts_them(kaggle_raw, in_project):
    in_project(data={"raw": str(kaggle_raw)})
    Path("data").mkdir()
    Path("data/overrides.csv").write_text("id,action\ncat.1,exclude\ndog.2,relabel:cat\n")
    prepare.main(*PREPARE_ARGS)
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False).set_index("id")
    assert "cat.1" not in manifest.index and manifest.loc["dog.2", "label"] == "cat"
    assert manifest.loc["dog.2", "file"] == "data/prepared/train/cat/dog.2.jpg"
    metrics = json.loads(Path("metrics/prepare.json").read_text())
    assert metrics["n_train"] == 19 and metrics["n_excluded"] == 1 and metrics["n_relabelled"] == 1

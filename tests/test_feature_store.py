"""The HDF5 feature files' attributes."""

import h5py
import pytest

from dogscats.feature_store import shared_classes


def test_feature_files_with_other_classes_stop_naming_the_file(tmp_path):
    for name, classes in [("a", ["cat", "dog"]), ("b", ["cat", "dog"]), ("c", ["bird", "cat", "dog"])]:
        with h5py.File(tmp_path / f"{name}.h5", "w") as h5:
            h5.attrs["classes"] = classes
    assert shared_classes([tmp_path / "a.h5", tmp_path / "b.h5"]) == ["cat", "dog"]
    with pytest.raises(ValueError, match="c.h5: classes \\['bird', 'cat', 'dog'\\], but .*a.h5 has \\['cat', 'dog'\\]"):
        shared_classes([tmp_path / "a.h5", tmp_path / "c.h5"])

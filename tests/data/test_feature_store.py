"""The HDF5 feature files' attributes."""

import h5py
import pytest

from dogscats.data.feature_store import preprocessing_of, shared_classes, write_preprocessing


def test_feature_files_with_other_classes_stop_naming_the_file(tmp_path):
    for name, classes in [("a", ["cat", "dog"]), ("b", ["cat", "dog"]), ("c", ["bird", "cat", "dog"])]:
        with h5py.File(tmp_path / f"{name}.h5", "w") as h5:
            h5.attrs["classes"] = classes
    assert shared_classes([tmp_path / "a.h5", tmp_path / "b.h5"]) == ["cat", "dog"]
    with pytest.raises(ValueError, match="c.h5: classes \\['bird', 'cat', 'dog'\\], but .*a.h5 has \\['cat', 'dog'\\]"):
        shared_classes([tmp_path / "a.h5", tmp_path / "c.h5"])


@pytest.mark.parametrize("weights", ["imagenet", None])
def test_a_feature_file_gives_back_the_preprocessing_it_was_made_with(tmp_path, weights):
    cfg = {"weights": weights, "pooling": "avg", "resize": "crop", "decode": "reduced", "tta": True, "crops": 5}
    cfg["precision"] = "float32"
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        write_preprocessing(h5, "efficientnet_lite2", 320, cfg)
    got = preprocessing_of(tmp_path / "f.h5")
    assert got == {"backbone": "efficientnet_lite2", "input_size": 320, **cfg}
    assert type(got["tta"]) is bool and type(got["crops"]) is int and type(got["input_size"]) is int


def test_an_older_feature_file_without_its_preprocessing_is_named(tmp_path):
    with h5py.File(tmp_path / "old.h5", "w") as h5:
        h5.attrs.update(backbone="efficientnet_lite0", input_size=224, pooling="avg", tta=True, crops=1)
    with pytest.raises(ValueError, match="old.h5: no weights, resize, decode, precision attributes .* rerun its stage"):
        preprocessing_of(tmp_path / "old.h5")

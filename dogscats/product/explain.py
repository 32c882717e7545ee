"""Why a photo got its prediction: class activation maps (CAM) of the exported classifier, and overlays of them.

The head is GAP -> Dense: its logit for unit u is sum_k w[k, u] * mean_xy A_k(x, y) + b[u], so the map
cam_u(x, y) = sum_k w[k, u] * A_k(x, y) + b[u] of the backbone's last feature map A has exactly that logit as its
spatial mean: no gradients are needed. The export keeps each backbone's feature map as an extra output of
classifier.onnx (feature_map_<backbone>, (views x batch, h, w, C), computed only when fetched) and writes the head's
weights to cam.json. With the flip TTA the map is the mean of the photo's map and its mirror image's map flipped back,
so its mean stays the logit the classifier computed; with several backbones each one's map is resized to the largest
grid and they are summed. Needs numpy, Pillow and ONNX Runtime only (dogscats classify --explain uses it)."""

import base64
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dogscats.data.classifier_files import CAM_FILE, FEATURE_MAP_PREFIX, INPUT_PREFIX
from dogscats.product.classifier import Classifier, ModelError, stacked

ALPHA = 0.45  # the heat map's weight in the overlay
# The "jet" colour map's anchors (blue, cyan, yellow, red), interpolated linearly: no plotting library needed.
JET = np.array([[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0.5, 0, 0]])


@dataclass(frozen=True)
class CamHead:
    """The head's linear layer and how the graph's views are laid out, from cam.json."""

    weights: np.ndarray  # (D, U): the concatenated features' weights, U = 1 (sigmoid, p of the second class) or K
    bias: np.ndarray  # (U,)
    view_sizes: dict[str, int]  # per backbone, in the head's feature order: a view's side (its input size)
    crops: int  # views per image before the mirrors: 1 or 5 (the centre first)
    tta: bool  # whether the mirror images follow the views


@dataclass(frozen=True)
class Explanation:
    """One photo's class activation map for one class, and the image the network saw."""

    image: np.ndarray  # uint8 (S, S, 3): the first backbone's centre view, as the network saw it
    cam: np.ndarray  # (h, w) float: its spatial mean is the head's logit for the class (minus it for class 0 of two)
    target: int  # the class it explains


def cam_head(classifier: Classifier) -> CamHead:
    """The head's weights from the classifier's cam.json, as loaded with its graph; ModelError naming the file when it
    has none or it is not one the export wrote."""
    path = (classifier.folder or Path(".")) / CAM_FILE
    if not classifier.cam:
        raise ModelError(
            f"{path} not found: this classifier has no class activation maps (export it again; a head with hidden"
            " units, or features.pooling other than avg, has none)"
        )
    try:
        found = json.loads(classifier.cam)
        head = CamHead(
            np.asarray(found["weights"], np.float64),
            np.asarray(found["bias"], np.float64),
            {str(k): int(v) for k, v in found["view_sizes"].items()},
            int(found["crops"]),
            bool(found["tta"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelError(f"{path}: not a CAM file the export wrote: {type(err).__name__}: {err}") from None
    if head.weights.ndim != 2 or head.weights.shape[1] != len(head.bias):
        raise ModelError(f"{path}: weights {head.weights.shape} do not fit the bias {head.bias.shape}")
    names = list(classifier.settings["sizes"])
    if list(head.view_sizes) != names:
        raise ModelError(f"{path}: backbones {list(head.view_sizes)}, not the graph's {names}")
    return head


def feature_maps(classifier: Classifier, batches: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Each backbone's last feature map, (views x N, h, w, C), for image batches (one per backbone, in the order of
    the settings' sizes): only the part of the graph that computes them runs."""
    feeds = {INPUT_PREFIX + name: batch for name, batch in zip(classifier.settings["sizes"], batches, strict=True)}
    try:
        return classifier.session.run([FEATURE_MAP_PREFIX + name for name in names], feeds)
    except Exception as err:  # ONNX Runtime's own types: a graph exported before CAMs lacks the outputs
        raise ModelError(f"the classifier's feature maps cannot be computed: {' '.join(str(err).split())}") from None


def logit_maps(maps: list[np.ndarray], head: CamHead) -> np.ndarray:
    """(N, h, w, U) maps of the head's logits from each backbone's feature maps: per backbone its weights over its
    channels, the centre view averaged with its mirror flipped back (tta), resized to the largest grid and summed;
    the bias added everywhere. With one backbone, each map's spatial mean is the head's logit exactly."""
    if sum(m.shape[-1] for m in maps) != len(head.weights):
        raise ModelError(f"feature maps of {[m.shape[-1] for m in maps]} channels, for {len(head.weights)} weights")
    grid = max(m.shape[1] for m in maps), max(m.shape[2] for m in maps)
    total, start = 0.0, 0
    views = head.crops * (2 if head.tta else 1)
    for m in maps:
        channels = m.shape[-1]
        z = np.einsum("bhwc,cu->bhwu", m.astype(np.float64), head.weights[start : start + channels])
        start += channels
        z = z.reshape(views, -1, *z.shape[1:])  # the views stacked view after view, as the graph stacks them
        z = (z[0] + z[head.crops][:, :, ::-1]) / 2 if head.tta else z[0]  # the centre and its mirror, flipped back
        total = total + (z if z.shape[1:3] == grid else resized(z, grid))
    return total + head.bias


def resized(z: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, h, w, U) maps resized to (N, *grid, U), bilinear."""
    out = np.empty((z.shape[0], *grid, z.shape[3]))
    for n in range(z.shape[0]):
        for u in range(z.shape[3]):
            image = Image.fromarray(z[n, :, :, u].astype(np.float32), mode="F")
            out[n, :, :, u] = np.asarray(image.resize(grid[::-1], Image.Resampling.BILINEAR))
    return out


def class_map(logits: np.ndarray, target: int) -> np.ndarray:
    """The (h, w) map of the evidence for class `target` from (h, w, U) logit maps: for one sigmoid unit (two
    classes), the logit map for the second class and minus it for the first; else that class's logit map."""
    if logits.shape[-1] == 1:
        return logits[..., 0] if target == 1 else -logits[..., 0]
    return logits[..., target]


def explanations(
    classifier: Classifier, paths: list[Path | str], targets: list[int | None] | None = None, batch_size: int = 16
) -> Iterator[Explanation]:
    """The class activation maps of image files (readable ones: PIL's error otherwise), in order, for the given
    classes, or where a target is None (or targets is), for the class the head finds most probable (the spatial mean
    of the maps; a tie goes to the second class); batch_size photos a run of the graph, so memory stays flat however
    many are asked."""
    head = cam_head(classifier)
    targets = targets or [None] * len(paths)
    for start in range(0, len(paths), batch_size):
        batch = slice(start, start + batch_size)
        yield from _explain_batch(classifier, head, paths[batch], targets[batch])


def explain(
    classifier: Classifier, paths: list[Path | str], targets: list[int | None] | None = None
) -> list[Explanation]:
    """explanations, as a list."""
    return list(explanations(classifier, paths, targets))


def _explain_batch(
    classifier: Classifier, head: CamHead, paths: list[Path | str], targets: list[int | None]
) -> list[Explanation]:
    """explain for one batch of photos, in one run of the graph."""
    images = [classifier.images(path) for path in paths]
    logits = logit_maps(feature_maps(classifier, stacked(images), list(head.view_sizes)), head)
    means = logits.mean(axis=(1, 2))
    predicted = [int(z[0] >= 0) if len(z) == 1 else int(np.argmax(z)) for z in means]
    targets = [p if t is None else t for t, p in zip(targets, predicted, strict=True)]
    side = next(iter(head.view_sizes.values()))
    return [
        Explanation(_centre(found[0], side).astype(np.uint8), class_map(z, target), target)
        for found, z, target in zip(images, logits, targets, strict=True)
    ]


def _centre(image: np.ndarray, side: int) -> np.ndarray:
    """The centre side x side of a square image."""
    top = (image.shape[0] - side) // 2
    return image[top : top + side, top : top + side]


def heat_colours(values: np.ndarray) -> np.ndarray:
    """uint8 RGB colours of values in [0, 1] on the jet colour map (blue low, red high)."""
    position = np.clip(values, 0, 1) * (len(JET) - 1)
    low = np.minimum(np.floor(position).astype(int), len(JET) - 2)
    fraction = (position - low)[..., None]
    return np.round(255 * ((1 - fraction) * JET[low] + fraction * JET[low + 1])).astype(np.uint8)


def overlay(photo: Image.Image | np.ndarray, cam: np.ndarray) -> Image.Image:
    """The photo with the map drawn over it as a heat map (its lowest value blue, its highest red), at the photo's
    size: the map resized bilinearly to it and blended in with weight ALPHA."""
    photo = Image.fromarray(np.asarray(photo, np.uint8)) if isinstance(photo, np.ndarray) else photo.convert("RGB")
    spread = float(cam.max() - cam.min())
    scaled = (cam - cam.min()) / spread if spread > 0 else np.zeros_like(cam)
    smooth = Image.fromarray(scaled.astype(np.float32), mode="F").resize(photo.size, Image.Resampling.BILINEAR)
    heat = Image.fromarray(heat_colours(np.asarray(smooth)))
    return Image.blend(photo, heat, ALPHA)


def overlay_data_uris(
    classifier: Classifier,
    paths: list[Path | str],
    targets: list[int | None] | None = None,
    side: int = 160,
    batch_size: int = 16,
) -> list[str]:
    """For HTML pages: each photo's overlay (explanations, then overlay) as a JPEG data: URI at most side pixels wide;
    "" for a photo that cannot be read."""
    readable = [i for i, path in enumerate(paths) if not classifier.images_or_error(path)[1]]
    targets = targets or [None] * len(paths)
    chosen = explanations(classifier, [paths[i] for i in readable], [targets[i] for i in readable], batch_size)
    uris = [""] * len(paths)
    for i, explanation in zip(readable, chosen, strict=True):
        uris[i] = overlay_data_uri(explanation, side)
    return uris


def overlay_data_uri(explanation: Explanation, side: int = 160) -> str:
    """An explanation's overlay as a JPEG data: URI at most side pixels wide."""
    image = overlay(explanation.image, explanation.cam)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def page_overlays(classifier_dir: str, paths: list[str], targets: list[int | None], page: str) -> list[str] | None:
    """The overlays of a stage's HTML page (overlay_data_uris of the exported classifier in classifier_dir); None,
    saying why on stderr in a line that names the page, when there is no classifier or it has no maps."""
    if not classifier_dir or not paths:
        return None
    try:
        return overlay_data_uris(Classifier.load(classifier_dir), paths, targets)
    except ModelError as err:
        print(f"{page}: no class activation maps: {err}", file=sys.stderr)
        return None

"""Stage features@<backbone>: stream every image through an ImageNet CNN and store its GAP features in HDF5."""

import sys
import time
from contextlib import nullcontext

import h5py
from tqdm import tqdm

from dogscats.atomic import atomic_path, write_json
from dogscats.backbones import get_backbone
from dogscats.dataset import classes_of, image_paths, label_index, read_manifest
from dogscats.determinism import set_seed
from dogscats.engine import EngineModel, choose_engine, engine_model, gpu_visible, probe_images
from dogscats.extract import build_extractor, choose_strategy, split_features
from dogscats.feature_store import SPLITS, write_preprocessing, write_split
from dogscats.images import crop_side
from dogscats.params import load_params
from dogscats.preprocessing import BACKBONE_PREPROCESSING
from dogscats.ray_executor import import_ray, ray_cluster, ray_feature_batches
from dogscats.workers import Extraction


def main(backbone_name: str, manifest_path: str, out_path: str, metrics_path: str) -> None:
    """Extract one backbone's features for the labelled (train) and test images, in manifest order."""
    all_params = load_params()
    params, raw = all_params["features"], all_params["data"]["raw"]  # data.raw locates the images; not tracked
    on_ray = params["executor"] == "ray"
    if on_ray:
        import_ray()  # without Ray, the pip command now, not after building the model
    backbone = get_backbone(backbone_name)
    manifest = read_manifest(manifest_path)
    classes = classes_of(manifest.label)
    strategy = choose_strategy()
    set_seed(0)  # with features.weights: null the weights are random: the same ones on every run
    size = params["input_size"][backbone.name]
    model = build_extractor(backbone.name, params["weights"], params["precision"], strategy, params["pooling"], size)
    dim = int(model.output.shape[-1])
    engine = "onnxruntime" if on_ray else choose_engine(params["engine"], gpu_visible(), params["precision"])
    probe = backbone.preprocess(probe_images(size).astype("float32"))
    extractor = engine_model(model, probe) if engine == "onnxruntime" else None
    start = time.perf_counter()
    with (
        ray_cluster() if on_ray else nullcontext(),  # one Ray for both splits
        atomic_path(out_path, suffix=".h5") as tmp,
        h5py.File(tmp, "w") as h5,
    ):
        h5.attrs["classes"] = classes
        write_preprocessing(h5, backbone.name, size, params)
        h5.attrs["engine"] = engine  # auto depends on the machine: which engine made these features
        progress = tqdm(total=len(manifest), desc=f"features@{backbone.name}", unit="img")
        for split in SPLITS:
            rows = manifest[manifest.split == split]
            usable = (rows.problem == "").tolist()
            files = image_paths(rows, raw)
            if on_ray:
                extraction = _extraction(extractor, backbone.name, size, params)
                batches = ray_feature_batches(extraction, files, usable, params["batch_size"])
            else:
                batches = split_features(files, usable, backbone, model, extractor, strategy, params)
            labels = label_index(rows.label, classes)
            write_split(h5, split, rows.id.tolist(), labels, usable, _counted(batches, progress), dim)
        progress.close()
    seconds = time.perf_counter() - start
    speed = len(manifest) / seconds
    write_json(metrics_path, {"images": len(manifest), "usable": int((manifest.problem == "").sum()), "dim": dim})
    where = f"{engine}, on Ray" if on_ray else engine
    print(f"features@{backbone.name}: {len(manifest)} images in {seconds:.1f} s, {speed:.1f} images/s ({where})")


def _extraction(extractor: EngineModel, backbone_name: str, size: int, params: dict) -> Extraction:
    """How a Ray actor turns photos into features: the engine's model file and the features params, one thread per
    actor (as features.workers auto: one single-threaded session per core)."""
    side = crop_side(size, params["crops"])
    preprocessing = BACKBONE_PREPROCESSING[backbone_name]
    tta, crops = params["tta"], params["crops"]
    return Extraction(str(extractor.path), side, params["resize"], params["decode"], tta, crops, 1, preprocessing)


def _counted(batches, progress: tqdm):
    """Pass batches through, advancing the progress bar."""
    for batch in batches:
        progress.update(len(batch))
        yield batch


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Stage features@<backbone>: stream every image through an ImageNet CNN and store its GAP features in HDF5."""

import json
import sys
import time
from contextlib import nullcontext

import h5py
from tqdm import tqdm

from dogscats.base.atomic import atomic_path, write_json
from dogscats.base.params import load_params
from dogscats.data.dataset import classes_of, image_paths, label_index, read_manifest
from dogscats.data.feature_store import SPLITS, write_int8_model, write_preprocessing, write_split
from dogscats.engine.conversion import choose_engine, engine_model, gpu_visible, probe_images
from dogscats.engine.extract import build_extractor, choose_strategy, extraction_of, split_features
from dogscats.engine.quantize import INT8_FLAGS, METHOD, calibration_sample, cpu_flags, int8_model, resolved_precision
from dogscats.engine.ray_executor import import_ray, ray_cluster, ray_split_features
from dogscats.engine.workers import usable_cores, worker_layout
from dogscats.networks.backbones import get_backbone
from dogscats.networks.determinism import set_seed


def main(backbone_name: str, manifest_path: str, out_path: str, metrics_path: str) -> None:
    """Extract one backbone's features for the labelled (train) and test images, in manifest order."""
    all_params = load_params()
    params, raw = all_params["features"], all_params["data"]["raw"]  # data.raw locates the images; not tracked
    gpu = gpu_visible()
    precision = resolved_precision(params["precision"], params["engine"], gpu, cpu_flags(INT8_FLAGS))
    params = {**params, "precision": precision}  # auto resolved: the feature file records what ran
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
    engine = "onnxruntime" if on_ray else choose_engine(params["engine"], gpu, params["precision"])
    probe = backbone.preprocess(probe_images(size).astype("float32"))
    workers = worker_layout(params["workers"])  # W processes of T threads (one in this process: W 1)
    extractor = engine_model(model, probe, threads=workers[1]) if engine == "onnxruntime" else None
    calibration, quantized = None, {}
    if params["precision"] == "int8":  # from the float32 model, checked against Keras above
        calibration = calibration_sample(manifest)
        files = image_paths(calibration, raw)
        extraction = extraction_of(extractor, backbone.name, size, params, workers[1])
        extractor, deviation = int8_model(extractor, extraction, size, calibration.md5.tolist(), files)
        quantized = {"int8_deviation": deviation, "int8_calibration": len(calibration)}
    start = time.perf_counter()
    with (
        ray_cluster() if on_ray else nullcontext(),  # one Ray for both splits
        atomic_path(out_path, suffix=".h5") as tmp,
        h5py.File(tmp, "w") as h5,
    ):
        h5.attrs["classes"] = classes
        write_preprocessing(h5, backbone.name, size, params)
        if calibration is not None:  # which photos set the int8 ranges, and how
            h5.attrs["int8_calibration"] = calibration.id.tolist()
            h5.attrs["int8_method"] = json.dumps(METHOD, sort_keys=True)
            write_int8_model(h5, extractor.path.read_bytes())
        h5.attrs["engine"] = engine  # auto depends on the machine: which engine made these features
        progress = tqdm(total=len(manifest), desc=f"features@{backbone.name}", unit="img")
        splits = [manifest[manifest.split == split] for split in SPLITS]
        photos = [(image_paths(rows, raw), (rows.problem == "").tolist()) for rows in splits]
        nodes: set[str] = set()  # the Ray nodes that computed features
        if on_ray:  # one pipeline (one pool of actors) for both splits
            threads = workers[1] or usable_cores()  # an actor reserves its threads' CPUs: a number, not the default
            extraction = extraction_of(extractor, backbone.name, size, params, threads)
            per_split = ray_split_features(extraction, photos, params["batch_size"], nodes)
        else:
            per_split = (
                split_features(*split, backbone, model, extractor, strategy, params, workers) for split in photos
            )
        for split, rows, (_, usable), batches in zip(SPLITS, splits, photos, per_split, strict=True):
            labels = label_index(rows.label, classes)
            write_split(h5, split, rows.id.tolist(), labels, usable, _counted(batches, progress), dim)
        progress.close()
    seconds = time.perf_counter() - start
    speed = len(manifest) / seconds
    layout = f", {workers[0]}x{workers[1] or 'default'} workers" if extractor is not None else ""
    layout = f", on {len(nodes)} Ray node(s), actors of {extraction.threads} thread(s)" if on_ray else layout
    usable = int((manifest.problem == "").sum())
    write_json(metrics_path, {"images": len(manifest), "usable": usable, "dim": dim, **quantized})
    print(
        f"features@{backbone.name}: {len(manifest)} images in {seconds:.1f} s, {speed:.1f} images/s ({engine}{layout})"
    )


def _counted(batches, progress: tqdm):
    """Pass batches through, advancing the progress bar."""
    for batch in batches:
        progress.update(len(batch))
        yield batch


if __name__ == "__main__":
    main(*sys.argv[1:])

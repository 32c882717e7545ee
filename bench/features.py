"""Benchmark feature extraction on this machine: the stage's own path against the compute bound and the classic way.

    python bench/features.py --backbone efficientnet_lite0 --data ../shared/data/catsdogs

A: images/s of the features stage's code path, end to end from JPEG files on disk (tf.data, HDF5 writes included);
B: images/s of the bare model on tensors already in memory (the compute bound);
C: images/s of the classic approach: each batch loaded image by image with PIL, then model.predict, no overlap;
then the peak resident memory of A at two dataset sizes (generated small JPEGs), and last `A/B=.. A/C=..`.
Each measurement runs in a fresh process, so its peak memory is its own.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def image_files(data: Path) -> list[str]:
    """Every JPEG under data/train and data/test, sorted."""
    files = sorted(str(p) for sub in ("train", "test") for p in (data / sub).glob("*.jpg"))
    if not files:
        raise SystemExit(f"no JPEG files under {data}/train or {data}/test")
    return files


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, backbone_name: str, files: list[str], params: dict) -> dict:
    """Run one measurement in this process; returns images/s and peak memory."""
    import h5py
    import tensorflow as tf

    from dogscats.backbones import get_backbone
    from dogscats.extract import build_extractor, choose_strategy, feature_batches, image_dataset
    from dogscats.feature_store import write_split
    from dogscats.images import load_resized

    backbone = get_backbone(backbone_name)
    strategy = choose_strategy()
    model = build_extractor(backbone.name, "imagenet", params["precision"], strategy)
    size, batch_size = backbone.input_size, params["batch_size"]
    warmup = np.zeros((batch_size, size, size, 3), np.uint8)
    next(feature_batches(model, backbone, tf.data.Dataset.from_tensors(warmup), strategy))  # trace once
    start = time.perf_counter()
    if mode == "a":
        dataset = image_dataset(files, [True] * len(files), size, params["resize"], params["decode"], batch_size)
        batches = feature_batches(model, backbone, dataset, strategy, params["tta"])
        with tempfile.TemporaryDirectory() as tmp, h5py.File(Path(tmp) / "f.h5", "w") as h5:
            dim = int(model.output.shape[-1])
            write_split(h5, "all", files, np.zeros(len(files)), [True] * len(files), batches, dim)
        count = len(files)
    elif mode == "b":
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
        n_batches = max(1, len(files) // batch_size)
        dataset = tf.data.Dataset.from_tensors(batch).repeat(n_batches)
        count = sum(len(f) for f in feature_batches(model, backbone, dataset, strategy, params["tta"]))
    else:  # classic: load a batch one image at a time, then predict it; nothing overlaps
        count = 0
        for i in range(0, len(files), batch_size):
            x = np.stack([load_resized(f, size, params["resize"], params["decode"]) for f in files[i : i + batch_size]])
            count += len(model.predict(backbone.preprocess(x.astype(np.float32)), verbose=0))
    seconds = time.perf_counter() - start
    return {"images": count, "seconds": seconds, "images_per_second": count / seconds, "peak_rss_mb": peak_rss_mb()}


def run_child(mode: str, args: argparse.Namespace, files_list: Path) -> dict:
    """Run one measurement in a fresh Python process and return its result."""
    cmd = [sys.executable, __file__, "--child", mode, "--backbone", args.backbone, "--files", str(files_list)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def make_small_jpegs(folder: Path, count: int) -> list[str]:
    """Generate `count` small distinct JPEGs (memory must not depend on how many images there are)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    files = []
    for i in range(count):
        path = folder / f"{i}.jpg"
        Image.fromarray(np.roll(base, i, axis=1)).save(path, quality=85)
        files.append(str(path))
    return files


def write_list(path: Path, files: list[str]) -> Path:
    """Write a file list for a child process."""
    path.write_text("\n".join(files))
    return path


def main() -> None:
    """Measure A, B, C and the memory at two sizes; print the figures and, last, the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, help="a folder in the Kaggle layout (train/, test/)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--memory-sizes", default="2000,20000", help="dataset sizes for peak memory ('' to skip)")
    parser.add_argument("--child", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from dogscats.params import load_params

    params = load_params()["features"]
    if args.child:
        print(json.dumps(measure(args.child, args.backbone, args.files.read_text().splitlines(), params)))
        return
    if args.data is None:
        parser.error("--data is required")
    files = image_files(args.data)[: args.limit or None]
    print(f"{args.backbone}: {len(files)} images from {args.data}, params {params}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files_list = write_list(Path(tmp) / "files.txt", files)
        results = {}
        for mode, label in (("a", "A features stage path"), ("b", "B bare model, in memory"), ("c", "C classic")):
            results[mode] = run_child(mode, args, files_list)
            r = results[mode]
            print(f"{label}: {r['images_per_second']:.2f} images/s ({r['images']} in {r['seconds']:.1f} s)", flush=True)
        print(f"peak memory of A: {results['a']['peak_rss_mb']:.0f} MiB")
        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        if sizes:
            folder = Path(tmp) / "small"
            folder.mkdir()
            small = make_small_jpegs(folder, max(sizes))
            peaks = []
            for n in sizes:
                r = run_child("a", args, write_list(Path(tmp) / f"small{n}.txt", small[:n]))
                peaks.append(r["peak_rss_mb"])
                speed = r["images_per_second"]
                print(f"peak memory of A at {n} images: {r['peak_rss_mb']:.0f} MiB ({speed:.1f} images/s)")
            print(f"memory growth {sizes[0]} -> {sizes[-1]} images: {100 * (peaks[-1] / peaks[0] - 1):+.1f}%")
    a, b, c = (results[m]["images_per_second"] for m in "abc")
    print(f"A/B={a / b:.2f} A/C={a / c:.2f}")


if __name__ == "__main__":
    main()

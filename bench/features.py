"""Benchmark feature extraction on this machine: the stage's own path against the compute bound and the classic way.

    python bench/features.py --backbone efficientnet_lite0 --data ../shared/data/catsdogs

A: images/s of the features stage's code path with its engine (features.engine, auto: ONNX Runtime on CPU), end to
   end from JPEG files on disk (decoding and HDF5 writes included), at the stage's input size (features.input_size);
Aq: the same path in int8 (features.precision int8: the engine's model quantized, dogscats.engine.quantize), and Bq its
bare
   model; with the int8 features' deviation from float32 (relative L2 per image: median, max) over every photo;
Atf: the same path with features.engine=tensorflow (decoding through tf.data);
B: images/s of the engine's bare model on real photos already decoded in memory (the compute bound);
C: images/s of the classic approach: each batch loaded image by image with PIL, then Keras model.predict, no overlap;
W x T: images/s of the same path (features.engine onnxruntime) for each layout of W worker processes of T threads
   that fits the machine (W * T <= its cores; W and T powers of two, and auto's choice), and 1x0 (one session with
   ONNX Runtime's default threads, the stage before workers), and its CPU time per image; auto's choice is marked;
   with the CPU's model and flags;
then the peak resident memory of A at two dataset sizes (generated small JPEGs), the speed and largest feature
deviation of each reduced precision against float32 (TensorFlow; measured even where the hardware only emulates it),
and last `A/B=.. A/C=.. A/Atf=.. Aq/A=.. Bq/B=..`. A, Atf, Aq, B, Bq and C run in one process, in interleaved
rounds, each round on the next third of the photos (C on the first third only); the medians count. Each memory
measurement runs in a fresh process, so its peak memory is its own.
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


def cpu_description() -> str:
    """The CPU's model name and its matrix flags (from /proc/cpuinfo), and the cores this process may use."""
    from dogscats.engine.workers import usable_cores

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    from dogscats.engine.quantize import CPU_FLAGS

    wanted = (*CPU_FLAGS, "amx_tile")
    found = " ".join(f for f in wanted if f in flags) or "none"
    return f"CPU {model}, {usable_cores()} cores usable, flags: {found} (int8 dot products: vnni, amx_int8)"


def layouts(cores: int) -> list[tuple[int, int]]:
    """Today's single session (1x0: ONNX Runtime's default threads), every W x T of powers of two with W * T <= cores,
    and auto's choice."""
    from dogscats.engine.workers import auto_layout

    powers = [2**i for i in range(cores.bit_length()) if 2**i <= cores]
    fitting = [(w, t) for w in powers for t in powers if w * t <= cores]
    return [(1, 0), *dict.fromkeys([*fitting, auto_layout(cores)])]


def measure_layouts(backbone_name: str, files: list[str], params: dict, rounds: int) -> dict:
    """images/s of the features stage's path through the engine (HDF5 writes included) for each layout, every photo
    through every layout in each of `rounds` rounds, the layouts' order rotated each round."""
    import h5py

    from dogscats.data.feature_store import write_split
    from dogscats.engine.conversion import engine_model, probe_images
    from dogscats.engine.extract import build_extractor, choose_strategy, split_features
    from dogscats.engine.workers import usable_cores
    from dogscats.networks.backbones import get_backbone

    backbone = get_backbone(backbone_name)
    strategy = choose_strategy()
    size = params["input_size"][backbone.name]
    model = build_extractor(backbone.name, "imagenet", "float32", strategy, params["pooling"], size)
    dim = int(model.output.shape[-1])
    probe = backbone.preprocess(probe_images(size).astype(np.float32))
    all_layouts = layouts(usable_cores())
    sessions = {t: engine_model(model, probe, threads=t) for t in sorted({t for _, t in all_layouts})}

    def stage_path(layout: tuple[int, int], paths: list[str]) -> int:
        batches = split_features(paths, [True] * len(paths), backbone, model, sessions[layout[1]], strategy, params,
                                 layout)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp, h5py.File(Path(tmp) / "f.h5", "w") as h5:
            write_split(h5, "all", paths, np.zeros(len(paths)), [True] * len(paths), batches, dim)
        return len(paths)

    for path in files:  # read once, so that every layout finds the files in the page cache
        Path(path).read_bytes()
    stage_path((1, 0), files[: 2 * params["batch_size"]])  # warm up the session's buffers
    speeds: dict[str, list[float]] = {f"{w}x{t}": [] for w, t in all_layouts}
    cpu: dict[str, list[float]] = {f"{w}x{t}": [] for w, t in all_layouts}
    for r in range(rounds):
        for layout in all_layouts[r % len(all_layouts) :] + all_layouts[: r % len(all_layouts)]:
            start, cpu_start = time.perf_counter(), cpu_seconds()
            count = stage_path(layout, files)  # worker start-up included, as in the stage
            speeds[f"{layout[0]}x{layout[1]}"].append(count / (time.perf_counter() - start))
            cpu[f"{layout[0]}x{layout[1]}"].append((cpu_seconds() - cpu_start) * 1000 / count)
    return {"images_per_second": speeds, "cpu_ms_per_image": cpu}


def cpu_seconds() -> float:
    """CPU time (user and system) of this process and of its children that have ended (the workers, once closed)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(modes: str, backbone_name: str, files: list[str], params: dict, rounds: int) -> dict:
    """Run the measurements in this process, interleaved over `rounds` (this machine's speed drifts), each round on the
    next share of the photos, so all of them pass through A and Atf once; returns, per mode, the images/s of each
    round, and the peak memory."""
    import h5py
    import tensorflow as tf

    from dogscats.data.feature_store import write_split
    from dogscats.data.images import load_resized
    from dogscats.engine.conversion import (
        choose_engine,
        engine_feature_batches,
        engine_model,
        gpu_visible,
        probe_images,
    )
    from dogscats.engine.extract import build_extractor, choose_strategy, feature_batches, image_dataset, split_features
    from dogscats.networks.backbones import get_backbone

    backbone = get_backbone(backbone_name)
    strategy = choose_strategy()
    size, batch_size = params["input_size"][backbone.name], params["batch_size"]
    model = build_extractor(backbone.name, "imagenet", "float32", strategy, params["pooling"], size)
    dim = int(model.output.shape[-1])
    engine = choose_engine(params["engine"], gpu_visible(), "float32")
    probe = backbone.preprocess(probe_images(size).astype(np.float32))
    extractor = engine_model(model, probe) if engine == "onnxruntime" else None
    quantized = int8_extractor(extractor, backbone.name, size, params, files) if "q" in modes else None
    print(f"engine: {engine}", file=sys.stderr)
    first = image_dataset(files[:batch_size], [True] * batch_size, size, params["resize"], params["decode"], batch_size)
    in_memory = next(iter(first)).numpy()  # real photos, decoded once
    next(feature_batches(model, backbone, tf.data.Dataset.from_tensors(in_memory), strategy))  # trace once

    def batches_of(images: list[np.ndarray], run_in=extractor):  # in-memory batches through the engine's model
        if run_in is not None:
            return engine_feature_batches(run_in, backbone.preprocess, images, params["tta"])
        dataset = tf.data.Dataset.from_tensor_slices(np.stack(images))
        return feature_batches(model, backbone, dataset, strategy, params["tta"])

    def stage_path(engine_name: str, paths: list[str] = files) -> int:  # A, Atf, Aq: the stage, HDF5 included
        run_in = {"onnxruntime": extractor, "int8": quantized}.get(engine_name)
        batches = split_features(paths, [True] * len(paths), backbone, model, run_in, strategy, params)
        with tempfile.TemporaryDirectory() as tmp, h5py.File(Path(tmp) / "f.h5", "w") as h5:
            write_split(h5, "all", paths, np.zeros(len(paths)), [True] * len(paths), batches, dim)
        return len(paths)

    def bare_model(paths: list[str], run_in=extractor) -> int:  # B, Bq: a batch of real photos in memory, as many
        repeats = max(1, len(paths) // batch_size)  # times, in the engine
        return sum(len(f) for f in batches_of([in_memory] * repeats, run_in))

    def classic(paths: list[str]) -> int:  # C: load a batch one image at a time with PIL, then predict; no overlap
        count = 0
        for i in range(0, len(paths), batch_size):
            batch = paths[i : i + batch_size]
            x = np.stack([load_resized(f, size, params["resize"], params["decode"]) for f in batch])
            x = backbone.preprocess(x.astype(np.float32))
            features = model.predict(x, verbose=0)
            if params["tta"]:  # the same work as A: the mirror image too
                features = (features + model.predict(x[:, :, ::-1], verbose=0)) / 2
            count += len(features)
        return count

    runs = {
        "a": lambda paths: stage_path(engine, paths),
        "t": lambda paths: stage_path("tensorflow", paths),
        "b": bare_model,
        "c": classic,
        "q": lambda paths: stage_path("int8", paths),
        "r": lambda paths: bare_model(paths, quantized),
    }
    for engine_name in {engine, "tensorflow", *(["int8"] if quantized else [])}:  # warm up: a session's first batches
        stage_path(engine_name, files[: 2 * batch_size])
    for path in files:  # read once, so that every mode finds the files in the page cache
        Path(path).read_bytes()
    speeds: dict[str, list[float]] = {mode: [] for mode in modes}
    for r, chunk in enumerate(np.array_split(np.array(files), rounds)):  # each round times the next share of photos
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:  # rotated: none always runs first
            if mode == "c" and r > 0:
                continue  # the classic path is slow and steady: one round
            start = time.perf_counter()
            count = runs[mode](chunk.tolist())
            speeds[mode].append(count / (time.perf_counter() - start))
    result = {"images_per_second": speeds, "peak_rss_mb": peak_rss_mb()}
    if quantized is not None:  # the int8 features against float32's, every photo
        from dogscats.engine.quantize import deviation

        both = [np.concatenate(list(split_features(files, [True] * len(files), backbone, model, run_in, strategy,
                                                   params))) for run_in in (extractor, quantized)]  # fmt: skip
        result["int8_deviation"] = deviation(*both)
    return result


def int8_extractor(extractor, backbone_name: str, size: int, params: dict, files: list[str]):
    """The engine's model in int8, calibrated as the stage calibrates it: on the labelled photos among the files
    (cat.N.jpg, dog.N.jpg), seeded and stratified."""
    import pandas as pd

    from dogscats.data.dataset import file_md5
    from dogscats.engine.extract import extraction_of
    from dogscats.engine.quantize import calibration_sample, int8_model

    labelled = [f for f in files if Path(f).name.split(".")[0] in ("cat", "dog")]
    manifest = pd.DataFrame({"id": [Path(f).stem for f in labelled], "file": labelled, "split": "train"})
    manifest = manifest.assign(label=manifest.id.str.split(".").str[0], problem="")
    sample = calibration_sample(manifest)
    sample = sample.assign(md5=[file_md5(f) for f in sample.file])
    extraction = extraction_of(extractor, backbone_name, size, params, 0)
    quantized, _ = int8_model(extractor, extraction, size, sample.md5.tolist(), sample.file.tolist())
    return quantized


def compare_precisions(backbone_name: str, files: list[str], params: dict, precisions: list[str]) -> list[str]:
    """Features of the same images at each precision: images/s and the largest deviation from float32."""
    import tensorflow as tf

    from dogscats.engine.extract import dtype_policy, feature_batches, image_dataset
    from dogscats.networks.backbones import get_backbone, load_feature_extractor

    backbone = get_backbone(backbone_name)
    strategy = tf.distribute.get_strategy()
    dataset = image_dataset(files, [True] * len(files), backbone.input_size, "squash", "full", params["batch_size"])
    dataset = dataset.cache()
    list(dataset)  # decode once, so that only the network is timed
    reference, lines = None, []
    for precision in ["float32", *precisions]:
        with dtype_policy(precision):  # no hardware check here: emulated precisions are measured too
            model = load_feature_extractor(backbone.name, "imagenet")
        next(feature_batches(model, backbone, dataset.take(1), strategy))
        start = time.perf_counter()
        features = np.concatenate(list(feature_batches(model, backbone, dataset, strategy)))
        speed = len(features) / (time.perf_counter() - start)
        if reference is None:
            reference = features
        deviation = np.abs(features - reference).max()
        relative = deviation / np.abs(reference).max()
        lines.append(f"precision {precision}: {speed:.2f} images/s, max |f - f32| = {deviation:.2e} ({relative:.2%})")
    return lines


def run_child(mode: str, args: argparse.Namespace, files_list: Path, rounds: int = 1, tta: bool | None = None) -> dict:
    """Run measurements in a fresh Python process and return its result; tta overrides the param."""
    cmd = [sys.executable, __file__, "--child", mode, "--backbone", args.backbone, "--files", str(files_list)]
    cmd += ["--precisions", args.precisions, "--rounds", str(rounds)]
    cmd += [] if tta is None else ["--tta", str(tta)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_layouts(speeds: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    """Each layout's median images/s and CPU time per image (what it costs when other work shares the cores), auto's
    choice marked, and how it compares with the best and with the stage before workers (1x0)."""
    from dogscats.engine.workers import auto_layout, usable_cores

    w, t = auto_layout(usable_cores())
    auto = f"{w}x{t}"
    median = {layout: float(np.median(values)) for layout, values in speeds.items()}
    best = max(median, key=median.get)
    for layout, value in median.items():
        rounds = ", ".join(f"{v:.2f}" for v in speeds[layout])
        mark = " (the stage before workers: one session, default threads)" if layout == "1x0" else ""
        mark += " <- auto" if layout == auto else ""
        cost = float(np.median(cpu[layout]))
        print(f"W x T {layout}: {value:.2f} images/s (rounds: {rounds}), {cost:.0f} CPU ms/image{mark}", flush=True)
    print(f"auto {auto}: {median[auto] / median[best]:.3f} of the best ({best}), {median[auto] / median['1x0']:.3f} "
          f"of 1x0 (the stage before workers)", flush=True)  # fmt: skip


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
    parser.add_argument("--precisions", default="bfloat16", help="reduced precisions to compare ('' to skip)")
    parser.add_argument("--precision-images", type=int, default=96, help="images for the precision comparison")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, each on a share of the photos")
    parser.add_argument("--layouts-only", action="store_true", help="measure the W x T layouts alone")
    parser.add_argument("--no-layouts", action="store_true", help="leave out the W x T layouts")
    parser.add_argument("--layout-rounds", type=int, default=2, help="rounds of the layouts, every photo in each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tta", choices=["True", "False"], help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from dogscats.base.params import load_params

    params = load_params()["features"]
    if args.tta:
        params["tta"] = args.tta == "True"
    if args.child == "w":
        files = args.files.read_text().splitlines()
        print(json.dumps(measure_layouts(args.backbone, files, params, args.rounds)))
        return
    if args.child == "p":
        files = args.files.read_text().splitlines()
        print(json.dumps(compare_precisions(args.backbone, files, params, args.precisions.split(","))))
        return
    if args.child:
        files = args.files.read_text().splitlines()
        print(json.dumps(measure(args.child, args.backbone, files, params, args.rounds)))
        return
    if args.data is None:
        parser.error("--data is required")
    files = image_files(args.data)[: args.limit or None]
    print(f"{args.backbone}: {len(files)} images from {args.data}, params {params}", flush=True)
    print(cpu_description(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files_list = write_list(Path(tmp) / "files.txt", files)
        if not args.no_layouts:
            measured = run_child("w", args, files_list, args.layout_rounds)
            print_layouts(measured["images_per_second"], measured["cpu_ms_per_image"])
        if args.layouts_only:
            return
        result = run_child("atbcqr", args, files_list, args.rounds)
        speeds = result["images_per_second"]
        median = {mode: float(np.median(values)) for mode, values in speeds.items()}
        labels = {
            "a": "A features stage path, its engine",
            "t": "Atf features stage path, tensorflow",
            "b": "B engine's bare model, in memory",
            "c": "C classic, no overlap",
            "q": "Aq features stage path, int8",
            "r": "Bq engine's bare model in int8, in memory",
        }
        for mode in "atbcqr":
            rounds = ", ".join(f"{v:.2f}" for v in speeds[mode])
            print(f"{labels[mode]}: {median[mode]:.2f} images/s (median of rounds: {rounds})", flush=True)
        found = result["int8_deviation"]
        print(f"int8 features against float32's (relative L2 per image): median {found['median']:.4f}, max "
              f"{found['max']:.4f}")  # fmt: skip
        memory = run_child("a", args, files_list)
        print(f"peak memory of A: {memory['peak_rss_mb']:.0f} MiB")
        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        if sizes:
            folder = Path(tmp) / "small"
            folder.mkdir()
            small = make_small_jpegs(folder, max(sizes))
            peaks = []
            print("memory runs with TTA off: it doubles the compute, not the memory", flush=True)
            for n in sizes:
                r = run_child("a", args, write_list(Path(tmp) / f"small{n}.txt", small[:n]), tta=False)
                peaks.append(r["peak_rss_mb"])
                speed = r["images_per_second"]["a"][0]
                print(f"peak memory of A at {n} images: {r['peak_rss_mb']:.0f} MiB ({speed:.1f} images/s)")
            print(f"memory growth {sizes[0]} -> {sizes[-1]} images: {100 * (peaks[-1] / peaks[0] - 1):+.1f}%")
        if args.precisions:
            subset = write_list(Path(tmp) / "precision.txt", files[: args.precision_images])
            for line in run_child("p", args, subset):
                print(line, flush=True)
    a = median["a"]
    print(f"A/B={a / median['b']:.2f} A/C={a / median['c']:.2f} A/Atf={a / median['t']:.2f} "
          f"Aq/A={median['q'] / a:.2f} Bq/B={median['r'] / median['b']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

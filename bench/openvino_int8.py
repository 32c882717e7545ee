"""OpenVINO int8 (NNCF post-training quantization) against ONNX Runtime float32 and int8, for EfficientNet-Lite2's
feature extractor at 320 px, on the same photos in memory:

    /work/ovenv/bin/python bench/openvino_int8.py --data ../shared/data/catsdogs [--limit 256] [--rounds 3] [--batch 32]

Runs in a virtualenv with the project's requirements, openvino and nncf (not the project's own). Both int8 models are
calibrated on the same 64 labelled photos (dogscats.engine.quantize.calibration_sample), each seen as the extractor sees
it: the photo and its mirror image. The ONNX Runtime int8 model is the project's (its cached file); the OpenVINO one is
made here by nncf.quantize from the float ONNX model, its pooling (ReduceMean) and what follows left in float like the
project's. The evaluation photos are the first --limit photos outside the calibration sample, decoded and scaled once.
Speed: photos per second of the bare model on batches of --batch photos, two inferences (views) per photo, in
interleaved rounds whose order rotates; medians, and their ratio to ONNX Runtime float32. OpenVINO runs at f32
inference precision (its CPU default is bf16 where the CPU has bf16 instructions), with the LATENCY hint (one request)
and the THROUGHPUT hint (an AsyncInferQueue, its requests overlapping); and OpenVINO running ONNX Runtime's own
quantized file (THROUGHPUT), to tell the runtime's share of the gap from the quantizer's. Accuracy: per photo the mean
of its two views' features; each engine's relative L2 deviation from ONNX Runtime float32's, median and max.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dogscats.data.dataset import file_md5  # noqa: E402
from dogscats.engine.quantize import calibration_sample, cpu_flags, deviation, int8_model  # noqa: E402
from dogscats.engine.workers import EngineModel, Extraction, decode_photos  # noqa: E402
from dogscats.networks.preprocessing import lite  # noqa: E402

CACHE = Path.home() / ".cache" / "dogscats" / "onnx"
FLOAT = CACHE / "efficientnet_lite2-320x320x3-5f4baee1a09dd272.onnx"
SIDE = 320
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
REFERENCE = "ORT float32"

Engine = Callable[[list[np.ndarray]], list[np.ndarray]]  # batches of views -> their features, in order


def machine() -> None:
    """Print the CPU model, its flags of interest and the engines' versions."""
    import nncf
    import onnxruntime
    import openvino

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    have = cpu_flags(FLAGS)
    print(f"CPU: {model}; " + ", ".join(f"{flag} {'yes' if flag in have else 'no'}" for flag in FLAGS))
    print(f"openvino {openvino.__version__}, nncf {nncf.__version__}, onnxruntime {onnxruntime.__version__}")


def manifest(data: Path) -> pd.DataFrame:
    """Every photo under data: the labelled ones (train/, in id order as the project sorts), then test/ by number."""
    train = sorted((data / "train").glob("*.jpg"), key=lambda path: path.stem)
    test = sorted((data / "test").glob("*.jpg"), key=lambda path: int(path.stem))
    rows = [{"id": p.stem, "label": p.stem.split(".")[0], "split": "train", "path": str(p)} for p in train]
    rows += [{"id": p.stem, "label": "", "split": "test", "path": str(p)} for p in test]
    table = pd.DataFrame(rows).assign(problem="")
    table["md5"] = [file_md5(path) for path in table.path]
    return table


def scaled(paths: list[str], threads: int) -> np.ndarray:
    """The photos decoded as the extractor sees them (320 px, center crop, reduced decoding) and scaled."""
    images = decode_photos(paths, [True] * len(paths), SIDE, "crop", "reduced", threads)
    return lite(images.astype(np.float32))


def batches(x: np.ndarray, size: int) -> list[np.ndarray]:
    """Batches of size photos, each as two contiguous views one after the other: the photos, then their mirrors."""
    return [
        np.ascontiguousarray(view)
        for i in range(0, len(x), size)
        for view in (x[i : i + size], x[i : i + size, :, ::-1])
    ]


def per_photo(outputs: list[np.ndarray]) -> np.ndarray:
    """Each photo's features: the mean of its two views' (outputs in the order batches() makes them)."""
    return np.concatenate([(plain + mirror) / 2 for plain, mirror in zip(outputs[::2], outputs[1::2], strict=True)])


def ort_engine(path: Path) -> Engine:
    """An ONNX Runtime CPU session of the model: default intra-op threads, one inter-op thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda views: [session.run(None, {name: view})[0] for view in views]


def ov_engine(model: object, hint: str, label: str) -> Engine:
    """The OpenVINO model on the CPU at f32 precision: LATENCY one request at a time, THROUGHPUT an AsyncInferQueue."""
    import openvino
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {
        hints.performance_mode: getattr(hints.PerformanceMode, hint),
        hints.inference_precision: openvino.Type.f32,
    }
    compiled = openvino.Core().compile_model(model, "CPU", config)
    settings = (props.streams.num, props.inference_num_threads, props.optimal_number_of_infer_requests)
    print(f"  {label} {hint}: " + ", ".join(f"{name} {compiled.get_property(name)}" for name in settings))
    if hint == "LATENCY":
        request = compiled.create_infer_request()
        return lambda views: [request.infer(view)[0] for view in views]
    queue = openvino.AsyncInferQueue(compiled)

    def run(views: list[np.ndarray]) -> list[np.ndarray]:
        """Every view queued at once, each output copied out by the callback into its place."""
        outputs: list = [None] * len(views)

        def done(request, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()

        queue.set_callback(done)
        for index, view in enumerate(views):
            queue.start_async(view, index)
        queue.wait_all()
        return outputs

    return run


def nncf_int8(float_path: Path, calibration: np.ndarray) -> tuple[object, float]:
    """The float model quantized by NNCF, one item per calibration view, the pooling left float; and its seconds."""
    import nncf
    import openvino

    items = [view[None] for view in calibration]
    model = openvino.convert_model(float_path)
    start = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset(items),
        subset_size=len(items),
        ignored_scope=nncf.IgnoredScope(types=["ReduceMean"]),
    )
    return quantized, time.perf_counter() - start


def ort_int8(float_path: Path, sample: pd.DataFrame) -> Path:
    """ONNX Runtime's int8 model as the features stage makes it (dogscats.engine.quantize.int8_model, its cache),
    calibrated on the sample's photos."""
    extraction = Extraction(str(float_path), SIDE, "crop", "reduced", True, 1, 0, "lite")
    float_model = EngineModel(float_path.read_bytes(), float_path.stem, 0, float_path)
    quantized, _ = int8_model(float_model, extraction, SIDE, sample.md5.tolist(), sample.path.tolist())
    return quantized.path


def main() -> None:
    """Quantize with NNCF, then time and compare the seven engines on the evaluation photos."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the photos: train/{cat,dog}.N.jpg and test/N.jpg")
    parser.add_argument("--limit", type=int, default=256, help="evaluation photos (outside the calibration sample)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="photos per batch (each run as two views)")
    parser.add_argument("--float", dest="float_path", type=Path, default=FLOAT, help="the float32 ONNX extractor")
    parser.add_argument("--threads", type=int, default=2, help="decoding threads")
    args = parser.parse_args()
    machine()
    photos = manifest(args.data)
    sample = calibration_sample(photos)
    int8_path = ort_int8(args.float_path, sample)
    print(f"float32: {args.float_path.name}\nORT int8: {int8_path.name} (quantize.int8_model, the same photos)")

    x = scaled(sample.path.tolist(), args.threads)
    calibration = np.concatenate(
        [x, x[:, :, ::-1]]
    )  # as dogscats.engine.quantize.calibration_views: photos, then mirrors
    ov_int8, seconds = nncf_int8(args.float_path, calibration)
    print(f"NNCF quantization: {len(sample)} photos x 2 views = {len(calibration)} items, {seconds:.1f} s")

    evaluation = photos[~photos.id.isin(sample.id)].head(args.limit)
    views = batches(scaled(evaluation.path.tolist(), args.threads), args.batch)
    print(f"evaluation: {len(evaluation)} photos, {len(views)} inferences of up to {args.batch} views")

    import openvino

    ov_float = openvino.convert_model(args.float_path)
    engines = {
        REFERENCE: ort_engine(args.float_path),
        "ORT int8": ort_engine(int8_path),
        "OV float32 LATENCY": ov_engine(ov_float, "LATENCY", "OV float32"),
        "OV float32 THROUGHPUT": ov_engine(ov_float, "THROUGHPUT", "OV float32"),
        "OV int8 LATENCY": ov_engine(ov_int8, "LATENCY", "OV int8"),
        "OV int8 THROUGHPUT": ov_engine(ov_int8, "THROUGHPUT", "OV int8"),
        "OV runs ORT int8": ov_engine(openvino.convert_model(int8_path), "THROUGHPUT", "OV on ORT's int8 file"),
    }
    for engine in engines.values():  # warm-up, both batch shapes
        engine([views[0], views[-1]])

    names, speeds, features = list(engines), {name: [] for name in engines}, {}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            outputs = engines[name](views)
            speeds[name].append(len(evaluation) / (time.perf_counter() - start))
            features.setdefault(name, per_photo(outputs))

    reference = statistics.median(speeds[REFERENCE])
    print(f"\n{'engine':<22} {'photos/s':>9} {'vs ORT f32':>10} {'rel L2 median':>14} {'rel L2 max':>11}")
    for name in names:
        median = statistics.median(speeds[name])
        gap = deviation(features[REFERENCE], features[name])
        print(f"{name:<22} {median:>9.1f} {median / reference:>9.2f}x {gap['median']:>14.2e} {gap['max']:>11.2e}")


if __name__ == "__main__":
    main()

"""ONNX Runtime's OpenVINO execution provider against its CPU one, on the project's own float32 and int8 files for
EfficientNet-Lite2 at 320 px (the cached files the features stage made), through the same onnxruntime API:

    /work/ortov/bin/python bench/openvino_ep.py [--cache ~/.cache/dogscats/onnx] [--rounds 3]

Runs in a virtualenv holding `onnxruntime-openvino` (which replaces `onnxruntime`; 1.24.1 is the newest in the
registry, against the project's onnxruntime 1.32.0) and numpy. Speed only: batches of 32 seeded random views,
4 runs a round, interleaved rounds; medians in views per second, and each output's relative L2 distance from the
CPU provider's float32 output on the same views (random views: it shows a provider computes the same network, not
the features' quality).
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime

FLOAT = "efficientnet_lite2-320x320x3-5f4baee1a09dd272"
PROVIDERS = ("CPUExecutionProvider", "OpenVINOExecutionProvider")


def session(path: Path, provider: str) -> onnxruntime.InferenceSession:
    """A session of the model on one provider (OpenVINO's on the CPU at FP32 precision), one inter-op thread."""
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    chosen = (provider, {"device_type": "CPU", "precision": "FP32"}) if provider.startswith("OpenVINO") else provider
    return onnxruntime.InferenceSession(str(path), options, providers=[chosen])


def main() -> None:
    """Time both files on both providers and print views per second and the distance from float32 on the CPU."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dogscats" / "onnx")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = {"float32": args.cache / f"{FLOAT}.onnx", "int8": sorted(args.cache.glob(f"{FLOAT}-int8-*.onnx"))[0]}
    print(f"onnxruntime {onnxruntime.__version__}; int8 file {files['int8'].name}")
    x = np.random.default_rng(0).uniform(-1, 1, (32, 320, 320, 3)).astype(np.float32)
    runs = {(name, provider): session(path, provider) for name, path in files.items() for provider in PROVIDERS}
    outputs = {key: run.run(None, {run.get_inputs()[0].name: x})[0] for key, run in runs.items()}  # and a warm-up
    speeds: dict = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            for _ in range(4):
                run.run(None, {run.get_inputs()[0].name: x})
            speeds[key].append(4 * len(x) / (time.perf_counter() - start))
    reference = outputs[("float32", "CPUExecutionProvider")]
    for key, values in speeds.items():
        distance = np.linalg.norm(outputs[key] - reference, axis=1) / np.linalg.norm(reference, axis=1)
        print(f"{key[0]:<8} {key[1]:<26} {statistics.median(values):7.1f} views/s  rel L2 {np.median(distance):.3g}")


if __name__ == "__main__":
    main()

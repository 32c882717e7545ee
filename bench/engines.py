"""Compare the CPU inference engines on one backbone's feature extractor: TensorFlow, ONNX Runtime and OpenVINO.

    pip install openvino==2026.4.1   # not a project dependency: only this comparison needs it
    python bench/engines.py --backbone efficientnet_lite0 --data ../shared/data/catsdogs

Each engine runs the same extractor (converted from the project's Keras model) on one batch of real photos, decoded
once, in interleaved rounds; it prints each engine's images/s (median), its speed relative to TensorFlow and its
largest feature deviation from TensorFlow. This is how ONNX Runtime was chosen as the project's engine.
"""

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    """Time every engine on the same batch and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, required=True, help="a folder in the Kaggle layout (train/, test/)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import openvino as ov
    except ImportError:
        raise SystemExit("this comparison needs OpenVINO: pip install openvino==2026.4.1") from None
    import tensorflow as tf

    from dogscats.engine.conversion import EngineModel, to_onnx
    from dogscats.engine.extract import image_dataset
    from dogscats.networks.backbones import get_backbone, load_feature_extractor

    backbone = get_backbone(args.backbone)
    size = backbone.input_size
    model = load_feature_extractor(backbone.name, "imagenet")
    files = sorted(str(p) for p in (args.data / "train").glob("*.jpg"))[: args.batch_size]
    images = next(iter(image_dataset(files, [True] * len(files), size, "crop", "reduced", len(files)))).numpy()
    x = backbone.preprocess(images.astype(np.float32))

    keras_call = tf.function(lambda batch: model(batch, training=False))
    onnx_model = EngineModel(to_onnx(model), backbone.name)
    core = ov.Core()
    ov_model = ov.convert_model(model, input=[[-1, size, size, 3]])
    latency = core.compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    throughput = core.compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    run = {
        "tensorflow": lambda: keras_call(x).numpy(),
        "onnxruntime": lambda: onnx_model(x),
        "openvino latency": lambda: latency(x)[0],
        "openvino throughput": lambda: throughput(x)[0],
    }
    reference = run["tensorflow"]()
    speeds: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(args.rounds):
        for name, call in run.items():
            call()  # warm
            start = time.perf_counter()
            for _ in range(4):
                call()
            speeds[name].append(4 * len(x) / (time.perf_counter() - start))
    base = float(np.median(speeds["tensorflow"]))
    print(f"{backbone.name}, batch {len(x)} real photos, {args.rounds} interleaved rounds:")
    for name, call in run.items():
        speed = float(np.median(speeds[name]))
        deviation = float(np.abs(np.asarray(call()) - reference).max())
        print(f"{name:20s} {speed:7.1f} images/s  x{speed / base:.2f}  max |f - f_tf| = {deviation:.1e}")


if __name__ == "__main__":
    main()

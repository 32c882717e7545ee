"""Stage export: the trained models as one self-contained classifier, models/classifier/: classifier.onnx (for the
engine, what dogscats.Classifier runs), classifier.keras (the same graph in Keras) and settings.json (classes, input
sizes, decode and resize policies, and predict's blend weight, temperature and clip bounds)."""

import json
import sys
from pathlib import Path

import keras

from dogscats.atomic import atomic_dir, save_keras_model, write_json
from dogscats.classifier import KERAS_MODEL, ONNX_MODEL, SETTINGS
from dogscats.export import check_onnx, classifier_graph, probe_inputs, to_onnx
from dogscats.feature_store import shared_classes
from dogscats.head import feature_files
from dogscats.images import crop_side
from dogscats.params import load_params


def mean_of(models: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of the models' outputs (the fold heads' mean)."""
    if len(models) == 1:
        return models[0]
    inputs = keras.Input(models[0].input.shape[1:], name="features")
    return keras.Model(inputs, keras.layers.Average()([model(inputs) for model in models]), name="fold_mean")


def main(features_dir: str, heads_dir: str, finetuned_dir: str, predict_metrics: str, train_metrics: str, out: str):
    """Build the classifier graph from the saved models and predict's choices; write it atomically."""
    keras.utils.clear_session()  # layer names numbered from zero as in a new process: the same bytes in any process
    params = load_params()
    features_cfg, choices = params["features"], json.loads(Path(predict_metrics).read_text())
    best = json.loads(Path(train_metrics).read_text())["best_epoch"]
    if choices["head_epoch"] != best:
        raise ValueError(
            f"{predict_metrics} chose the head at epoch {choices['head_epoch']}, the saved heads are at {best}"
        )
    heads = sorted(Path(heads_dir).glob("fold_*.keras"))
    refit = Path(heads_dir) / "all.keras"
    head = keras.saving.load_model(refit) if refit.exists() else mean_of([keras.saving.load_model(p) for p in heads])
    finetuned = []
    if choices["blend"] > 0:
        finetuned = [keras.saving.load_model(p) for p in sorted(Path(finetuned_dir).glob("fold_*.keras"))]
    sizes = {name: features_cfg["input_size"][name] for name in params["backbones"]}
    graph = classifier_graph(
        sizes, features_cfg, head, finetuned, params["finetune"]["backbone"], params["predict"]["finetune_tta"]
    )
    sides = {name: crop_side(size, features_cfg["crops"]) for name, size in sizes.items()}  # the images' load sides
    settings = {
        "classes": shared_classes(feature_files(features_dir, params["backbones"])),
        "sizes": sides,
        "resize": features_cfg["resize"],
        "decode": features_cfg["decode"],
        **{key: choices[key] for key in ("blend", "temperature", "clip_low", "clip_high", "head_epoch", "epoch")},
    }
    with atomic_dir(Path(out)) as tmp:
        (tmp / ONNX_MODEL).write_bytes(to_onnx(graph))
        difference = check_onnx(graph, tmp / ONNX_MODEL, probe_inputs(sides))
        save_keras_model(graph, tmp / KERAS_MODEL)
        write_json(tmp / SETTINGS, settings)
    print(
        f"export: {out} ({', '.join(f'{n} at {s}' for n, s in sizes.items())}; ONNX within {difference:.1e} of Keras)"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])

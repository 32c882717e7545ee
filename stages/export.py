"""Stage export: the trained models as one self-contained classifier, models/classifier/: classifier.onnx (for the
engine, what dogscats.Classifier runs), classifier.keras (the same graph in Keras) and settings.json (classes, input
sizes, decode and resize policies, and predict's blend weight, temperature and clip bounds), and cam.json (the head's
weights over the backbones' feature maps, for class activation maps: dogscats.product.explain) when the head is GAP ->
Dense.

The graph is built from what the earlier stages wrote, not from params: the preprocessing from the feature files, the
fine-tuned models from models/finetuned's description, the choices from predict's metrics. Only the list of backbones
(the head's feature order) comes from params."""

import json
import sys
from pathlib import Path

import keras

from dogscats.base.atomic import atomic_dir, save_keras_model, write_json
from dogscats.base.params import load_params
from dogscats.data.classifier_files import CAM_FILE, KERAS_MODEL, ONNX_MODEL, SETTINGS
from dogscats.data.feature_store import shared_classes
from dogscats.data.images import crop_side
from dogscats.models.export import (
    cam_settings,
    check_finetuned,
    check_int8,
    check_onnx,
    check_preprocessing,
    classifier_graph,
    int8_networks,
    probe_inputs,
    to_onnx,
)
from dogscats.models.finetune import load_finetuned, read_description
from dogscats.models.head import feature_files


def mean_of(models: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of the models' outputs (the fold heads' mean)."""
    if len(models) == 1:
        return models[0]
    inputs = keras.Input(models[0].input.shape[1:], name="features")
    return keras.Model(inputs, keras.layers.Average()([model(inputs) for model in models]), name="fold_mean")


def check_epochs(choices: dict, head_epoch: int, finetuned_epoch: int, predict_metrics: str) -> None:
    """predict's chosen epochs must be those of the saved models (else a stage is stale, or chose by another rule)."""
    for key, saved, what in (("head_epoch", head_epoch, "heads"), ("epoch", finetuned_epoch, "fine-tuned folds")):
        if choices[key] != saved:
            raise ValueError(
                f"{predict_metrics} chose {key} {choices[key]}, but the saved {what} are at epoch {saved}; "
                "rerun the stages (dvc repro)"
            )


def main(features_dir: str, heads_dir: str, finetuned_dir: str, predict_metrics: str, train_metrics: str, out: str):
    """Build the classifier graph from the saved models and predict's choices; write it atomically."""
    keras.utils.clear_session()  # layer names numbered from zero as in a new process: the same bytes in any process
    backbones = load_params()["backbones"]
    files = feature_files(features_dir, backbones)
    sizes, preprocessing = check_preprocessing(files, backbones)
    choices = json.loads(Path(predict_metrics).read_text())
    description = read_description(finetuned_dir)
    check_epochs(
        choices, json.loads(Path(train_metrics).read_text())["best_epoch"], description["epoch"], predict_metrics
    )
    heads = sorted(Path(heads_dir).glob("fold_*.keras"))
    refit = Path(heads_dir) / "all.keras"
    head = keras.saving.load_model(refit) if refit.exists() else mean_of([keras.saving.load_model(p) for p in heads])
    finetuned = None
    if choices["blend"] > 0:
        check_finetuned(description, preprocessing, sizes, finetuned_dir)
        finetuned = load_finetuned(finetuned_dir)
    graph = classifier_graph(sizes, preprocessing, head, finetuned)
    sides = {name: crop_side(size, preprocessing["crops"]) for name, size in sizes.items()}  # the images' load sides
    settings = {
        "classes": shared_classes(files),
        "sizes": sides,
        "resize": preprocessing["resize"],
        "decode": preprocessing["decode"],
        **{key: choices[key] for key in ("blend", "temperature", "clip_low", "clip_high", "head_epoch", "epoch")},
        "precision": preprocessing["precision"],
    }
    with atomic_dir(Path(out)) as tmp:
        int8 = int8_networks(files, sizes, preprocessing)  # the features stages' own int8 networks, if any
        (tmp / ONNX_MODEL).write_bytes(to_onnx(graph, int8))
        if int8:  # the Keras graph is float32: the check is against the int8 networks' features and the head
            difference = check_int8(head, int8, tmp / ONNX_MODEL, probe_inputs(sides), preprocessing)
        else:
            difference = check_onnx(graph, tmp / ONNX_MODEL, probe_inputs(sides))
        save_keras_model(graph, tmp / KERAS_MODEL)
        write_json(tmp / SETTINGS, settings)
        cam = cam_settings(head, sizes, preprocessing)
        if cam:  # the head's weights over the feature maps: dogscats classify --explain, the worst-mistakes page
            write_json(tmp / CAM_FILE, cam)
    within = "the int8 networks' head" if preprocessing["precision"] == "int8" else "Keras"
    where = ", ".join(f"{n} at {s}" for n, s in sizes.items())
    print(f"export: {out} ({where}; ONNX within {difference:.1e} of {within})")


if __name__ == "__main__":
    main(*sys.argv[1:])

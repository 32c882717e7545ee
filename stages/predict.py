"""Stage predict: p(dog) for every test image, clipped to [clip_low, clip_high] (the metric is log loss)."""

import sys

import keras
import numpy as np
import pandas as pd

from dogscats.atomic import write_csv, write_json
from dogscats.feature_store import read_labels
from dogscats.head import feature_files, load_concatenated, predict_proba
from dogscats.params import load_params
from dogscats.scoring import clip


def main(features_dir: str, model_path: str, predictions_path: str, metrics_path: str) -> None:
    """Predict the test split; an image that did not decode gets the training set's share of dogs."""
    params = load_params()
    cfg = params["predict"]
    files = feature_files(features_dir, params["backbones"])
    test = load_concatenated(files, "test")
    prior = float(np.mean(read_labels(files[0], "train")))
    p = predict_proba(keras.models.load_model(model_path), test.features)
    p = np.where(test.usable, p, prior)
    p = clip(p, cfg["clip_low"], cfg["clip_high"])
    write_csv(predictions_path, pd.DataFrame({"id": test.ids, "label": p}))
    metrics = {"n_test": len(p), "n_prior": int((~test.usable).sum()), "mean_p_dog": float(p.mean())}
    write_json(metrics_path, metrics)
    print(f"predict: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Benchmark how the test photos should be predicted: the average of the k fold heads, or one head refit on all
labelled photos. Judged out of fold, one level down: for each fold f, the other folds play "all labelled photos";
the average of their k-1 inner heads (each trained without one of them) and one head refit on all of them both
predict fold f, and the two sets of out-of-fold probabilities are scored over every labelled photo.

    python bench/refit.py [--manifest data/split.csv --features data/features --epochs N]

Reads the backbones and the train section from params.yaml, and the stored features (run `dvc repro train` first).
"""

import argparse

import numpy as np

from dogscats.base.params import load_params
from dogscats.base.scoring import accuracy, log_loss
from dogscats.data.dataset import folds_of, read_manifest
from dogscats.data.feature_store import shared_classes
from dogscats.models.head import feature_files, fit_head, load_concatenated, predict_proba, subset
from dogscats.networks.determinism import set_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data/split.csv")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--epochs", type=int, help="the heads' epochs (default: train.epochs)")
    args = parser.parse_args()
    params = load_params()
    cfg = params["train"]
    files = feature_files(args.features, params["backbones"])
    labelled = load_concatenated(files, "train")
    folds = folds_of(read_manifest(args.manifest), labelled.ids, args.manifest)
    n_classes = len(shared_classes(files))
    fit_args = (
        n_classes, cfg["hidden"], cfg["dropout"], cfg["optimizer"], cfg["learning_rate"], args.epochs or cfg["epochs"],
        cfg["batch_size"],
    )  # fmt: skip
    set_seed(cfg["seed"])

    p_average, p_refit = np.zeros((len(folds), n_classes)), np.zeros((len(folds), n_classes))
    fold_ids = sorted(set(folds))
    for fold in fold_ids:
        target = labelled.features[folds == fold]
        inner = [f for f in fold_ids if f != fold]
        for left_out in inner:
            rows = np.flatnonzero((folds != fold) & (folds != left_out))
            head, _ = fit_head(subset(labelled, rows), None, *fit_args)
            p_average[folds == fold] += predict_proba(head, target) / len(inner)
        head, _ = fit_head(subset(labelled, np.flatnonzero(folds != fold)), None, *fit_args)
        p_refit[folds == fold] = predict_proba(head, target)
        print(f"fold {fold}: average {log_loss(labelled.labels[folds == fold], p_average[folds == fold]):.4f}, "
              f"refit {log_loss(labelled.labels[folds == fold], p_refit[folds == fold]):.4f}", flush=True)  # fmt: skip

    y = labelled.labels
    print(f"\n{len(y)} labelled photos, {len(fold_ids)} folds, {fit_args[5]} epochs, backbones {params['backbones']}")
    print("| test photos predicted by | out-of-fold log loss | clipped [0.005, 0.995] | accuracy |")
    print("|---|---|---|---|")
    for name, p in (("average of the fold heads", p_average), ("one head refit on all", p_refit)):
        clipped = np.clip(p, 0.005, 0.995)
        print(f"| {name} | {log_loss(y, p):.4f} | {log_loss(y, clipped / clipped.sum(1, keepdims=True)):.4f} | "
              f"{accuracy(y, p):.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()

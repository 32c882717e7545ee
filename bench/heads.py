"""Benchmark the train stage's heads: trained one by one (each fold's head, then the refit head, each its own Keras
fit with its held-out fold evaluated every epoch, as train did before issue 25) against all in one pass
(dogscats/models/fold_heads.py, as train does now). Prints each way's time and out-of-fold log loss (at the best
checkpoint epoch, as train.json's oof_logloss_optimistic, and at the last epoch).

    python bench/heads.py --rows 2000 20000             # synthetic: two Gaussians in 1,280 dimensions
    python bench/heads.py --features data/features --manifest data/split.csv   # the stored features (params.yaml)

Reads train's params from params.yaml (hidden, dropout, optimizer, learning rate, epochs, batch size, seed, refit);
--epochs and --folds override. --only one-pass skips the slow way.
"""

import argparse
import time

import numpy as np

from dogscats.base.params import load_params
from dogscats.base.scoring import log_loss
from dogscats.data.feature_store import SplitFeatures, shared_classes
from dogscats.models.fold_heads import fit_heads, out_of_fold
from dogscats.models.head import EpochPredictions, checkpoint_epochs, feature_files, fit_head, load_concatenated, subset
from dogscats.networks.determinism import set_seed

KERAS_EPS = 1e-7


def synthetic(rows: int, dim: int, folds: int, seed: int) -> tuple[SplitFeatures, np.ndarray, np.ndarray]:
    """Labelled rows from two Gaussians (unit variance, means 4 apart along a random direction), round-robin folds,
    and 1,000 test rows."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return (rng.normal(size=(n, dim)) + np.outer(4 * y - 2, direction)).astype(np.float32), y

    x, y = draw(rows)
    labelled = SplitFeatures([str(i) for i in range(rows)], x, y, np.ones(rows, bool))
    return labelled, np.arange(rows) % folds + 1, draw(1000)[0]


def one_by_one(labelled: SplitFeatures, folds: np.ndarray, test: np.ndarray, cfg: dict, n_classes: int) -> dict:
    """Each head its own Keras fit, as train did before: {epoch: out-of-fold probabilities} at the checkpoints."""
    checkpoints = checkpoint_epochs(cfg["epochs"])
    fit_args = (n_classes, *(cfg[k] for k in ("hidden", "dropout", "optimizer", "learning_rate", "epochs")))
    p_oof = {e: np.zeros((len(folds), n_classes)) for e in checkpoints}
    for fold in sorted(set(folds.tolist())):
        held_out, fit_rows = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        recorder = EpochPredictions([labelled.features[held_out], test], checkpoints)
        fit_head(subset(labelled, fit_rows), subset(labelled, held_out), *fit_args, cfg["batch_size"], [recorder])
        for epoch, (oof, _) in recorder.predictions.items():
            p_oof[epoch][held_out] = oof
    if cfg["refit"]:
        fit_head(labelled, None, *fit_args, cfg["batch_size"], [EpochPredictions([test], checkpoints)])
    return p_oof


def one_pass(labelled: SplitFeatures, folds: np.ndarray, test: np.ndarray, cfg: dict, n_classes: int) -> dict:
    """All the heads in one pass, with the stage's per-epoch curves computed: the same {epoch: probabilities}."""
    keys = ("hidden", "dropout", "optimizer", "learning_rate", "epochs", "batch_size", "seed")
    kept = fit_heads(
        labelled.features, labelled.labels, folds, test, cfg["refit"], n_classes, *(cfg[k] for k in keys),
        checkpoint_epochs(cfg["epochs"]), lambda epoch, figures: None,
    )  # fmt: skip
    fold_ids = sorted(set(folds.tolist()))
    return {e: out_of_fold(c.labelled, folds, fold_ids) for e, c in kept.items()}


def report(name: str, rows: int, seconds: float, labels: np.ndarray, p_oof: dict) -> None:
    """One line: the time and the out-of-fold log loss, best checkpoint and last."""
    losses = {e: log_loss(labels, p) for e, p in p_oof.items()}
    best = min(losses, key=lambda e: (losses[e], e))
    last = max(losses)
    print(f"| {rows} | {name} | {seconds:.1f} | {losses[best]:.5f} (epoch {best}) | {losses[last]:.5f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[2000, 20000], help="synthetic labelled rows")
    parser.add_argument("--features", help="a features folder (params.yaml's backbones) instead of synthetic rows")
    parser.add_argument("--manifest", default="data/split.csv")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--folds", type=int, default=5, help="synthetic rows' folds")
    parser.add_argument("--seeds", type=int, nargs="*", help="training seeds (default: train.seed); the data's is 0")
    parser.add_argument("--only", choices=["one-pass", "one-by-one"])
    args = parser.parse_args()
    params = load_params()
    cfg = params["train"] | ({"epochs": args.epochs} if args.epochs else {})
    if args.features:
        from dogscats.data.dataset import folds_of, read_manifest

        files = feature_files(args.features, params["backbones"])
        labelled = load_concatenated(files, "train")
        sets = [(labelled, folds_of(read_manifest(args.manifest), labelled.ids, args.manifest))]
        sets = [(*sets[0], load_concatenated(files, "test").features, len(shared_classes(files)))]
    else:
        sets = [(*synthetic(n, 1280, args.folds, 0), 2) for n in args.rows]
    print(f"train params: {cfg}")
    print("| labelled rows | heads trained | seconds | out-of-fold log loss, best checkpoint | at the last epoch |")
    print("|---|---|---|---|---|")
    ways = {"one by one": one_by_one, "one pass": one_pass}
    for labelled, folds, test, n_classes in sets:
        for seed in args.seeds or [cfg["seed"]]:
            for name, train in ways.items():
                if args.only and args.only != name.replace(" ", "-"):
                    continue
                set_seed(seed)
                start = time.perf_counter()
                p_oof = train(labelled, folds, test, cfg | {"seed": seed}, n_classes)
                report(f"{name}, seed {seed}", len(folds), time.perf_counter() - start, labelled.labels, p_oof)


if __name__ == "__main__":
    main()

"""Stage demo: generate the built-in demo dataset (Kaggle layout) so the pipeline runs on a fresh offline machine."""

import sys
from pathlib import Path

from dogscats.base.params import load_params
from dogscats.data.demo import generate_demo


def main(out: str) -> None:
    """Write the demo images under `out`."""
    params = load_params()["demo"]
    generate_demo(Path(out), params["train_per_class"], params["test_count"], params["seed"])
    print(f"demo: {2 * params['train_per_class']} training and {params['test_count']} test images in {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])

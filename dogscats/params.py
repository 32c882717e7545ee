"""Access to params.yaml, the single source of every tunable of the pipeline."""

from pathlib import Path

import yaml

PARAMS_FILE = Path("params.yaml")


def load_params(path: Path | str = PARAMS_FILE) -> dict:
    """All params as a dict."""
    with open(path) as f:
        return yaml.safe_load(f)

"""data/overrides.csv: the user's corrections of the labelled photos, applied by prepare and versioned with the code.

Columns id,action: action `exclude` leaves a labelled photo out, `relabel:<class>` gives it another of the classes. The
ids are the manifest's (data/split.csv; the audit's data/audit.csv uses the same). A missing or empty file means no
overrides."""

from pathlib import Path

import pandas as pd

from dogscats.data.untrusted import DataError, read_table

COLUMNS = ["id", "action"]


def read_overrides(path: Path | str) -> pd.DataFrame:
    """The overrides table (id, action, and `line`, each row's line in the file, blank lines counted); empty if the
    file is missing or empty."""
    if not Path(path).is_file() or not Path(path).read_bytes().strip():  # missing or empty: none
        return pd.DataFrame({"id": [], "action": [], "line": []})
    table = read_table(path)
    if list(table.columns[:2]) != COLUMNS:
        raise DataError(
            f"{path}: the overrides need the columns id,action (found {', '.join(map(repr, table.columns))})"
        )
    return table[COLUMNS].assign(line=table.index).reset_index(drop=True)


def apply_overrides(images: pd.DataFrame, overrides: pd.DataFrame, path: Path | str) -> tuple[pd.DataFrame, dict]:
    """The scanned photos (id, label, split, ...) with the overrides applied, checked row by row (an unknown or test
    id, an id twice, an unknown class or action stop the run, naming the file and line); and the counts."""
    labelled = images[images.split == "train"].set_index("id")
    test_ids = set(images.id[images.split == "test"])
    classes = sorted(set(labelled.label))
    excluded, relabelled = [], {}
    for id_, action, line in overrides.itertuples(index=False):
        where = f"{path}, line {line}"
        if id_ in test_ids and id_ not in labelled.index:
            raise DataError(f"{where}: {id_!r} is a photo to predict; only labelled photos can be overridden")
        if id_ not in labelled.index:
            raise DataError(f"{where}: no labelled photo has the id {id_!r} (the ids of data/split.csv)")
        if id_ in excluded or id_ in relabelled:
            raise DataError(f"{where}: {id_!r} is overridden twice")
        kind, _, target = action.partition(":")
        if action == "exclude":
            excluded.append(id_)
        elif kind == "relabel" and target in classes:
            relabelled[id_] = target
        elif kind == "relabel":
            raise DataError(f"{where}: {action!r}: {target!r} is not a class ({', '.join(classes)})")
        else:
            raise DataError(f"{where}: action {action!r} is neither exclude nor relabel:<class>")
    train = images.split == "train"
    out = images[~(train & images.id.isin(excluded))].copy()
    change = (out.split == "train") & out.id.isin(relabelled)
    out.loc[change, "label"] = out.id[change].map(relabelled)
    for label in classes:
        if not ((out.split == "train") & (out.label == label)).any():
            raise DataError(f"{path}: no labelled photo of class {label} is left after the overrides")
    return out.reset_index(drop=True), {"n_excluded": len(excluded), "n_relabelled": len(relabelled)}

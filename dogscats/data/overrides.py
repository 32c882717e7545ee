"""data/overrides.csv: the user's corrections of the labelled photos, applied by prepare and versioned with the code.

Columns id,action: action `exclude` leaves a labelled photo out, `relabel:<class>` gives it another of the classes,
`keep` records that a person reviewed it and its label stands (counted, changes nothing: `dogscats review` writes it,
and the audit marks the photo's findings reviewed). The ids are the manifest's (data/split.csv; the audit's
data/audit.csv uses the same). A missing or empty file means no overrides."""

from collections.abc import Iterable
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


def check_override(
    id_: str, action: str, labelled: set[str], test_ids: set[str], classes: list[str], where: str
) -> str:
    """The kind of one row's action (exclude, relabel or keep), or DataError naming where and the rule it breaks: the
    check prepare makes of every row, and `dogscats review` of every decision."""
    if id_ in test_ids and id_ not in labelled:
        raise DataError(f"{where}: {id_!r} is a photo to predict; only labelled photos can be overridden")
    if id_ not in labelled:
        raise DataError(f"{where}: no labelled photo has the id {id_!r} (the ids of data/split.csv)")
    kind, _, target = action.partition(":")
    if action in ("exclude", "keep") or (kind == "relabel" and target in classes):
        return kind
    if kind == "relabel":
        raise DataError(f"{where}: {action!r}: {target!r} is not a class ({', '.join(classes)})")
    raise DataError(f"{where}: action {action!r} is neither exclude, relabel:<class> nor keep")


def checked_rows(
    rows: Iterable[tuple[str, str, str]], labelled: set[str], test_ids: set[str], classes: list[str]
) -> list[str]:
    """The kinds of rows (id, action, where each is: file and line, or the decision), each checked by check_override
    and no id twice; DataError naming where the first broken row is."""
    seen, kinds = set(), []
    for id_, action, where in rows:
        kinds.append(check_override(id_, action, labelled, test_ids, classes, where))
        if id_ in seen:
            raise DataError(f"{where}: {id_!r} is overridden twice")
        seen.add(id_)
    return kinds


def apply_overrides(images: pd.DataFrame, overrides: pd.DataFrame, path: Path | str) -> tuple[pd.DataFrame, dict]:
    """The scanned photos (id, label, split, ...) with the overrides applied, checked row by row (check_override; an id
    twice stops the run too, naming the file and line); and the counts."""
    labelled = images[images.split == "train"].set_index("id")
    test_ids = set(images.id[images.split == "test"])
    classes, ids = sorted(set(labelled.label)), set(labelled.index)
    rows = [(id_, action, f"{path}, line {line}") for id_, action, line in overrides.itertuples(index=False)]
    excluded, relabelled, kept = [], {}, 0
    for (id_, action, _), kind in zip(rows, checked_rows(rows, ids, test_ids, classes), strict=True):
        if kind == "exclude":
            excluded.append(id_)
        elif kind == "relabel":
            relabelled[id_] = action.partition(":")[2]
        else:
            kept += 1
    train = images.split == "train"
    out = images[~(train & images.id.isin(excluded))].copy()
    change = (out.split == "train") & out.id.isin(relabelled)
    out.loc[change, "label"] = out.id[change].map(relabelled)
    left = left_classes(out[out.split == "train"].label, classes)
    if left:
        raise DataError(f"{path}: no labelled photo of class {left[0]} is left after the overrides")
    return out.reset_index(drop=True), {"n_excluded": len(excluded), "n_relabelled": len(relabelled), "n_kept": kept}


def left_classes(labels: pd.Series, classes: list[str]) -> list[str]:
    """The classes no label is left of."""
    return [label for label in classes if not (labels == label).any()]


def covered(decisions: list[str], splits: list[str]) -> bool:
    """Whether a finding (its photos' decisions, "" for none, and splits) needs no more review: one of its photos is
    excluded, or each labelled one has a decision; a finding of test photos alone has nothing to decide."""
    return "exclude" in decisions or all(d for d, split in zip(decisions, splits, strict=True) if split == "train")

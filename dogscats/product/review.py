"""`dogscats review`: the audit's suspects and the decisions on them, read from a project and written to its
data/overrides.csv. The files, not the web: the page (dogscats.product.review_api) calls these.

A decision is a row of data/overrides.csv: keep (reviewed, the label stands), exclude or relabel:<class>, one row a
photo. Each change is made under an exclusive lock on the project's data folder (two pages, or two servers, never lose
each other's decisions), checked by the rules prepare applies (data.overrides.check_override), and written
atomically. Photos are found by id in data/split.csv only."""

import contextlib
import fcntl
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dogscats.base.atomic import write_csv
from dogscats.data.overrides import COLUMNS, check_override, checked_rows, covered, left_classes, read_overrides
from dogscats.data.untrusted import DataError, read_table

PAIRS = ("conflict", "leak", "duplicate")  # the audit's kinds of two photos; label and outlier are of one
NEXT = "dvc repro && dvc metrics diff"  # what rebuilds the pipeline from the decisions, and shows what they changed


@dataclass(frozen=True)
class Project:
    """The files of a project that the review reads and writes, under its root."""

    root: Path

    @property
    def split(self) -> Path:
        return self.root / "data" / "split.csv"

    @property
    def audit(self) -> Path:
        return self.root / "data" / "audit.csv"

    @property
    def overrides(self) -> Path:
        return self.root / "data" / "overrides.csv"


def read_manifest(path: Path) -> pd.DataFrame:
    """data/split.csv as strings (data.dataset reads it so too; that module brings the pipeline's params reader),
    read again only when the file changes: every photo and map the page asks for looks its id up in it. Not to be
    changed by the caller."""
    stat = path.stat()
    return _manifest(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _manifest(path: Path, mtime_ns: int, size: int) -> pd.DataFrame:
    """The file at path as it was at that modification time and size (read_manifest's cache)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def classes_of(manifest: pd.DataFrame) -> list[str]:
    """The classes of the labelled photos, sorted: their positions are the label indices."""
    return sorted(set(manifest.label[manifest.split == "train"]))


def open_project(root: Path | str) -> Project:
    """The project at root, or DataError saying which of its files is missing and what makes it."""
    project = Project(Path(root).resolve())
    for path, made_by in ((project.split, "dvc repro prepare"), (project.audit, "dvc repro audit")):
        if not path.is_file():
            raise DataError(f"{path}: not found; run `{made_by}` in {project.root} first")
    return project


def decisions(project: Project) -> dict[str, str]:
    """Each decided photo's action, from data/overrides.csv (DataError naming the file and line if it is broken)."""
    table = read_overrides(project.overrides)
    return dict(zip(table.id, table.action, strict=True))


def suspects(project: Project) -> tuple[list[dict], list[str]]:
    """The audit's findings in its order (by kind, the worst first), each with its photos' current decisions, the
    decisions the audit saw, and whether it is reviewed; and the classes."""
    table = pd.read_csv(project.audit, dtype=str, keep_default_na=False)
    decided = decisions(project)
    rows = []
    for row in table.to_dict("records"):
        ids, splits = [row["id"]], [row["split"]]
        if row["other_id"]:
            ids, splits = [*ids, row["other_id"]], [*splits, row["other_split"]]
        now = [decided.get(id_, "") for id_ in ids]
        seen = [row.get("decision", ""), row.get("other_decision", "")][: len(ids)]
        rows.append(
            {
                **{key: row[key] for key in ("id", "kind", "other_id", "given", "suggested", "split", "other_split")},
                "score": float(row["score"]),
                "fold": row["fold"],
                "other_fold": row["other_fold"],
                "exact": row.get("exact", "") == "True",
                "decisions": now,
                "audited": seen,  # as data/audit.csv recorded them: a difference means the pipeline has not run since
                "reviewed": covered(now, splits),
            }
        )
    return rows, classes_of(read_manifest(project.split))


def progress(rows: list[dict]) -> dict:
    """Reviewed and left per kind, and how many findings' decisions the pipeline has not yet run on."""
    kinds = {row["kind"]: {"reviewed": 0, "left": 0} for row in rows}
    for row in rows:
        kinds[row["kind"]]["reviewed" if row["reviewed"] else "left"] += 1
    pending = sum(row["decisions"] != row["audited"] for row in rows)
    return {"kinds": kinds, "not_run": pending, "next": NEXT}


@contextlib.contextmanager
def locked(project: Project) -> Iterator[None]:
    """An exclusive lock on the project's data folder for the block (flock: released if the process dies)."""
    folder = os.open(project.root / "data", os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing releases the lock


def decide(project: Project, changes: list[tuple[str, str]]) -> dict[str, str]:
    """Apply decisions (id, action; "" removes the photo's decision) to data/overrides.csv together, under the lock:
    each checked as prepare checks the file, and one that would leave a class without photos refused; DataError
    naming the decision (the file unchanged) otherwise. Returns the decisions of the ids changed, as written."""
    with locked(project):
        path = project.overrides
        table = read_table(path) if path.is_file() and path.read_bytes().strip() else pd.DataFrame(columns=COLUMNS)
        if list(table.columns[:2]) != COLUMNS:
            raise DataError(f"{path}: the overrides need the columns id,action; fix its header first")
        manifest = read_manifest(project.split)
        labelled_rows = manifest[manifest.split == "train"]
        test_ids = set(manifest.id[manifest.split == "test"])
        # an id of the file that data/split.csv lacks was excluded when prepare last ran (it stops on any other)
        labelled = set(labelled_rows.id) | (set(table.id) - test_ids)
        classes = classes_of(manifest)
        table = table.reset_index(drop=True)
        for id_, action in changes:  # a decided photo's row changes in its place; a new one goes last
            if not action:
                table = table[table.id != id_].reset_index(drop=True)
                continue
            check_override(id_, action, labelled, test_ids, classes, f"decision {id_},{action}")
            if action == "keep" and table.action[table.id == id_].str.startswith("relabel:").any():
                continue  # the label the page shows is the relabel's: it stands
            if (table.id == id_).any():
                table.loc[table.id == id_, "action"] = action
            else:
                row = pd.DataFrame([{column: "" for column in table.columns} | {"id": id_, "action": action}])
                table = pd.concat([table, row], ignore_index=True)
        lines = [f"{path}, line {line}" for line in range(2, len(table) + 2)]
        rows = zip(table.id, table.action, lines, strict=True)
        checked_rows(rows, labelled, test_ids, classes)  # the whole file as prepare will read it
        labels = labelled_rows.set_index("id").label.copy()
        for id_, action in zip(table.id, table.action, strict=True):
            if action == "exclude":
                labels = labels.drop(id_, errors="ignore")
            elif action.startswith("relabel:"):
                labels[id_] = action.partition(":")[2]
        left = left_classes(labels, classes)
        if left:
            raise DataError(f"decision {changes[0][0]}: no labelled photo of class {left[0]} would be left")
        write_csv(path, table)
        written = dict(zip(table.id, table.action, strict=True))
        return {id_: written.get(id_, "") for id_, _ in changes}


def photo_file(project: Project, id_: str) -> Path:
    """The photo of an id of data/split.csv (its link under data/prepared, into data.raw); KeyError for any other."""
    manifest = read_manifest(project.split).set_index("id")
    if id_ not in manifest.index:
        raise KeyError(id_)
    return project.root / manifest.file[id_]

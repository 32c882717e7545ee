"""The raw data's layouts, its optional answer key, the split manifest and the symlink tree.

data.raw is a folder or a CSV table:
- Kaggle layout: train/cat.N.jpg and train/dog.N.jpg, the label in the file name, and test/N.jpg to predict.
- Folder-per-class layout: train/<class>/*.jpg, any number of classes named by their folders, and test/*.jpg.
- Class folders at the top: <class>/*.jpg with no train/ folder (then no folder may be called test or train).
- A CSV table (data.raw names the .csv file): columns path,label, the paths relative to the table's folder; an empty
  label marks a photo to predict. Optional columns: split (train or test: a test photo's label is no class, but the
  answer key when submit.labels names the table) and id (default: the path). Paths stay in the table's folder.
What the data names is checked before anything is written (dogscats.data.untrusted): classes are plain folder names,
and the links of the symlink tree are named by id, so every layout survives every override.
test/ is optional in the folder layouts: without photos to predict, every stage still runs and the submission is
empty. Classes are indexed in sorted order (cat 0, dog 1): with two, the submission's label is p(second class).

The manifest's `source` column, and the report's files, are paths relative to the image root (POSIX separators):
data.raw's folder, or the table's folder for a table (`image_root`), so the same photos in another folder or clone give
the same manifest byte for byte. The stages that open images resolve them against the image root with `image_paths`,
without tracking data.raw as a DVC param: the manifest's md5 column pins every image's content, so where the folder
lies changes no result, and moving it reruns prepare alone (whose output is then unchanged, so every later stage is
skipped or comes from the run-cache). For a table, DVC tracks the table itself as prepare's dependency, not the photos
it names: an edited photo (same path) does not rerun prepare by itself; once prepare reruns (dvc repro -f -s prepare,
or any change to the table or params), its new md5 changes the manifest and everything downstream reruns."""

import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.base.atomic import atomic_dir
from dogscats.data.untrusted import (
    DataError,
    MissingDataError,
    check_class_name,
    check_id,
    check_inside,
    is_file,
    link_name,
    read_table,
    text_problem,
)

CLASSES = ("cat", "dog")  # the Kaggle layout's classes
TRAIN_NAME = re.compile(r"^(cat|dog)\.(\d+)\.jpe?g$", re.IGNORECASE)
TEST_NAME = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)
# The folder-per-class layout's images; hidden files (a dot first, such as macOS's ._ copies) are not.
IMAGE_NAME = re.compile(r"^([^.].*)\.(jpe?g|png|gif|webp|bmp)$", re.IGNORECASE)
MANIFEST_COLUMNS = ["id", "file", "label", "split", "fold", "source", "problem", "md5"]


def is_table(raw: Path | str) -> bool:
    """Whether data.raw names a CSV table (else a folder)."""
    return Path(raw).suffix.lower() == ".csv"


def image_root(raw: Path | str) -> Path:
    """The folder the manifest's sources are relative to: data.raw itself, or a table's folder."""
    return Path(raw).parent if is_table(raw) else Path(raw)


def scan_raw(raw: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Read the raw data in any layout, or a table: a frame of (id, label, split, source) rows, and (file, reason)
    for the files that were skipped (no label in the name, not in a class folder); sources and files relative to
    image_root(raw)."""
    if is_table(raw) and raw.is_file():
        return scan_table(raw), []
    if not raw.is_dir():
        raise MissingDataError(
            f"data.raw: {raw.absolute()} is not a folder or a .csv table. A relative path is read from the project's"
            f" root; experiments run with --queue or --temp run in a copy of the project under .dvc/tmp/exps, where it"
            f" points elsewhere: give them an absolute path, e.g. -S data.raw=$(realpath {raw})"
        )
    if not (raw / "train").is_dir():
        return _scan_top_class_folders(raw)
    class_dirs = sorted(p for p in (raw / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    rows, skipped = _scan_class_folders(raw, class_dirs) if class_dirs else _scan_kaggle_train(raw)
    tests = sorted((raw / "test").iterdir()) if (raw / "test").is_dir() else []
    for path in tests:
        match = (TEST_NAME if not class_dirs else IMAGE_NAME).match(path.name)
        if match:
            rows.append((str(int(match[1])) if not class_dirs else match[1], "", "test", _relative(path, raw)))
        elif not path.name.startswith("."):
            reason = "name does not match N.jpg" if not class_dirs else "not an image file name"
            skipped.append((_relative(path, raw), reason))
    frame = pd.DataFrame(rows, columns=["id", "label", "split", "source"])
    _check_structure(frame, raw, raw / "train", [p.name for p in class_dirs] or list(CLASSES))
    return frame, skipped


def _scan_top_class_folders(raw: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """A folder of class folders (<class>/*.jpg, no train/): every photo labelled, none to predict."""
    class_dirs = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    if any(p.name == "test" for p in class_dirs):
        raise DataError(f"{raw}: a test/ folder but no train/ folder; put the labelled photos in train/")
    rows, skipped = _scan_class_folders(raw, class_dirs, raw)
    frame = pd.DataFrame(rows, columns=["id", "label", "split", "source"])
    if not class_dirs:
        raise MissingDataError(f"{raw}: no train/ folder and no class folders; see data.raw in README.md")
    _check_structure(frame, raw, raw, [p.name for p in class_dirs])
    return frame, skipped


TABLE_SPLITS = ("train", "test")


def scan_table(table: Path) -> pd.DataFrame:
    """A CSV table's (id, label, split, source) rows: path,label (an empty label: a photo to predict), optionally
    split and id, checked row by row; sources relative to the table's folder. A test row's label is not a class
    (table_answer_key reads it)."""
    rows = _table_rows(table)
    frame = rows.assign(label=rows.label.where(rows.split == "train", ""))
    _check_structure(frame, table, table, classes_of(frame.label[frame.split == "train"]))
    return frame.reset_index(drop=True)


def table_answer_key(table: Path) -> pd.DataFrame:
    """The answer key a table carries: its test rows' labels (id, label); DataError naming the test rows without one."""
    rows = _table_rows(table)
    test = rows[rows.split == "test"]
    missing = test.index[test.label == ""].tolist()
    if missing:
        raise DataError(
            f"{table}, line(s) {', '.join(map(str, missing[:10]))}: a photo to predict without a label, but"
            " submit.labels names the table as the answer key: label every test row, or set submit.labels to null"
        )
    return test[["id", "label"]].reset_index(drop=True)


def _table_rows(table: Path) -> pd.DataFrame:
    """A table's rows (id, label, split, source), indexed by line, each checked: a known split, a label where the
    split is train and every label a plain class name, a path that lies in the table's folder (symlinks resolved)
    and exists, ids and paths distinct; DataError naming the table, the line and the rule."""
    rows = read_table(table)
    missing = sorted({"path", "label"} - set(rows.columns))
    if missing:
        raise DataError(f"{table}: missing column(s) {', '.join(missing)}; a table needs path,label (split, id)")
    split = rows["split"] if "split" in rows else pd.Series("", index=rows.index)
    for n, value in split.items():
        if value not in ("", *TABLE_SPLITS):
            raise DataError(f"{table}, line {n}: split {value!r} is neither train nor test (nor empty)")
    split = split.where(split != "", np.where(rows.label == "", "test", "train"))
    for n, value, label in zip(rows.index, split, rows.label, strict=True):
        if value == "train" and not label:
            raise DataError(f"{table}, line {n}: split train with an empty label; give it a label, or split test")
        if value == "train":  # a class, so a folder of the symlink tree; a test row's label is only ever read
            check_class_name(label, f"{table}, line {n}")
        elif text_problem(label):
            raise DataError(f"{table}, line {n}: label {label!r} {text_problem(label)}")
    root = table.parent
    for n, path in rows.path.items():
        problem = "is empty" if not path else text_problem(path)
        if problem or Path(path).is_absolute():
            rule = problem or "is absolute"
            raise DataError(f"{table}, line {n}: path {path!r} {rule}; it must be relative to the table's folder")
        check_inside(root / path, root, f"{table}, line {n}")
        if not is_file(root / path):
            raise MissingDataError(f"{table}, line {n}: {str(root / path)!r} does not exist")
    ids = rows["id"] if "id" in rows else rows.path.map(lambda p: Path(p).as_posix())
    for n, id_, twice in zip(rows.index, ids, ids.duplicated(keep="first"), strict=True):
        check_id(id_, f"{table}, line {n}")
        if twice:
            raise DataError(f"{table}, line {n}: id {id_!r} is on line {ids.index[ids == id_][0]} too")
    sources = pd.Series([Path(path).as_posix() for path in rows.path], index=rows.index)
    for n, source, twice in zip(rows.index, sources, sources.duplicated(keep="first"), strict=True):
        if twice:
            raise DataError(f"{table}, line {n}: path {source!r} is on line {sources.index[sources == source][0]} too")
    return pd.DataFrame({"id": ids, "label": rows.label, "split": split, "source": sources})


def _relative(path: Path, raw: Path) -> str:
    """A file's path relative to data.raw, with POSIX separators: the manifest's `source`."""
    return path.relative_to(raw).as_posix()


def _scan_kaggle_train(raw: Path) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str]]]:
    """Rows of train/cat.N.jpg and train/dog.N.jpg (names read case-insensitively), and the names skipped."""
    rows, skipped = [], []
    for path in sorted((raw / "train").iterdir()):
        match = TRAIN_NAME.match(path.name)
        if match:
            rows.append((f"{match[1].lower()}.{match[2]}", match[1].lower(), "train", _relative(path, raw)))
        elif not path.name.startswith("."):
            skipped.append((_relative(path, raw), "name does not match cat.N.jpg or dog.N.jpg"))
    return rows, skipped


def _scan_class_folders(
    raw: Path, class_dirs: list[Path], train: Path | None = None
) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str]]]:
    """Rows of <train>/<class>/<name>.<image extension> (train: raw/train by default), id <class>/<name>, and the
    files skipped."""
    rows, train = [], train or raw / "train"
    strays = [p for p in sorted(train.iterdir()) if p.is_file() and p.name[0] != "."]
    skipped = [(_relative(p, raw), "not in a class folder") for p in strays]
    for folder in class_dirs:
        for path in sorted(folder.iterdir()):
            match = IMAGE_NAME.match(path.name)
            if match and path.is_file():
                rows.append((f"{folder.name}/{match[1]}", folder.name, "train", _relative(path, raw)))
            elif not path.name.startswith("."):
                skipped.append((_relative(path, raw), "not an image file name"))
    return rows, skipped


def _check_structure(frame: pd.DataFrame, raw: Path, where: Path, classes: list[str]) -> None:
    """Stop on problems no amount of skipping fixes: fewer than two classes, a class that is not a plain name or is
    empty, an id that cannot be written, duplicate ids; where names the folder or table the classes come from."""
    train = frame[frame.split == "train"]
    for label in classes:
        check_class_name(label, str(where))
    if len(classes) < 2:
        raise DataError(f"{where}: {len(classes)} class(es) ({', '.join(classes)}); classification needs two or more")
    reserved = sorted(set(classes) & {"id", "label"})
    if reserved:
        raise DataError(f"{where}: class (folder) {reserved[0]!r} would clash with the submission's columns; rename it")
    for label in classes:
        if not (train.label == label).any():
            raise DataError(f"{where}: no {label} images")
    for id_, source in zip(frame.id, frame.source, strict=True):
        check_id(id_, repr(str(image_root(raw) / source)))
    duplicated = frame[frame.duplicated(["split", "id"], keep=False)].assign(path=lambda f: image_paths(f, raw))
    dup = duplicated.groupby(["split", "id"]).path.apply(" and ".join)
    if len(dup):
        named = "; ".join(f"{split} id {id_}: {files}" for (split, id_), files in dup.head(10).items())
        raise DataError(f"duplicate ids (one file per id, please): {named}")


def classes_of(labels: pd.Series) -> list[str]:
    """The classes, sorted: their positions are the label indices (Kaggle: cat 0, dog 1)."""
    return sorted({label for label in labels if label})


def stratified_folds(md5s: pd.Series, labels: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Fold 1..folds per row, stable per photo: its home fold is a seeded hash of its content (md5), so a photo keeps
    its fold when relabelled, renamed or joined by others but for the few moved to keep the folds balanced, and
    identical photos share a home fold."""
    keys = np.array([photo_key(md5, seed) for md5 in md5s], dtype=np.uint64)
    fold = (keys % np.uint64(folds)).astype(int) + 1
    values, dealt = labels.to_numpy(), 0
    for label in classes_of(labels):
        rows = np.flatnonzero(values == label)
        fold[rows] = balanced(fold[rows], keys[rows], fold_targets(len(rows), folds, dealt))
        dealt += len(rows)
    return fold


def photo_key(md5: str, seed: int) -> int:
    """A photo's seeded 64-bit hash: its home fold and its place in the queue when a full fold gives photos away."""
    digest = hashlib.blake2b(f"{seed}:{md5}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fold_targets(n: int, folds: int, dealt: int) -> np.ndarray:
    """How many of a class's n photos each fold holds: n // folds, one more in the n % folds folds that follow the
    earlier classes' extras (dealt: their photos), so each fold holds each class's share, sizes one apart at most."""
    extra = (np.arange(folds) - dealt) % folds < n % folds
    return n // folds + extra.astype(int)


def balanced(home: np.ndarray, keys: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Home folds (1..folds) moved as little as possible to meet the targets: each fold over its target gives away its
    photos with the largest keys, and these fill the folds under theirs in key order, the lowest fold first."""
    fold, given = home.copy(), []
    for f, target in enumerate(targets, start=1):
        rows = np.flatnonzero(home == f)
        given.extend(rows[np.argsort(keys[rows], kind="stable")][target:])
    held = np.bincount(home, minlength=len(targets) + 1)[1:]
    gaps = np.repeat(np.arange(1, len(targets) + 1), np.maximum(targets - held, 0))
    fold[sorted(given, key=lambda row: keys[row])] = gaps
    return fold


def image_paths(manifest: pd.DataFrame, raw: Path | str) -> list[str]:
    """The image files of the manifest's rows: each `source` joined to image_root(raw), data.raw's folder or its
    table's. Every stage that opens images finds them this way; none tracks data.raw, since the manifest's md5 column
    already pins each image's content."""
    root = image_root(raw)
    return [str(root / source) for source in manifest.source]


def link_path(id_: str, source: str, split: str, label: str, out: Path) -> Path:
    """Where a photo appears in the symlink tree: train/<class>/ or test/, named by its id (untrusted.link_name:
    unique whatever the layout, so a relabelled photo never takes another's place) and its file's suffix."""
    name = link_name(id_, source)
    return out / split / name if split == "test" else out / split / label / name


def check_link_tree(out: Path) -> None:
    """Stop unless out is missing, empty, or a symlink tree (train/ and test/ holding folders and links only): writing
    a tree replaces its folder whole, so nothing else may be in it."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out}: not a folder; the symlink tree is written to a new folder or over an earlier tree")
    if not out.exists():
        return
    tree = ("train", "test")
    others = sorted(p.name for p in out.iterdir() if p.name not in tree or not p.is_dir() or p.is_symlink())
    if others:
        raise DataError(f"{out}: holds {others[0]!r}, not a symlink tree's; give a new folder or an earlier tree's")

    def unreadable(err: OSError) -> None:
        raise DataError(f"{out}: {err.filename!r} cannot be read ({err.strerror}); it would be deleted unchecked")

    for folder, _, files in os.walk(out, onerror=unreadable):
        stray = next((Path(folder) / name for name in files if not (Path(folder) / name).is_symlink()), None)
        if stray:
            raise DataError(
                f"{out}: holds {str(stray)!r}, which is not a link; the symlink tree replaces its folder whole, so"
                " give a new folder or an earlier tree's"
            )


def link_paths(manifest: pd.DataFrame, out: Path) -> list[Path]:
    """Every photo's link in the symlink tree under out (link_path), checked: splits train or test, plain class names,
    and no two photos on one link."""
    splits = sorted(set(manifest.split) - {"train", "test"})
    if splits:
        raise DataError(f"the manifest: split {splits[0]!r} is neither train nor test")
    for label in classes_of(manifest.label[manifest.split == "train"]):
        check_class_name(label, "the manifest")
    rows = zip(manifest.id, manifest.source, manifest.split, manifest.label, strict=True)
    links = [link_path(*row, out) for row in rows]
    twice = pd.Series(links, dtype=object).duplicated(keep=False).to_numpy()
    if twice.any():
        ids = ", ".join(repr(id_) for id_ in manifest.id[twice][:4])
        raise DataError(f"the photos {ids} would share the link {links[int(np.argmax(twice))]}; rename one")
    return links


def write_symlink_tree(manifest: pd.DataFrame, raw: Path | str, out: Path) -> None:
    """Link every image (found under raw, data.raw's folder) into the seed layout under out, with relative symlinks
    (nothing is copied)."""
    links = link_paths(manifest, out)  # checked before any folder is made
    for sub in [f"train/{label}" for label in classes_of(manifest.label[manifest.split == "train"])] + ["test"]:
        (out / sub).mkdir(parents=True, exist_ok=True)
    for link, path in zip(links, image_paths(manifest, raw), strict=True):
        try:
            link.symlink_to(os.path.relpath(Path(path).resolve(), link.parent.resolve()))
        except FileExistsError:  # two names that differ in case only, on a file system that ignores case
            raise DataError(f"{link}: two photos' ids name this link on this file system; rename one") from None


def file_md5(path: Path | str) -> str:
    """The MD5 of a file's bytes (as DVC hashes files), or "" if it cannot be read."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def label_index(labels: pd.Series, classes: list[str]) -> np.ndarray:
    """Class names to their index in classes; -1 where the label is unknown (test)."""
    index = {label: i for i, label in enumerate(classes)}
    return np.array([index.get(label, -1) for label in labels], dtype=np.int16)


def read_manifest(path: Path | str) -> pd.DataFrame:
    """The split manifest: ids and labels as strings, folds as integers (0 for test images)."""
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "fold" in manifest:
        manifest["fold"] = manifest.fold.astype(int)
    return manifest


def folds_of(manifest: pd.DataFrame, ids: list[str], manifest_path: Path | str) -> np.ndarray:
    """The manifest's fold of each labelled image id, in the given order; ids that are not its labelled images (a
    stale output) stop the run."""
    folds = manifest[manifest.split == "train"].set_index("id").fold
    if len(ids) != len(folds) or not set(ids) <= set(folds.index):
        raise ValueError(f"{manifest_path}: its labelled images differ from the features' or predictions'; dvc repro")
    return folds.loc[ids].to_numpy()


def read_answer_key(path: Path | str) -> pd.DataFrame:
    """An answer key: id,label (a class name, or its index: two classes, 1 = dog), ids and labels as strings."""
    key = read_table(path)
    if list(key.columns[:2]) != ["id", "label"]:
        raise DataError(f"{path}: an answer key needs the columns id,label")
    return key[["id", "label"]].reset_index(drop=True)


def checked_answer_key(path: Path, raw: Path, test_ids: list[str], classes: list[str]) -> pd.DataFrame:
    """The answer key (submit.labels) with class names for labels, in test id order, checked: a file DVC tracks
    through data.raw, so that editing it reruns the scoring (a file inside the data.raw folder, or for a table the
    table itself, its test rows' labels: DVC tracks a table alone), one row per test id, every label a class name or
    index (a label that is both, with classes named by digits, is the name)."""
    if is_table(raw):
        if path.resolve() != raw.resolve():
            raise DataError(
                f"submit.labels: {path}: with a table as data.raw ({raw}) DVC tracks the table alone, so the answer"
                " key is the table itself: give the photos to predict their labels there (split test) and set"
                " submit.labels to the table"
            )
        key = table_answer_key(raw)
    elif not path.resolve().is_relative_to(image_root(raw).resolve()):
        raise DataError(
            f"submit.labels: {path} lies outside data.raw ({raw}); DVC tracks data.raw, so keep the answer key in it"
        )
    else:
        key = read_answer_key(path)
    duplicated = sorted(set(key.id[key.id.duplicated()]))
    missing, extra = sorted(set(test_ids) - set(key.id)), sorted(set(key.id) - set(test_ids))
    if duplicated or missing or extra:
        raise DataError(
            f"{path}: the answer key needs one row per test image; ids twice {duplicated[:10]}, test ids missing"
            f" {missing[:10]}, ids not in test/ {extra[:10]}"
        )
    names = {str(i): name for i, name in enumerate(classes)} | {name: name for name in classes}  # a name wins
    unknown = sorted(set(key.label) - set(names))
    if unknown:
        raise DataError(f"{path}: labels {unknown[:10]} are neither class names nor indices ({', '.join(classes)})")
    return key.set_index("id").loc[test_ids].reset_index().assign(label=lambda k: k.label.map(names))


if __name__ == "__main__":  # rebuild the symlink tree from a manifest, its images under data.raw (params.yaml's, or
    # the third argument's): python -m dogscats.data.dataset data/split.csv out [raw]
    from dogscats.base.params import load_params

    manifest_path, tree, *raw = sys.argv[1:]
    try:
        check_link_tree(Path(tree))
        with atomic_dir(tree) as tmp:
            write_symlink_tree(read_manifest(manifest_path), raw[0] if raw else load_params()["data"]["raw"], tmp)
    except DataError as err:
        sys.exit(f"dogscats.data.dataset: {err}")

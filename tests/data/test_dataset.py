"""The raw Kaggle layout, the stratified folds and the symlink tree."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dogscats.data.dataset import (
    checked_answer_key,
    classes_of,
    image_paths,
    image_root,
    label_index,
    read_manifest,
    scan_raw,
    stratified_folds,
    write_symlink_tree,
)
from stages import prepare

from ..conftest import PREPARE_ARGS, REPO, make_kaggle_layout, write_image


def test_scan_reads_labels_and_numeric_test_ids(kaggle_raw):
    write_image(kaggle_raw / "test" / "007.jpg", (1, 2, 3))
    frame, skipped = scan_raw(kaggle_raw)
    train = frame[frame.split == "train"]
    assert sorted(train.label.unique()) == ["cat", "dog"] and len(train) == 20
    assert train.set_index("id").loc["dog.3", "label"] == "dog"
    assert "7" in set(frame[frame.split == "test"].id)
    assert skipped == []


def test_names_without_a_label_are_skipped_and_listed(kaggle_raw):
    puppy = write_image(kaggle_raw / "train" / "puppy.jpg", (1, 2, 3))
    frame, skipped = scan_raw(kaggle_raw)
    assert "train/puppy.jpg" not in set(frame.source)
    assert [f for f, _ in skipped] == ["train/puppy.jpg"]  # relative to data.raw, as the manifest's sources
    assert puppy == kaggle_raw / skipped[0][0]


def test_upper_case_names_are_read(kaggle_raw):
    write_image(kaggle_raw / "train" / "Cat.101.JPG", (1, 2, 3))
    write_image(kaggle_raw / "train" / "DOG.102.JPEG", (1, 2, 3))
    write_image(kaggle_raw / "test" / "77.JPG", (1, 2, 3))
    frame, skipped = scan_raw(kaggle_raw)
    ids = frame.set_index("id")
    assert ids.loc["cat.101", "label"] == "cat" and ids.loc["dog.102", "label"] == "dog"
    assert ids.loc["77", "split"] == "test" and skipped == []


def test_duplicate_test_ids_stop_with_the_file_names(kaggle_raw):
    write_image(kaggle_raw / "test" / "01.jpg", (1, 2, 3))  # the same id as 1.jpg
    with pytest.raises(ValueError, match=r"duplicate ids.*: test id 1: \S*test/01\.jpg and \S*test/1\.jpg$"):
        scan_raw(kaggle_raw)


def test_duplicate_training_ids_stop(kaggle_raw):
    write_image(kaggle_raw / "train" / "Cat.1.JPG", (1, 2, 3))  # cat.1.jpg, in other case
    with pytest.raises(ValueError, match=r"train id cat\.1: \S*train/Cat\.1\.JPG and \S*train/cat\.1\.jpg$"):
        scan_raw(kaggle_raw)


def test_a_test_folder_without_train_stops_with_the_fix(tmp_path):
    make_kaggle_layout(tmp_path)
    shutil.rmtree(tmp_path / "train")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: a test/ folder but no train/ folder")):
        scan_raw(tmp_path)


@pytest.mark.parametrize("remove", ["folder", "photos"])
def test_the_test_folder_is_optional(kaggle_raw, remove):
    if remove == "folder":
        shutil.rmtree(kaggle_raw / "test")
    else:
        for f in (kaggle_raw / "test").iterdir():
            f.unlink()
    frame, skipped = scan_raw(kaggle_raw)
    assert set(frame.split) == {"train"} and len(frame) == 20 and skipped == []


def test_empty_class_stops(kaggle_raw):
    for f in (kaggle_raw / "train").glob("dog.*"):
        f.unlink()
    with pytest.raises(ValueError, match="no dog images"):
        scan_raw(kaggle_raw)


def test_the_manifests_paths_are_relative_to_data_raw_so_a_copy_scans_the_same(kaggle_raw, tmp_path):
    copy = shutil.copytree(kaggle_raw, tmp_path / "elsewhere" / "photos")
    frame, _ = scan_raw(kaggle_raw)
    assert frame.equals(scan_raw(copy)[0])  # the same photos in another folder: the same rows
    assert frame.set_index("id").source[["cat.1", "1"]].tolist() == ["train/cat.1.jpg", "test/1.jpg"]
    paths = image_paths(frame, copy)
    assert paths[0] == str(copy / frame.source[0]) and all(os.path.isfile(p) for p in paths)


def test_folds_are_stratified_seeded_and_balanced():
    labels = pd.Series(["cat"] * 101 + ["dog"] * 50)
    md5s = pd.Series([f"{n:032x}" for n in range(len(labels))])  # one content each
    folds = stratified_folds(md5s, labels, 5, seed=1)
    assert sorted(set(folds)) == [1, 2, 3, 4, 5]
    assert np.bincount(folds)[1:].tolist() == [31, 30, 30, 30, 30]  # sizes differ by one at most
    for label, size in (("cat", 101), ("dog", 50)):
        per_fold = np.bincount(folds[labels == label], minlength=6)[1:]
        assert per_fold.sum() == size and per_fold.max() - per_fold.min() <= 1  # each class's share in every fold
    np.testing.assert_array_equal(folds, stratified_folds(md5s, labels, 5, seed=1))
    assert not np.array_equal(folds, stratified_folds(md5s, labels, 5, seed=2))


def test_a_photo_keeps_its_fold_through_relabels_and_new_photos():
    labels = pd.Series(["cat", "dog"] * 500)
    md5s = pd.Series([f"{n:032x}" for n in range(len(labels))])
    folds = stratified_folds(md5s, labels, 5, seed=0)
    flipped = labels.copy()
    flipped[:40] = labels[:40].map({"cat": "dog", "dog": "cat"})
    after = stratified_folds(md5s, flipped, 5, seed=0)
    assert (after != folds).sum() <= 40  # dealt out anew, most of 1,000 photos would move
    for label in ("cat", "dog"):
        per_fold = np.bincount(after[flipped == label], minlength=6)[1:]
        assert per_fold.max() - per_fold.min() <= 1
    np.testing.assert_array_equal(stratified_folds(md5s, labels, 5, seed=0), folds)  # undone: the same folds
    grown = stratified_folds(
        pd.concat([md5s, pd.Series(["new 1", "new 2"])]), pd.concat([labels, pd.Series(["cat"] * 2)]), 5, 0
    )
    assert (grown[:1000] != folds).sum() <= 4


def test_a_class_smaller_than_the_fold_count_lands_in_some_folds():
    labels = pd.Series(["cat"] * 10 + ["dog"] * 2)
    folds = stratified_folds(labels.index.astype(str).to_series(), labels, 5, seed=0)
    assert len(set(folds[labels == "dog"])) == 2 and sorted(set(folds)) == [1, 2, 3, 4, 5]


def test_label_index_is_dog_one_cat_zero_unknown_minus_one():
    assert label_index(pd.Series(["cat", "dog", ""]), ["cat", "dog"]).tolist() == [0, 1, -1]


def test_the_symlink_tree_can_be_rebuilt_from_the_manifest(kaggle_raw, tmp_path):
    frame, _ = scan_raw(kaggle_raw)
    frame.to_csv(tmp_path / "split.csv", index=False)
    tree = tmp_path / "prepared"
    command = [sys.executable, "-m", "dogscats.data.dataset", str(tmp_path / "split.csv"), str(tree), str(kaggle_raw)]
    subprocess.run(command, check=True)
    links = sorted(p for p in tree.rglob("*") if p.is_symlink())
    assert len(links) == len(frame) and all(os.readlink(p)[0] != "/" for p in links)
    assert (tree / "train" / "cat" / "cat.1.jpg").resolve() == (kaggle_raw / "train" / "cat.1.jpg").resolve()
    assert (tree / "test" / "1.jpg").read_bytes() == (kaggle_raw / "test" / "1.jpg").read_bytes()


def make_folder_layout(root, classes=("bird", "cat", "dog"), per_class=5, n_test=4):
    """train/<class>/<name>.jpg and test/<id>.jpg, the folder-per-class layout."""
    for label in classes:
        for n in range(per_class):
            write_image(root / "train" / label / f"img{n}.jpg", (40 * len(label), 60, 200))
    for n in range(n_test):
        write_image(root / "test" / f"t{n}.jpg", (1, 2, 3))
    return root


def test_folder_per_class_layout_takes_the_classes_from_the_folders(tmp_path):
    raw = make_folder_layout(tmp_path)
    write_image(raw / "train" / "stray.jpg", (1, 2, 3))
    (raw / "train" / "cat" / "._img0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: not read
    (raw / "test" / "._t0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    frame, skipped = scan_raw(raw)
    train = frame[frame.split == "train"]
    assert classes_of(train.label) == ["bird", "cat", "dog"] and len(train) == 15
    assert train.set_index("id").loc["bird/img3", "label"] == "bird"
    assert sorted(frame[frame.split == "test"].id) == ["t0", "t1", "t2", "t3"]
    assert skipped == [("train/stray.jpg", "not in a class folder")]
    assert train.set_index("id").loc["bird/img3", "source"] == "train/bird/img3.jpg"
    folds = stratified_folds(train.id, train.label, 5, seed=0)  # any distinct strings stand for the md5s
    assert [len(set(folds[train.label.to_numpy() == c])) for c in ("bird", "cat", "dog")] == [5, 5, 5]
    assert label_index(pd.Series(["dog", "bird", ""]), classes_of(train.label)).tolist() == [2, 0, -1]


def test_an_empty_class_folder_or_a_single_class_stops(tmp_path):
    raw = make_folder_layout(tmp_path)
    (raw / "train" / "fish").mkdir()
    with pytest.raises(ValueError, match="no fish images"):
        scan_raw(raw)
    (raw / "train" / "fish").rmdir()
    (raw / "train" / "bird").rename(raw / "train" / "label")
    with pytest.raises(ValueError, match=r"class \(folder\) 'label' would clash with the submission's columns"):
        scan_raw(raw)
    shutil.rmtree(raw / "train")
    make_folder_layout(raw, classes=("cat",))
    with pytest.raises(ValueError, match=r"1 class\(es\) \(cat\); classification needs two or more"):
        scan_raw(raw)


def test_an_answer_key_label_that_is_a_class_name_and_an_index_is_the_name(tmp_path):
    (tmp_path / "key.csv").write_text("id,label\na,1\nb,0\nc,2\n")
    key = checked_answer_key(tmp_path / "key.csv", tmp_path, ["c", "b", "a"], ["1", "2"])
    assert key.values.tolist() == [["c", "2"], ["b", "1"], ["a", "1"]]  # in test id order; "0" is the index of "1"


def test_folds_of_follows_the_given_order_and_stops_on_a_stale_output():
    from dogscats.data.dataset import folds_of

    manifest = pd.DataFrame(
        {"id": ["a", "b", "c", "t"], "split": ["train", "train", "train", "test"], "fold": [1, 2, 3, 0]}
    )
    assert folds_of(manifest, ["c", "a", "b"], "split.csv").tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="split.csv: its labelled images differ"):
        folds_of(manifest, ["a", "b"], "split.csv")  # one labelled image missing: features of an older manifest
    with pytest.raises(ValueError, match="split.csv: its labelled images differ"):
        folds_of(manifest, ["a", "b", "x"], "split.csv")


def _table(root: Path, text: str) -> Path:
    """A table at root/labels.csv, and a photo for each of a.jpg, b.jpg, c.jpg, d.jpg, sub/e.jpg."""
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "sub/e.jpg"):
        write_image(root / name, (1, 2, 3))
    (root / "labels.csv").write_text(text)
    return root / "labels.csv"


def test_a_table_gives_ids_labels_splits_and_sources_relative_to_its_folder(tmp_path):
    table = _table(tmp_path, "path,label\na.jpg,cat\nb.jpg,dog\n sub/e.jpg ,cat\nd.jpg,\n")
    frame, skipped = scan_raw(table)
    assert frame.values.tolist() == [
        ["a.jpg", "cat", "train", "a.jpg"],
        ["b.jpg", "dog", "train", "b.jpg"],
        ["sub/e.jpg", "cat", "train", "sub/e.jpg"],
        ["d.jpg", "", "test", "d.jpg"],
    ]
    assert skipped == [] and image_root(table) == tmp_path and image_root(tmp_path) == tmp_path
    assert image_paths(frame, table)[2] == str(tmp_path / "sub" / "e.jpg")
    table.write_text("id,path,label,split\n1,a.jpg,cat,train\n2,b.jpg,dog,\n3,c.jpg,dog,test\n4,d.jpg,,test\n")
    frame, _ = scan_raw(table)
    assert frame.id.tolist() == ["1", "2", "3", "4"] and frame.label.tolist() == ["cat", "dog", "", ""]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.jpg,cat\n", "missing column(s) path"),
        ("path,label\na.jpg,cat\nb.jpg,dog\nx.jpg,dog\n", "line 4: '{root}/x.jpg' does not exist"),
        ("id,path,label\n1,a.jpg,cat\n2,b.jpg,dog\n1,c.jpg,dog\n", "line 4: id '1' is on line 2 too"),
        ("id,path,label\n1,a.jpg,cat\n2,b.jpg,dog\n3,a.jpg,dog\n", "line 4: path 'a.jpg' is on line 2 too"),
        ("path,label,split\na.jpg,cat,train\nb.jpg,dog,valid\n", "line 3: split 'valid' is neither train nor test"),
        ("path,label,split\na.jpg,cat,train\nb.jpg,,train\n", "line 3: split train with an empty label"),
        ("path,label\na.jpg,cat\nb.jpg,cat\nc.jpg,\n", "1 class(es) (cat); classification needs two or more"),
        ("path,label\n/a.jpg,cat\n", "line 2: path '/a.jpg' is absolute; it must be relative to the table's folder"),
        (
            "path,label\n\na.jpg,cat\n\nb.jpg,dog\n\nx.jpg,dog\n",
            "line 7: '{root}/x.jpg' does not exist",
        ),  # blanks count
    ],
)
def test_a_bad_table_stops_naming_the_file_and_line(tmp_path, text, message):
    table = _table(tmp_path, text)
    with pytest.raises(
        (ValueError, FileNotFoundError), match=re.escape(f"{table}") + ".*" + re.escape(message.format(root=tmp_path))
    ):
        scan_raw(table)


def test_class_folders_at_the_top_are_labelled_photos_with_none_to_predict(tmp_path):
    for label in ("bird", "cat", "dog"):
        for n in range(2):
            write_image(tmp_path / label / f"{n}.jpg", (1, 2, 3))
    (tmp_path / "notes.txt").write_text("not a photo")
    frame, skipped = scan_raw(tmp_path)
    assert frame.id.tolist() == ["bird/0", "bird/1", "cat/0", "cat/1", "dog/0", "dog/1"]
    assert set(frame.split) == {"train"} and frame.source[0] == "bird/0.jpg"
    assert skipped == [("notes.txt", "not in a class folder")]


def test_a_tables_labels_must_be_plain_class_names_and_nothing_is_linked_outside(tmp_path, in_project):
    """Finding 1: labels such as /tmp/x/victim or ../../escaped were classes, and their links landed there."""
    raw = tmp_path / "raw"
    victim = tmp_path / "victim"
    for label, line in ((str(victim), 3), ("../../../../escaped", 3), ("a\\b", 3), (".", 3), ("x\ny", 3)):
        quoted = '"' + label.replace('"', '""') + '"'  # as CSV quotes a field
        table = _table(raw, f"path,label\na.jpg,cat\nb.jpg,{quoted}\nc.jpg,dog\nd.jpg,\n")
        with pytest.raises(ValueError, match=re.escape(f"{table}, line {line}: class {label!r}")):
            scan_raw(table)
    in_project(data={"raw": str(table)})
    command = [sys.executable, "-m", "stages.prepare", *PREPARE_ARGS]
    status = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert status.returncode == 1 and status.stderr.count("\n") == 1 and "a plain folder name" in status.stderr
    assert not victim.exists() and not list(tmp_path.parent.glob("escaped")) and not Path("data/prepared").exists()


def test_a_tables_paths_must_stay_in_its_folder_symlinks_resolved(tmp_path):
    """Finding 2: ../private/secret.jpg was trained on and shown on the audit page."""
    raw = tmp_path / "raw"
    write_image(tmp_path / "private" / "secret.jpg", (1, 2, 3))
    table = _table(raw, "path,label\na.jpg,cat\n../private/secret.jpg,dog\nb.jpg,dog\n")
    with pytest.raises(ValueError, match=re.escape(f"{table}, line 3: '{raw}/../private/secret.jpg' lies outside")):
        scan_raw(table)
    (raw / "inside.jpg").symlink_to(tmp_path / "private" / "secret.jpg")  # a name inside, a photo outside
    table.write_text("path,label\na.jpg,cat\nb.jpg,dog\ninside.jpg,dog\n")
    with pytest.raises(ValueError, match=re.escape(f"{table}, line 4: '{raw}/inside.jpg' lies outside")):
        scan_raw(table)
    (raw / "sub" / "link.jpg").symlink_to(raw / "c.jpg")  # a link that stays inside is a photo like any other
    table.write_text("path,label\na.jpg,cat\nb.jpg,dog\nsub/link.jpg,dog\n")
    assert scan_raw(table)[0].source.tolist() == ["a.jpg", "b.jpg", "sub/link.jpg"]


@pytest.mark.parametrize("layout", ["train", "top"])
def test_links_are_named_by_id_so_a_relabel_never_takes_another_photos_place(tmp_path, in_project, layout):
    """Finding 3: train/cat/1.jpg and dog/1 relabelled cat both made train/cat/1.jpg (FileExistsError)."""
    raw = tmp_path / "raw"
    top = raw / "train" if layout == "train" else raw
    for label, colour in (("cat", (200, 60, 40)), ("dog", (40, 60, 200))):
        for n in range(1, 6):
            write_image(top / label / f"{n}.jpg", colour)
    in_project(data={"raw": str(raw)})
    Path("data").mkdir()
    Path("data/overrides.csv").write_text("id,action\ndog/1,relabel:cat\ncat/2,relabel:dog\n")
    prepare.main(*PREPARE_ARGS)
    manifest = read_manifest("data/split.csv").set_index("id")
    assert manifest.loc["dog/1", "file"] == "data/prepared/train/cat/dog%2F1.jpg"
    for id_, row in manifest.iterrows():  # every photo its own link, to its own file
        assert Path(row.file).resolve() == (top / f"{id_}.jpg").resolve()
    assert len(list(Path("data/prepared").rglob("*.jpg"))) == 10


def test_the_symlink_tree_command_refuses_a_folder_that_holds_files(kaggle_raw, tmp_path):
    """Finding 8: python -m dogscats.data.dataset split.csv OUT deleted what was in OUT."""
    frame, _ = scan_raw(kaggle_raw)
    frame.to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "mine"
    command = [sys.executable, "-m", "dogscats.data.dataset", str(tmp_path / "split.csv"), str(out), str(kaggle_raw)]
    for kept, refusal in (("sub/notes.txt", "holds 'sub', not a symlink tree's"), ("train/notes.txt", "not a link")):
        (out / kept).parent.mkdir(parents=True)
        (out / kept).write_text("keep me")
        status = subprocess.run(command, capture_output=True, text=True)
        assert status.returncode == 1 and status.stderr.count("\n") == 1 and refusal in status.stderr
        assert (out / kept).read_text() == "keep me"
        shutil.rmtree(out)
    subprocess.run(command, check=True)  # a new folder, then over its own tree: fine
    subprocess.run(command, check=True)
    assert (out / "train" / "cat" / "cat.1.jpg").is_symlink()


def test_a_table_carries_its_own_answer_key_and_no_other_file_can_be_it(tmp_path):
    """Finding 4: with a table, DVC tracks the table alone, so a separate key's edits went unseen."""
    table = _table(tmp_path, "path,label,split\na.jpg,cat,train\nb.jpg,dog,train\nc.jpg,dog,test\nd.jpg,cat,test\n")
    frame, _ = scan_raw(table)
    assert frame.label.tolist() == ["cat", "dog", "", ""]  # the test rows' labels are not classes
    key = checked_answer_key(table, table, ["d.jpg", "c.jpg"], ["cat", "dog"])
    assert key.values.tolist() == [["d.jpg", "cat"], ["c.jpg", "dog"]]
    (tmp_path / "key.csv").write_text("id,label\nc.jpg,dog\nd.jpg,cat\n")
    with pytest.raises(ValueError, match="with a table as data.raw .* the answer key is the table itself"):
        checked_answer_key(tmp_path / "key.csv", table, ["c.jpg", "d.jpg"], ["cat", "dog"])


def test_a_manifest_split_can_only_be_train_or_test_so_no_link_leaves_the_tree(kaggle_raw, tmp_path):
    frame, _ = scan_raw(kaggle_raw)
    frame.loc[0, "split"] = str(tmp_path / "elsewhere")  # a hand-edited manifest
    with pytest.raises(ValueError, match="split '.*elsewhere' is neither train nor test"):
        write_symlink_tree(frame, kaggle_raw, tmp_path / "tree")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "tree").exists()


def test_a_tables_test_labels_are_read_not_made_classes_and_a_key_names_the_rows_it_lacks(tmp_path):
    table = _table(tmp_path, "path,label,split\na.jpg,cat,\nb.jpg,dog,\nc.jpg,n/a,test\nd.jpg,,test\n")
    assert scan_raw(table)[0].label.tolist() == ["cat", "dog", "", ""]  # "n/a" names no folder: it is only read
    with pytest.raises(ValueError, match="line\\(s\\) 5: a photo to predict without a label"):
        checked_answer_key(table, table, ["c.jpg", "d.jpg"], ["cat", "dog"])
    (tmp_path / "loop1.jpg").symlink_to(tmp_path / "loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to(tmp_path / "loop1.jpg")
    table.write_text("path,label\na.jpg,cat\nb.jpg,dog\nloop1.jpg,dog\n")
    with pytest.raises(ValueError, match="line 4: .*loop1.jpg' cannot be resolved"):
        scan_raw(table)

"""What user data names (dogscats.data.untrusted), and a fuzz test of prepare: hypothesis draws tables, class folder
trees and overrides with hostile names and labels (separators, .., absolute paths, unicode, control characters,
empty, duplicates, very long); prepare must refuse each in one line or write only inside its project."""

import contextlib
import functools
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dogscats.data.untrusted import DataError, class_name_problem, link_name, read_table
from stages import prepare

from ..conftest import PREPARE_ARGS, default_params, write_image

# 500 drawn inputs in all (200 tables, 150 folder trees, 150 overrides), the same ones every run (derandomize).
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
PHOTO = b""  # a tiny JPEG's bytes, made once (write_image) and copied to every drawn name


def photo_bytes() -> bytes:
    """The bytes of a small JPEG, made once per process."""
    global PHOTO
    if not PHOTO:
        with tempfile.TemporaryDirectory() as folder:
            PHOTO = write_image(Path(folder) / "p.jpg", (120, 60, 40)).read_bytes()
    return PHOTO


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cat", None),
        ("chat noir", None),
        ("été", None),
        ("", "is empty"),
        ("a/b", "contains a path separator"),
        ("a\\b", "contains a path separator"),
        ("/tmp/x", "contains a path separator"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("a\nb", "contains a control character"),
        ("a\x00", "contains a control character"),
        ("\udcff", "is not valid UTF-8"),  # a file name's undecodable byte
        ("é" * 128, "is longer than 255 bytes"),
    ],
)
def test_a_class_is_a_plain_folder_name(name, problem):
    found = class_name_problem(name)
    assert (found is None) if problem is None else problem in found


SOURCES = st.sampled_from(["photo.JPG", "photo.png", "photo", "photo.tar.gz", "x.", "sub/a.webp", "a.very-long"])


@given(st.lists(st.tuples(st.text(max_size=300), SOURCES), min_size=2, max_size=6, unique_by=lambda pair: pair[0]))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_different_ids_get_different_plain_link_names_whatever_their_files(pairs):
    names = [link_name(id_, source) for id_, source in pairs]
    assert len(set(names)) == len(names)
    for name, (_, source) in zip(names, pairs, strict=True):
        assert "/" not in name and "\\" not in name and not name.startswith(".") and name not in (".", "..")
        assert len(name.encode("utf-8", "surrogateescape")) <= 255 and "\x00" not in name
        suffix = Path(source).suffix.lower()
        assert name.endswith(suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".")  # a plain suffix, else none


def test_a_link_keeps_its_photos_suffix_and_the_id_before_it():
    assert link_name("cat.1", "train/cat.1.jpg") == "cat.1.jpg" and link_name("dog/1", "x.JPEG") == "dog%2F1.jpeg"
    assert link_name("a.png", "p") == "a.png." != link_name("a", "q.png")  # the last dot splits id and suffix


def test_a_tables_lines_count_blank_lines_and_quoted_line_breaks_and_a_bad_file_is_named(tmp_path):
    (tmp_path / "t.csv").write_text('id,action,note\n\na,exclude\n\n"x","y","two\nlines"\n,\nb,relabel:cat\n')
    table = read_table(tmp_path / "t.csv")
    assert table.index.tolist() == [3, 5, 8] and table.id.tolist() == ["a", "x", "b"] and table.note[3] == ""
    (tmp_path / "empty.csv").write_text("")
    assert read_table(tmp_path / "empty.csv").empty
    (tmp_path / "wide.csv").write_text("id,action\na,exclude\nb,exclude,extra\n")
    with pytest.raises(DataError, match="wide.csv, line 3: 3 fields, but the header names 2"):
        read_table(tmp_path / "wide.csv")
    (tmp_path / "twice.csv").write_text("id,id\na,b\n")
    with pytest.raises(DataError, match="twice.csv, line 1: the header names 'id' twice"):
        read_table(tmp_path / "twice.csv")
    (tmp_path / "latin.csv").write_bytes("path,label\nchat.jpg,\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"{tmp_path / 'latin.csv'}: not a UTF-8 CSV table"):
        read_table(tmp_path / "latin.csv")


# The hostile names drawn: path tricks, separators, absolute paths (OUTSIDE: a folder beside the project, checked
# for writes), reserved and hidden names, unicode, control characters, very long names; and any text at all.
OUTSIDE = "{outside}"
HOSTILE = [
    "..", ".", "../..", "../../../../escaped", "../photo.jpg", f"{OUTSIDE}/victim", f"{OUTSIDE}/photo.jpg",
    "a/b", "a\\b", "", " ", "x\x00y", "a\nb", "\x1b[31mred", "\u202eevil", "été", "猫", "cat", "dog", "id",
    "label", ".hidden", "%2F", "x" * 300, "é" * 200, "photo.jpg", "sub/photo.jpg", "sub/../photo.jpg",
]  # fmt: skip
NAMES = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=20), st.text(alphabet="./\\%a \n", max_size=8))
# A file or folder name the file system takes: no / or NUL, not . or .., at most 255 bytes; mostly names a class may
# have (unicode, spaces, dots, %, long), else any such text (control characters, escapes, ...).
ENTRY = (
    st.integers(0, 3)
    .flatmap(
        lambda k: (
            st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1)
            if k == 3
            else st.sampled_from(
                ["..a", "a..", " ", "é", "猫", "chat noir", "%2F", "x" * 250, "cat", "dog", "label", "a\nb"]
            )
        )
    )
    .filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)
)


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under root but skip's (its own), with what it is: a link's target, a file's size."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip:
            dirs.clear()
            continue
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path)] = (os.readlink(path),) if path.is_symlink() else (path.is_dir(), path.stat().st_size)
    return found


def run_prepare(sandbox: Path, raw: Path, overrides: str | None = None) -> None:
    """prepare in a project deep inside the sandbox (so a name climbing out of it still lands in the sandbox), on
    raw; it refuses in one line (DataError) or succeeds; either way nothing outside the project changes, and every
    link it makes lies in data/prepared and leads into raw's folder."""
    project = sandbox / "a" / "b" / "c" / "d" / "e" / "project"
    (project / "data").mkdir(parents=True)
    if overrides is not None:
        (project / "data" / "overrides.csv").write_text(overrides)
    (project / "params.yaml").write_text(params_text().replace(RAW, json.dumps(str(raw))))
    before = snapshot(sandbox, project)
    with contextlib.chdir(project), contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
        try:
            prepare.main(*PREPARE_ARGS)
        except DataError as err:
            assert str(err) and "\n" not in str(err) and "\r" not in str(err)
    assert snapshot(sandbox, project) == before
    root = raw.parent if raw.suffix == ".csv" else raw
    for link in (project / "data" / "prepared").rglob("*"):
        assert link.resolve().is_relative_to(project / "data" / "prepared") or link.is_symlink()
        if link.is_symlink():
            assert link.parent.resolve().is_relative_to((project / "data" / "prepared").resolve())
            assert link.resolve().is_relative_to(root.resolve()) and link.resolve().is_file()


def as_jpg(name: str) -> str:
    """A drawn entry as a photo's file name: itself if it ends in .jpg, else cut to fit and given .jpg."""
    return name if name.lower().endswith(".jpg") else name.encode()[:240].decode(errors="ignore") + ".jpg"


RAW = "RAW_PLACEHOLDER"


@functools.cache
def params_text() -> str:
    """The default params with two folds and data.raw a placeholder (a JSON string is a YAML string), made once."""
    params = default_params()
    params["data"]["raw"], params["prepare"]["folds"] = RAW, 2
    return yaml.safe_dump(params)


def hostile(text: str, outside: Path) -> str:
    """A drawn name with the outside folder's path put in."""
    return text.replace(OUTSIDE, str(outside))


def csv_field(text: str) -> str:
    """A field as CSV quotes it."""
    return '"' + text.replace('"', '""') + '"'


FRESH = "{fresh}"  # a benign name of its own for each row


def mostly(benign: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Most draws benign, so that prepare also succeeds on many of the tables and overrides it is given (Hypothesis
    draws one_of's branches unevenly: an integer picks the kind)."""
    return st.integers(0, 7).flatmap(lambda k: hostile if k == 7 else benign)


PATHS = mostly(
    st.just(FRESH), st.one_of(st.sampled_from(["a.jpg", "photo.jpg", "sub/photo.jpg", "sub/../e.jpg"]), NAMES)
)
LABELS = mostly(st.sampled_from(["cat", "dog", "", "bird", "chat noir", "猫", "%2F"]), NAMES)
SPLITS = mostly(st.sampled_from(["", "train", "test"]), st.sampled_from(["valid", "TEST", " "]))


@given(
    rows=st.lists(st.tuples(PATHS, LABELS, SPLITS, mostly(st.just(FRESH), NAMES)), max_size=3),
    with_split=st.booleans(),
    with_id=st.booleans(),
)
@settings(FUZZ, max_examples=200)
def test_prepare_refuses_a_hostile_table_in_one_line_or_writes_only_inside_its_project(rows, with_split, with_id):
    with tempfile.TemporaryDirectory() as folder:
        sandbox = Path(folder)
        outside = sandbox / "outside"
        (outside / "victim").mkdir(parents=True)
        (outside / "photo.jpg").write_bytes(photo_bytes())  # a photo the table must not reach
        raw = sandbox / "raw"
        for name in [
            "a.jpg",
            "b.jpg",
            "c.jpg",
            "d.jpg",
            "e.jpg",
            "photo.jpg",
            "sub/photo.jpg",
            "p0.jpg",
            "p1.jpg",
            "p2.jpg",
        ]:
            (raw / name).parent.mkdir(parents=True, exist_ok=True)
            (raw / name).write_bytes(photo_bytes())
        safe = [
            ("a.jpg", "cat", "", "a"),
            ("b.jpg", "dog", "", "b"),
            ("c.jpg", "cat", "", "c"),
            ("d.jpg", "dog", "", "d"),
        ]
        lines = ["path,label" + (",split" if with_split else "") + (",id" if with_id else "")]
        for i, (path, label, split, id_) in enumerate([*safe[:2], *rows, *safe[2:]]):
            fields = [hostile(path.replace(FRESH, f"p{i - 2}.jpg"), outside), hostile(label, outside)]
            fields += [split] if with_split else []
            fields += [hostile(id_.replace(FRESH, f"r{i}"), outside)] if with_id else []
            lines.append(",".join(map(csv_field, fields)))
        (raw / "table.csv").write_text("\n".join(lines) + "\n")
        run_prepare(sandbox, raw / "table.csv")


@given(
    tree=st.lists(st.tuples(ENTRY, st.lists(ENTRY, min_size=1, max_size=3)), min_size=1, max_size=4),
    under_train=st.booleans(),
    tests=st.lists(ENTRY, max_size=3),
)
@settings(FUZZ, max_examples=150)
def test_prepare_refuses_hostile_class_folders_in_one_line_or_writes_only_inside_its_project(tree, under_train, tests):
    with tempfile.TemporaryDirectory() as folder:
        sandbox = Path(folder)
        raw = sandbox / "raw"
        top = raw / "train" if under_train else raw
        for label, files in [("cat", ["1.jpg", "2.jpg"]), ("dog", ["1.jpg", "2.jpg"]), *tree]:
            for name in files:
                path = top / label / as_jpg(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(photo_bytes())
        for name in tests if under_train else []:
            (raw / "test").mkdir(exist_ok=True)
            (raw / "test" / as_jpg(name)).write_bytes(photo_bytes())
        run_prepare(sandbox, raw)


IDS = mostly(st.just(FRESH), st.one_of(st.sampled_from(["cat/1", "t1", "cat/9"]), NAMES))
ACTIONS = mostly(
    st.sampled_from(["exclude", "relabel:cat", "relabel:dog"]), st.one_of(NAMES.map("relabel:{}".format), NAMES)
)


@given(rows=st.lists(st.tuples(IDS, ACTIONS), max_size=3))
@settings(FUZZ, max_examples=150)
def test_prepare_refuses_hostile_overrides_in_one_line_or_writes_only_inside_its_project(rows):
    with tempfile.TemporaryDirectory() as folder:
        sandbox = Path(folder)
        raw = sandbox / "raw"
        for label in ("cat", "dog"):
            for n in range(1, 8):
                (raw / "train" / label).mkdir(parents=True, exist_ok=True)
                (raw / "train" / label / f"{n}.jpg").write_bytes(photo_bytes())
        (raw / "test").mkdir()
        (raw / "test" / "t1.jpg").write_bytes(photo_bytes())
        overrides = ["id,action", "cat/1,relabel:dog", "dog/1,relabel:cat"]
        for i, (id_, action) in enumerate(rows):
            fresh = ("cat/", "dog/")[i % 2] + str(3 + i // 2)
            overrides.append(f"{csv_field(hostile(id_.replace(FRESH, fresh), sandbox))},{csv_field(action)}")
        run_prepare(sandbox, raw, "\n".join(overrides) + "\n")

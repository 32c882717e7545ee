"""What user data names, checked at the edge before anything is written: class names (they become folders of
data/prepared), ids (they name the links in it), table paths (they must stay in the table's folder), and CSV tables
read with each row's true line in the file. A refusal is a DataError: one line naming the file, the line and the rule;
user strings appear in it as Python literals (repr), so that no name can break the line or the terminal."""

import csv
import hashlib
import re
from pathlib import Path

import pandas as pd

NAME_BYTES = 255  # a class name becomes a folder name: the limit of most file systems (NAME_MAX)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters
LINK_ESCAPED = re.compile(r"[%/\\\x00-\x1f\x7f]|^\.")  # percent-encoded in a link's name (% too: injective)
LINK_SUFFIX = re.compile(r"\.([A-Za-z0-9]{1,8})")  # a photo's suffix kept on its link's name (image viewers use it)
LINK_BYTES = 200  # a longer encoded id is cut, and ends in its hash


class DataError(ValueError):
    """User data that breaks a rule: the message is one line naming the file (and line) and the rule."""


class MissingDataError(DataError, FileNotFoundError):
    """User data that names a file or folder that does not exist."""


def text_problem(text: str) -> str | None:
    """Why a name from user data cannot be written to the pipeline's UTF-8 tables and terminals: control
    characters, or bytes that are not UTF-8 (a file name's); None if it can."""
    if CONTROL.search(text):
        return "contains a control character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def class_name_problem(name: str) -> str | None:
    """Why a class name is not a plain name (one folder name: not empty, no separator, not . or .., no leading dot,
    no control characters, at most NAME_BYTES bytes), or None."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name:
        return "contains a path separator (/ or \\)"
    if name.startswith("."):
        return "starts with a dot (., .. and hidden folders are not class names)"
    problem = text_problem(name)
    if problem:
        return problem
    if len(name.encode("utf-8")) > NAME_BYTES:
        return f"is longer than {NAME_BYTES} bytes"
    return None


def check_class_name(name: str, where: str) -> None:
    """Stop unless the class name is a plain name; where: the file (and line) that gives it."""
    problem = class_name_problem(name)
    if problem:
        raise DataError(f"{where}: class {name!r} {problem}; a class must be a plain folder name")


def check_id(id_: str, where: str) -> None:
    """Stop on an empty id, or one that cannot be written as text; where: the file (and line) that gives it."""
    problem = "is empty" if not id_ else text_problem(id_)
    if problem:
        raise DataError(f"{where}: id {id_!r} {problem}")


def check_inside(path: Path, root: Path, where: str) -> None:
    """Stop unless path, symlinks resolved, lies inside root (resolved too); where names the file and line."""
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13), a name too long
        raise DataError(f"{where}: {str(path)!r} cannot be resolved ({err})") from None
    if not inside:
        raise DataError(f"{where}: {str(path)!r} lies outside {str(root)!r}; a table's photos must lie in its folder")


def is_file(path: Path) -> bool:
    """Whether path is a file; False, not an error, for a name the system refuses (too long, say)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def link_name(id_: str, source: str) -> str:
    """The file name of a photo's link in data/prepared, one per (id, suffix) whatever the layout: the id with %, /
    and \\, control characters and a leading dot percent-encoded (the empty id a lone %), a dot, then the photo's
    suffix lowercased (empty when it has no plain one): the last dot splits the two, so two ids never share a name. An
    encoded id over LINK_BYTES bytes is cut and ends in ~ and its hash."""
    name = LINK_ESCAPED.sub(lambda m: "".join(f"%{byte:02X}" for byte in m[0].encode()), id_) or "%"
    if len(name.encode("utf-8", "surrogateescape")) > LINK_BYTES:
        digest = hashlib.sha256(id_.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = name.encode("utf-8", "surrogateescape")[: LINK_BYTES - 17].decode("utf-8", "ignore") + "~" + digest
    suffix = LINK_SUFFIX.fullmatch(Path(source).suffix)
    return f"{name}.{suffix[1].lower() if suffix else ''}"


def read_table(path: Path | str) -> pd.DataFrame:
    """A CSV file's rows as stripped strings under its header's names, indexed by the line each starts on (the header
    is line 1, blank lines counted, a quoted field may span lines); rows of empty fields skipped, short rows padded;
    DataError naming the file and line when it is not UTF-8 CSV or a row has more fields than the header. The csv
    module, not pandas: pandas numbers records, not lines."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, strict=True)
            header = [name.strip() for name in next(reader, [])]
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise DataError(f"{path}, line 1: the header names {', '.join(map(repr, twice))} twice")
            rows, lines, start = [], [], reader.line_num + 1
            for row in reader:
                if len(row) > len(header):
                    raise DataError(f"{path}, line {start}: {len(row)} fields, but the header names {len(header)}")
                if any(field.strip() for field in row):
                    rows.append([field.strip() for field in row] + [""] * (len(header) - len(row)))
                    lines.append(start)
                start = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a UTF-8 CSV table ({' '.join(str(err).split())})") from None
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, dtype=int), dtype=str)

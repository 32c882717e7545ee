"""What user data names, checked at the edge before anything is written: class names (they become folders of
data/prepared), ids (they name the links in it), table paths (they must stay in the table's folder), and CSV tables
read with each row's true line in the file. A refusal is a DataError: one line naming the file, the line and the rule;
user strings appear in it as Python literals (repr), so that no name can break the line or the terminal."""

import hashlib
import re
from pathlib import Path

import pandas as pd

NAME_BYTES = 255  # a class name becomes a folder name: the limit of most file systems (NAME_MAX)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters
LINK_ESCAPED = re.compile(r"[%/\\\x00-\x1f\x7f]|^\.")  # percent-encoded in a link's name (% too: injective)
LINK_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")  # a photo's suffix kept on its link's name (image viewers use it)
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
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{where}: {str(path)!r} lies outside {str(root)!r}; a table's photos must lie in its folder")


def is_file(path: Path) -> bool:
    """Whether path is a file; False, not an error, for a name the system refuses (too long, say)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def link_name(id_: str, source: str) -> str:
    """The file name of a photo's link in data/prepared, unique per id whatever the layout: the id with %, / and \\,
    control characters and a leading dot percent-encoded (so two ids never share a name; the empty id is a lone %), then
    the photo's suffix; an encoded id over LINK_BYTES bytes is cut and ends in ~ and its hash."""
    name = LINK_ESCAPED.sub(lambda m: "".join(f"%{byte:02X}" for byte in m[0].encode()), id_) or "%"  # "": a lone %
    if len(name.encode("utf-8", "surrogateescape")) > LINK_BYTES:
        digest = hashlib.sha256(id_.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = name.encode("utf-8", "surrogateescape")[: LINK_BYTES - 17].decode("utf-8", "ignore") + "~" + digest
    suffix = Path(source).suffix
    return name + (suffix.lower() if LINK_SUFFIX.fullmatch(suffix) else "")


def read_table(path: Path | str) -> pd.DataFrame:
    """A CSV file's rows as stripped strings, indexed by their line in the file (the header is line 1); blank lines
    are skipped but counted; DataError naming the file when it is not a UTF-8 CSV table."""
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: not a UTF-8 CSV table ({' '.join(str(err).split())})") from None
    rows = rows.fillna("").apply(lambda column: column.str.strip())
    rows.index = rows.index + 2
    return rows[(rows != "").any(axis=1)] if len(rows.columns) else rows

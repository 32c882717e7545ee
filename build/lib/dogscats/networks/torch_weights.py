"""Read PyTorch state dicts saved in the legacy (non-zip) pickle format, without torch, trusting nothing in the file.

Hand-written because torch itself is a 700 MB dependency for what is a small file format: five pickles (a magic
number, a protocol version, system info, the state dict whose tensors refer to storages by key, the list of storage
keys), then each storage as an int64 element count and its raw bytes. Every pickle goes through an unpickler that
resolves only the globals a state dict needs (none at all outside the state dict), every value is type-checked, every
read is length-checked, and every tensor must cover its whole storage densely (any dimension order), so a crafted or
corrupted file raises ValueError instead of running code or reading memory outside the file.
"""

import io
import math
import pickle
import pickletools
import reprlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
SYS_INFO_KEYS = {"protocol_version", "little_endian", "type_sizes"}
COUNT_BYTES = 8  # each storage starts with its element count, an int64
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


MAX_DIMS = 64  # a tensor's dimensions
INT64 = range(-(2**63), 2**63)
MAX_DEPTH = 32  # how deeply a pickle may nest containers (a state dict needs about 5)
# The opcodes that pickles of plain values, globals and persistent ids use (protocols 2 to 5); others are refused.
ATOMS = {"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "GLOBAL"}
ATOMS |= {"BINUNICODE", "SHORT_BINUNICODE", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES"}


class StorageType(NamedTuple):  # tuples: a pickle's BUILD opcode cannot change them once they are checked
    """Stands in for torch.FloatStorage and friends."""

    name: str


class StorageRef(NamedTuple):
    """A persistent id of the state dict pickle: which storage, its element type and element count."""

    key: str
    dtype: np.dtype
    numel: int


class TensorRef(NamedTuple):
    """A tensor as the pickle describes it: a view (offset, shape, strides) of a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


class _RebuildTensor:
    """torch._utils._rebuild_tensor_v2, type-checked: its other arguments (requires_grad, hooks) are ignored. An
    object without attributes, so no pickle can change it."""

    __slots__ = ()

    def __call__(self, storage: Any, offset: Any, shape: Any, strides: Any, *_: Any) -> TensorRef:
        if not isinstance(storage, StorageRef):
            raise ValueError(f"a tensor refers to {_short(storage)}, not to a storage")
        view = [offset, *shape, *strides] if isinstance(shape, tuple) and isinstance(strides, tuple) else [None]
        if not (all(_is_int(v) and v in INT64 for v in view) and len(shape) == len(strides) <= MAX_DIMS):
            raise ValueError(
                f"bad tensor view: offset {_short(offset)}, shape {_short(shape)}, strides {_short(strides)}"
            )
        return TensorRef(storage, offset, shape, strides)


class _PlainUnpickler(pickle.Unpickler):
    """For the pickles around the state dict: plain values only, no global and no persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id outside the state dict")


class _StateDictUnpickler(_PlainUnpickler):
    """Resolves only the few globals a state dict needs, and turns storage ids into StorageRef."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _RebuildTensor()
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {_short(pid)}")
        storage_type, key, _location, numel = pid[1:5]
        if not (isinstance(storage_type, StorageType) and storage_type.name in STORAGE_DTYPES):
            raise pickle.UnpicklingError(f"unknown storage type {_short(storage_type)}")
        if not (isinstance(key, str) and _is_int(numel) and numel >= 0):
            raise pickle.UnpicklingError(f"bad storage id {_short(pid)}")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError(f"storage {key} is a view of another storage: not supported")
        return StorageRef(key, np.dtype(STORAGE_DTYPES[storage_type.name]).newbyteorder("<"), numel)


def load_legacy_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """Load a legacy-format torch state dict as name -> numpy array; anything unexpected raises ValueError."""
    return parse_legacy_state_dict(Path(path).read_bytes(), str(path))


def parse_legacy_state_dict(data: bytes, source: str = "weights file") -> dict[str, np.ndarray]:
    """The state dict held in a legacy torch file's bytes; `source` names the file in error messages."""
    try:
        return _parse(data)
    except Exception as err:  # a malformed pickle raises anything from EOFError to UnicodeDecodeError
        raise ValueError(f"{source}: not a valid legacy torch weights file: {err}") from err


def _parse(data: bytes) -> dict[str, np.ndarray]:
    """The five pickles, then the storages, each checked."""
    f = io.BytesIO(data)
    magic = _load(f, _PlainUnpickler)
    if not (_is_int(magic) and magic == LEGACY_MAGIC):
        raise ValueError("no legacy torch magic number (a zip-format file needs torch.load)")
    protocol = _load(f, _PlainUnpickler)
    if not (_is_int(protocol) and protocol == LEGACY_PROTOCOL):
        raise ValueError(f"unsupported legacy torch protocol {_short(protocol)}")
    _check_sys_info(_load(f, _PlainUnpickler))
    state = _load(f, _StateDictUnpickler)
    if not isinstance(state, dict):
        raise ValueError("the state dict is not a mapping of names to tensors")
    state = dict(dict.items(state))  # a plain copy, read with dict's own method: a BUILD can give the OrderedDict an
    # `items` or `values` attribute (e.g. OrderedDict itself, which returns nothing), but cannot redirect dict.items
    if not all(isinstance(k, str) and isinstance(v, TensorRef) for k, v in state.items()):
        raise ValueError("the state dict is not a mapping of names to tensors")
    keys = _load(f, _PlainUnpickler)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ValueError("the storage keys are not a list of strings")
    refs = {ref.storage.key: ref.storage for ref in state.values()}
    if len(refs) != len(state):
        raise ValueError("two tensors share a storage: not supported")
    if len(set(keys)) != len(keys) or set(keys) != set(refs):
        raise ValueError("the storage keys do not match the tensors' storages")
    storages = _read_storages(data, f.tell(), [refs[key] for key in keys])
    return {name: _tensor(ref, storages[ref.storage.key], name) for name, ref in state.items()}


def _load(f: io.BytesIO, unpickler: type[pickle.Unpickler]) -> Any:
    """The next pickle in f, unpickled only after a dry read of its opcodes (pickletools runs nothing)."""
    start = f.tell()
    _dry_read(f)
    f.seek(start)
    return unpickler(f).load()


def _dry_read(f: io.BytesIO) -> None:
    """Follow a pickle's stack without building anything, refusing what the C unpickler would turn into a crash or a
    huge allocation: an opcode outside ATOMS and the containers a state dict uses, containers nested deeper than
    MAX_DEPTH (hashing a million nested tuples overflows the C stack), and a memo index past the opcodes read so far
    (picklers number their memo 0, 1, 2, ...; the unpickler allocates a table as large as any index it is given)."""
    stack: list[int] = []  # the nesting depth of each value on the unpickler's stack
    marks: list[int] = []
    memo: dict[int, int] = {}

    def to_mark() -> int:
        """Pop the values down to the last mark; the depth of a container holding them."""
        mark = marks.pop()
        items = stack[mark:]
        del stack[mark:]
        return 1 + max(items, default=0)

    for count, (opcode, arg, _) in enumerate(pickletools.genops(f)):
        name = opcode.name
        if name in ATOMS:
            stack.append(0)
        elif name in ("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT"):
            stack.append(1)
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("TUPLE", "LIST", "DICT"):
            stack.append(to_mark())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(1 + max(items))
        elif name in ("APPENDS", "SETITEMS"):
            depth = to_mark()
            stack[-1] = max(stack[-1], depth)
        elif name in ("APPEND", "BUILD"):
            added = stack.pop()
            stack[-1] = max(stack[-1], 1 + added)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1] = max(stack[-1], 1 + max(key, value))
        elif name == "REDUCE":
            args, function = stack.pop(), stack.pop()
            stack.append(1 + max(args, function))
        elif name in ("BINPUT", "LONG_BINPUT"):
            if not 0 <= arg <= count:
                raise pickle.UnpicklingError(f"memo index {arg} at opcode {count}")
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":  # protocol 4's BINPUT
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "STACK_GLOBAL":  # protocol 4's GLOBAL, its names on the stack
            del stack[-2:]
            stack.append(0)
        elif name not in ("PROTO", "FRAME", "BINPERSID", "STOP"):  # a persistent id replaces its value: depth stays
            raise pickle.UnpicklingError(f"unexpected pickle opcode {name} at opcode {count}")
        if stack and stack[-1] > MAX_DEPTH:
            raise pickle.UnpicklingError(f"values nested deeper than {MAX_DEPTH} at opcode {count}")


def _check_sys_info(sys_info: Any) -> None:
    """The system info pickle: little-endian, protocol 1001, sizes of C types."""
    if not (isinstance(sys_info, dict) and set(sys_info) == SYS_INFO_KEYS):
        raise ValueError(f"unexpected system info {_short(sys_info)}")
    if sys_info["little_endian"] is not True:
        raise ValueError("big-endian torch files are not supported")
    sizes = sys_info["type_sizes"]
    if sys_info["protocol_version"] != LEGACY_PROTOCOL or not (
        isinstance(sizes, dict) and all(isinstance(k, str) and _is_int(v) for k, v in sizes.items())
    ):
        raise ValueError(f"unexpected system info {_short(sys_info)}")


def _read_storages(data: bytes, start: int, storages: list[StorageRef]) -> dict[str, np.ndarray]:
    """Each storage's elements, in file order, as read-only views of data; every length is checked."""
    arrays, position = {}, start
    for storage in storages:
        if position + COUNT_BYTES > len(data):
            raise ValueError(f"truncated before storage {storage.key}")
        count = int.from_bytes(data[position : position + COUNT_BYTES], "little", signed=True)
        position += COUNT_BYTES
        if count != storage.numel:
            raise ValueError(f"storage {storage.key} holds {count} elements, its tensor declares {storage.numel}")
        end = position + count * storage.dtype.itemsize
        if end > len(data):
            raise ValueError(f"truncated in storage {storage.key}: {end - len(data)} bytes missing")
        arrays[storage.key] = np.frombuffer(data, storage.dtype, count, position)
        position = end
    if position != len(data):
        raise ValueError(f"{len(data) - position} unexpected bytes after the last storage")
    return arrays


def _tensor(ref: TensorRef, storage: np.ndarray, name: str) -> np.ndarray:
    """The tensor as a C-ordered copy; it must cover its whole storage, densely, in any dimension order."""
    numel = math.prod(ref.shape)
    if ref.offset != 0 or numel != storage.size or min(ref.shape, default=1) < 0:
        raise ValueError(f"tensor {name}: shape {ref.shape} at offset {ref.offset} does not cover its storage")
    order = sorted(range(len(ref.shape)), key=lambda d: -ref.strides[d])  # outermost dimension first
    expected = 1
    for d in reversed(order):
        if ref.shape[d] != 1 and ref.strides[d] != expected:
            raise ValueError(f"tensor {name}: strides {ref.strides} do not lay shape {ref.shape} out densely")
        expected *= ref.shape[d]
    in_memory = storage.reshape([ref.shape[d] for d in order])  # reshape checks the size: no read out of bounds
    return np.ascontiguousarray(in_memory.transpose(np.argsort(order)))


def _is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """A value for an error message, cut short (a crafted file may hold huge or deeply nested objects)."""
    return reprlib.repr(value)

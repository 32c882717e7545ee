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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True, slots=True)  # slots: a pickle's BUILD cannot change it after the checks
class StorageType:
    """Stands in for torch.FloatStorage and friends."""

    name: str


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A persistent id of the state dict pickle: which storage, its element type and element count."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor as the pickle describes it: a view (offset, shape, strides) of a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _tensor_ref(storage: Any, offset: Any, shape: Any, strides: Any, *_: Any) -> TensorRef:
    """torch._utils._rebuild_tensor_v2, type-checked: its other arguments (requires_grad, hooks) are ignored."""
    if not isinstance(storage, StorageRef):
        raise ValueError(f"a tensor refers to {_short(storage)}, not to a storage")
    if not (_is_int(offset) and _int_tuple(shape) and _int_tuple(strides) and len(shape) == len(strides)):
        raise ValueError(f"bad tensor view: offset {_short(offset)}, shape {_short(shape)}, strides {_short(strides)}")
    return TensorRef(storage, offset, tuple(shape), tuple(strides))


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
            return _tensor_ref
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
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, TensorRef) for k, v in state.items())):
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
    """The next pickle in f, after a dry read of its opcodes (pickletools runs nothing) that refuses a memo index past
    the opcodes read so far: picklers number their memo 0, 1, 2, ..., and the C unpickler would allocate a memo table
    as large as any index it is given (gigabytes for a flipped byte)."""
    start = f.tell()
    for count, (opcode, arg, _) in enumerate(pickletools.genops(f)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= count:
            raise pickle.UnpicklingError(f"memo index {arg} at opcode {count}")
    f.seek(start)
    return unpickler(f).load()


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


def _int_tuple(value: Any) -> bool:
    """A tuple of ints."""
    return isinstance(value, tuple) and all(_is_int(v) for v in value)


def _short(value: Any) -> str:
    """A value for an error message, cut short (a crafted file may hold huge or deeply nested objects)."""
    return reprlib.repr(value)

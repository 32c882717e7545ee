"""Read PyTorch state dicts saved in the legacy (non-zip) pickle format, without torch.

Hand-written because torch itself is a 700 MB dependency for what is a 60-line file format:
a magic number, a protocol version, system info, the pickled state dict whose tensors refer to
storages by key, the sorted list of storage keys, then each storage as an int64 count and raw bytes.
"""

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
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


class TensorRef:
    """A tensor as the pickle describes it: a view (offset, shape, strides) of a storage."""

    def __init__(self, storage: tuple, offset: int, shape: tuple, strides: tuple, *_: Any) -> None:
        self.storage_key, self.dtype = storage
        self.offset, self.shape, self.strides = offset, tuple(shape), tuple(strides)


class _StorageType:
    """Stands in for torch.FloatStorage and friends: only its dtype matters."""

    def __init__(self, name: str) -> None:
        self.dtype = STORAGE_DTYPES[name]


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the few globals a state dict needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return TensorRef
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: tuple) -> tuple:
        kind, storage_type, key, _location, _numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return key, storage_type.dtype


def _read_storages(f: IO[bytes], keys: list[str], dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read the raw storages that follow the pickles, in the order of their keys."""
    storages = {}
    for key in keys:
        count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
        dtype = np.dtype(dtypes[key]).newbyteorder("<")
        storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    return storages


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Load a legacy-format torch state dict as name -> numpy array (float32 stays float32)."""
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch file (a zip-format file needs torch.load)")
        if pickle.load(f) != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy torch protocol")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian torch files are not supported")
        state = _RestrictedUnpickler(f).load()
        keys = pickle.load(f)
        dtypes = {ref.storage_key: ref.dtype for ref in state.values() if isinstance(ref, TensorRef)}
        storages = _read_storages(f, keys, dtypes)
    arrays = {}
    for name, ref in state.items():
        if not isinstance(ref, TensorRef):
            raise ValueError(f"{path}: entry {name} is not a tensor")
        storage = storages[ref.storage_key]
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :], ref.shape, tuple(s * itemsize for s in ref.strides)
        )
        arrays[name] = np.ascontiguousarray(view)
    return arrays

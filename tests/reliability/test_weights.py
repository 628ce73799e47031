import builtins
import hashlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

from medurwkv_net.reliability import (
    CorruptWeightsError,
    UnsafeWeightsError,
    WeightsIntegrityError,
    file_sha256,
    safe_load_weights,
    verify_sha256,
)


def _state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(64, 64, generator=g), "b": torch.zeros(64)}


def test_sha256_ok_and_prefix_forms(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(_state(), p)
    h = hashlib.sha256(p.read_bytes()).hexdigest()
    assert file_sha256(p) == h
    assert verify_sha256(p, h.upper()) == h
    assert verify_sha256(p, "sha256:" + h) == h


def test_tampered_weight_file_is_refused_naming_file_and_both_hashes(tmp_path, monkeypatch):
    p = tmp_path / "w.pt"
    torch.save(_state(), p)
    good = file_sha256(p)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensor payload
    p.write_bytes(bytes(data))
    bad = file_sha256(p)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(WeightsIntegrityError) as ei:
        safe_load_weights(p, expected_sha256=good)
    msg = str(ei.value)
    assert str(p) in msg and good in msg and bad in msg
    assert loads == []  # never deserialized


def test_truncated_weight_file_is_refused(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(_state(), p)
    good = file_sha256(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(WeightsIntegrityError, match="expected " + good):
        safe_load_weights(p, expected_sha256=good)
    with pytest.raises(CorruptWeightsError, match=r"w\.pt' \(\d+ bytes\): truncated"):
        safe_load_weights(p)


def test_truncated_safetensors_is_refused(tmp_path):
    p = tmp_path / "w.safetensors"
    save_file(_state(), str(p))
    loaded = safe_load_weights(p)
    torch.testing.assert_close(loaded["w"], _state()["w"])
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError, match="w.safetensors"):
        safe_load_weights(p)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, fmt):
    marker = tmp_path / "pwned.txt"
    p = tmp_path / "evil.pt"
    payload = {"state_dict": _state(), "x": _Evil(marker)}
    if fmt == "torch_zip":
        torch.save(payload, p)
    else:
        p.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeWeightsError, match=r"refused to load weight file '.*evil\.pt'"):
        safe_load_weights(p)
    assert not marker.exists()


def test_bad_expected_hash_and_missing_file(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(_state(), p)
    with pytest.raises(ValueError, match="64-digit"):
        verify_sha256(p, "abc")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        safe_load_weights(tmp_path / "nope.pt")
    with pytest.raises(CorruptWeightsError, match="junk.pt"):
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
        safe_load_weights(tmp_path / "junk.pt")

"""Weights registry: sha256 checks, safe loading, clear errors."""

import json

import pytest
import torch

from hloc_hndesc.weights import (
    NoWeightsError,
    WeightsError,
    load_checkpoint,
    load_weights,
    read_registry,
    save_checkpoint,
    sha256sum,
    shipped_weights,
)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))


def _registry(root, name, file, sha):
    (root / "registry.json").write_text(json.dumps({name: {"file": file, "sha256": sha, "card": f"{name}.md"}}))


def test_shipped_checkpoint_verified_and_loaded(tmp_path):
    sha = save_checkpoint(_net(), tmp_path / "m.pth", {"variant": "x"})
    _registry(tmp_path, "m", "m.pth", sha)
    assert read_registry(tmp_path)["m"].sha256 == sha == sha256sum(tmp_path / "m.pth")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    path = load_weights(net, "m", None, root=tmp_path)
    assert path == tmp_path / "m.pth"
    assert torch.equal(net[0].weight, _net()[0].weight)


def test_sha_mismatch_is_refused(tmp_path):
    save_checkpoint(_net(), tmp_path / "m.pth")
    _registry(tmp_path, "m", "m.pth", "0" * 64)
    with pytest.raises(WeightsError, match="Checksum mismatch.*m.pth"):
        shipped_weights("m", tmp_path)


def test_no_weights_is_a_clear_error(tmp_path):
    with pytest.raises(NoWeightsError, match="No trained weights are shipped for 'hndesc-r2d2'.*weights=PATH"):
        shipped_weights("hndesc-r2d2", tmp_path)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Evil()}, path)
    with pytest.raises(WeightsError, match="Cannot read checkpoint .*evil.pth"):
        load_checkpoint(path)


def test_wrong_layout_names_file(tmp_path):
    save_checkpoint(torch.nn.Linear(3, 2), tmp_path / "lin.pth")
    with pytest.raises(WeightsError, match="lin.pth does not fit 'm'"):
        load_weights(_net(), "m", tmp_path / "lin.pth")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(WeightsError, match="not found.*nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="Cannot read checkpoint .*bad.pth"):
        load_checkpoint(tmp_path / "bad.pth")


def test_module_prefix_stripped(tmp_path):
    src = _net()
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "dp.pth")
    dst = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    load_weights(dst, "m", tmp_path / "dp.pth")
    assert torch.equal(dst[0].bias, src[0].bias)


def test_shipped_registry_is_consistent():
    """Every entry of the real registry has its file, matching sha256 and a model card."""
    for name, entry in read_registry().items():
        assert shipped_weights(name) == entry.path
        assert entry.card_path.is_file(), f"model card missing for {name}"

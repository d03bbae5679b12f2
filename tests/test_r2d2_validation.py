"""The HNDesc-R2D2 held-out validation benchmark: same pairs for every set of weights, random as the floor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import r2d2_validation
from hloc_hndesc.weights import shipped_weights


def test_weights_must_be_label_equals_path(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        r2d2_validation.parse_args(["--weights", str(tmp_path / "model.pt")])
    with pytest.raises(SystemExit):
        r2d2_validation.parse_args(["--weights", "=model.pt"])


def test_settings_without_a_training_config_are_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(ValueError, match="bare.pt: no training config"):
        r2d2_validation.settings_conf(bare, [], None)


@pytest.mark.slow
def test_shipped_weights_score_far_above_random_and_a_copy_scores_the_same(
    data_dir: Path, tmp_path: Path, capsys
) -> None:
    copy = tmp_path / "copy.pth"
    copy.write_bytes(shipped_weights("hndesc-r2d2").read_bytes())
    scores = r2d2_validation.main([
        "--weights", f"copy={copy}", "--pairs", "3", "--no-write",
        f"data.image_dirs=[{data_dir / 'train_natural'}]",
    ])
    assert list(scores) == ["shipped", "copy", "random"]
    assert scores["copy"] == scores["shipped"] and scores["shipped"]["pairs"] == 3
    # measured on 16 pairs: shipped AP 0.84, MMA@3 0.71; random AP 0.004, MMA@3 0.06
    assert scores["shipped"]["ap"] > 0.6 and scores["random"]["ap"] < 0.1
    assert scores["shipped"]["mma"] > scores["random"]["mma"] + 0.3
    printed = capsys.readouterr().out
    assert "| copy | `copy.pth`" in printed and "rotation up to ±22.5°" in printed

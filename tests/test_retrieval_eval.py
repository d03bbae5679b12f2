"""Retrieval evaluators on small ground-truth files written here (revisited Oxford/Paris,
Tokyo 24/7 style), label mAP, shortlist recall and Strecha covisibility."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from hloc_hndesc.evaluation.datasets import DatasetError, StrechaCamera, read_strecha_scene
from hloc_hndesc.evaluation.retrieval import (
    average_precision,
    label_ground_truth,
    mean_average_precision,
    ranking_ap,
    read_geo_ground_truth,
    read_revisited_gnd,
    recall_at_n,
    revisited_map,
    shortlist_recall,
    strecha_covisibility,
    view_overlap,
)


def test_average_precision_by_hand():
    assert average_precision(np.array([0, 1]), 2) == pytest.approx(1.0)
    # positives at ranks 0 and 2: (1 + 1) / 2 and (1/2 + 2/3) / 2, over 2 positives
    assert average_precision(np.array([0, 2]), 2) == pytest.approx((1 + (0.5 + 2 / 3) / 2) / 2)
    # one of two positives never retrieved
    assert average_precision(np.array([1]), 2) == pytest.approx((0 + 0.5) / 2 / 2)
    with pytest.raises(ValueError):
        average_precision(np.array([]), 0)
    # junk is removed from the ranking before ranks are counted
    assert ranking_ap([5, 3, 1], positives=[1], junk=[5, 3]) == pytest.approx(1.0)
    assert ranking_ap([5, 3, 1], positives=[1]) == pytest.approx((0 / 2 + 1 / 3) / 2)


GND = {
    "imlist": ["d0", "d1", "d2", "d3", "d4", "d5"],
    "qimlist": ["q0", "q1"],
    "gnd": [
        {"easy": np.array([0, 3]), "hard": np.array([1]), "junk": np.array([2]), "bbx": np.array([1.0, 2.0, 30.0, 40.0])},
        {"easy": [], "hard": [4], "junk": [], "bbx": [0, 0, 10, 10]},
    ],
}


def test_revisited_gnd_pickle_and_protocols(tmp_path):
    path = tmp_path / "gnd_toy.pkl"
    path.write_bytes(pickle.dumps(GND, protocol=2))
    gt = read_revisited_gnd(path)
    assert gt.imlist == GND["imlist"] and gt.qimlist == ["q0", "q1"]
    assert gt.gnd[0]["easy"] == [0, 3] and gt.gnd[0]["bbx"] == [1.0, 2.0, 30.0, 40.0]
    rankings = [[2, 0, 1, 5, 3, 4], [4, 0, 1, 2, 3, 5]]
    maps = revisited_map(rankings, gt.gnd)
    # easy (q0): positives 0, 3; ignored 1, 2 -> ranking 0, 5, 3, 4 -> ranks 0, 2; q1 has no easy positive
    assert maps["easy"] == pytest.approx((1 + (0.5 + 2 / 3) / 2) / 2)
    # medium: q0 positives 0, 1, 3; ignored 2 -> 0, 1, 5, 3 -> ranks 0, 1, 3; q1: 4 at rank 0
    ap0 = (1 + 1 + (2 / 3 + 3 / 4) / 2) / 3
    assert maps["medium"] == pytest.approx((ap0 + 1) / 2)
    # hard: q0 positive 1; ignored 0, 2, 3 -> 1 first; q1: 4 first
    assert maps["hard"] == pytest.approx(1.0)
    (tmp_path / "gnd.json").write_text(json.dumps({**GND, "gnd": [{k: np.asarray(v).tolist() for k, v in g.items()} for g in GND["gnd"]]}))
    assert read_revisited_gnd(tmp_path / "gnd.json").gnd == gt.gnd


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_revisited_gnd_refuses_code_and_bad_content(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Exploit()]}))
    with pytest.raises(DatasetError, match="refusing to load"):
        read_revisited_gnd(evil)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [3], "hard": [], "junk": []}]}))
    with pytest.raises(DatasetError, match="outside the 1 database images"):
        read_revisited_gnd(bad)
    with pytest.raises(DatasetError, match="not found"):
        read_revisited_gnd(tmp_path / "none.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DatasetError, match="expected a dict"):
        read_revisited_gnd(tmp_path / "list.pkl")


def test_tokyo_recall_at_n(tmp_path):
    path = tmp_path / "tokyo_gt.txt"
    path.write_text(
        "# role name easting northing (UTM, metres)\n"
        "db d0.jpg 100 100\ndb d1.jpg 130 100\ndb d2.jpg 500 500\n"
        "query q0.jpg 110 100\nquery q1.jpg 520 505\nquery q2.jpg 0 0\n"
    )
    gt = read_geo_ground_truth(path)
    assert gt.db_names == ["d0.jpg", "d1.jpg", "d2.jpg"] and gt.query_utm.shape == (3, 2)
    rankings = {"q0.jpg": ["d2.jpg", "d1.jpg", "d0.jpg"], "q1.jpg": ["d2.jpg", "d0.jpg"], "q2.jpg": ["d0.jpg", "d1.jpg"]}
    # q0: d1 at 20 m (rank 2), d0 at 10 m (rank 3); q1: d2 at 20.6 m (rank 1); q2: nothing within 25 m
    assert recall_at_n(rankings, gt, ns=(1, 2, 3)) == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3})
    assert recall_at_n(rankings, gt, ns=(1,), threshold=15.0) == pytest.approx({1: 0.0})
    with pytest.raises(KeyError, match="no ranking"):
        recall_at_n({"q0.jpg": []}, gt)
    path.write_text("db d0.jpg 1\n")
    with pytest.raises(DatasetError, match=":1: expected"):
        read_geo_ground_truth(path)


def test_label_map_and_shortlist_recall():
    labels = ["a", "a", "b", "b", "c"]
    positives, junk = label_ground_truth(labels, {"b": ["c"]})
    assert positives[0] == [1] and junk[0] == [0] and junk[2] == [2, 4] and positives[4] == []
    perfect = [[1, 2, 3, 4], [0, 2, 3, 4], [3, 0, 1, 4], [2, 0, 1, 4], [0, 1, 2, 3]]
    value, aps = mean_average_precision(perfect, positives, junk)
    assert value == 1.0 and np.isnan(aps[4])
    worst = [[4, 2, 3, 1], [4, 2, 3, 0], [4, 0, 1, 3], [4, 0, 1, 2], [0, 1, 2, 3]]
    value, _ = mean_average_precision(worst, positives, junk)
    # a: the positive at rank 3 -> (0 + 1/4) / 2; b: junk 4 removed, positive at rank 2 -> (0 + 1/3) / 2
    assert value == pytest.approx((1 / 8 + 1 / 8 + 1 / 6 + 1 / 6) / 4)
    recall = shortlist_recall([[1, 2, 3], [3, 2, 0]], [[1, 2], [0]], ks=(1, 2), junk=[[], [3]])
    assert recall == pytest.approx({1: (0.5 + 0) / 2, 2: (1 + 1) / 2})


def look_at(center, target, size=(640, 480), f=500.0) -> StrechaCamera:
    """A camera at ``center`` looking at ``target`` (Strecha convention: R maps camera to world)."""
    z = np.asarray(target, float) - center
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    K = np.array([[f, 0, size[0] / 2], [0, f, size[1] / 2], [0, 0, 1]])
    return StrechaCamera("c", K, np.stack([x, y, z], 1), np.asarray(center, float), size)


def test_covisibility_from_cameras():
    target = np.array([0.0, 10.0, 0.0])
    near = [look_at(np.array([dx, 0.0, 0.0]), target) for dx in (-1.0, 0.0, 1.0)]
    away = look_at(np.array([0.0, 0.0, 0.0]), np.array([0.0, -10.0, 0.0]))
    side = look_at(np.array([30.0, 10.0, 0.0]), np.array([40.0, 10.0, 0.0]))
    cameras = near + [away, side]
    covisible = strecha_covisibility(cameras, 0.5)
    assert covisible[:3, :3].sum() == 6 and not covisible[3:].any() and not covisible[:, 3:].any()
    assert (covisible == covisible.T).all()
    assert view_overlap(near[1], near[1], 10.0) == 1.0
    assert view_overlap(near[1], away, 10.0) == 0.0


def test_covisibility_on_strecha(data_dir):
    cameras = read_strecha_scene(data_dir / "strecha" / "fountain-P11")
    loose, strict = strecha_covisibility(cameras, 0.5), strecha_covisibility(cameras, 0.9)
    assert loose.sum() == 11 * 10  # the fountain facade is seen by every view
    assert 0 < strict.sum() < loose.sum() and strict[0, 1] and not strict[0, 10]

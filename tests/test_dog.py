"""DoG detection through pycolmap: coordinate convention, cap, upright, RootSIFT."""

from __future__ import annotations

import warnings

import numpy as np
import pycolmap
import pytest
import torch

from hloc_hndesc.features.dog import DEFAULT_DOG_OPTIONS, detect_dog, dog_options, extract_sift, sift_to_rootsift


def blob_image(centres, size=96, sigma=2.0, contrasts=None) -> torch.Tensor:
    """Grey image with Gaussian blobs centred at (x, y) in hloc's integer-centre convention."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.full((size, size), 0.2)
    contrasts = contrasts or [0.6] * len(centres)
    for (x0, y0), c in zip(centres, contrasts):
        image += c * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return torch.from_numpy(image.clip(0, 1).astype(np.float32))[None, None]


def textured_image(size=160, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.random((1, 1, size // 8, size // 8)).astype(np.float32))
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("centre", [(40.3, 50.6), (37.0, 45.0), (60.8, 29.2)])
def test_hloc_convention(centre):
    out = detect_dog(blob_image([centre]))
    kp = out["keypoints"]
    assert kp.dtype == torch.float32 and kp.shape[1] == 2 and kp.shape[0] >= 1
    err = (kp - torch.tensor(centre)).norm(dim=1).min().item()
    # pycolmap's raw output is 0.5 px off in each axis (0.71 px); converted it must hit the centre.
    assert err < 0.15, (err, kp)
    best = (kp - torch.tensor(centre)).norm(dim=1).argmin()
    assert 1.2 < out["scales"][best] < 2.5  # a sigma-2 blob is detected near its own scale
    assert out["scores"][best] > 0.02


def test_history_independent():
    """pycolmap's reused CPU extractor depends on the previous image; ours must not."""
    target = blob_image([(60.8, 29.2)])
    alone = detect_dog(target)
    detect_dog(blob_image([(37.0, 45.0)]))
    after = detect_dog(target)
    assert alone["keypoints"].shape[0] >= 1
    for key in alone:
        assert torch.equal(alone[key], after[key])


def test_output_types_and_scores_match_peak_threshold():
    out = detect_dog(textured_image())
    n = out["keypoints"].shape[0]
    assert n > 20
    for key in ("scales", "oris", "scores"):
        assert out[key].shape == (n,) and out[key].dtype == torch.float32
    assert (out["oris"].abs() <= 180.0 + 1e-3).all()
    # scores are the DoG response that SIFT thresholds: almost all are above peak_threshold.
    thr = DEFAULT_DOG_OPTIONS["peak_threshold"]
    assert (out["scores"] > 0.7 * thr).float().mean() > 0.95
    assert torch.isfinite(out["scores"]).all()


def test_cap_keeps_strongest_and_is_deterministic():
    full = detect_dog(textured_image())
    n = full["keypoints"].shape[0]
    cap = n // 3
    a = detect_dog(textured_image(), max_keypoints=cap)
    b = detect_dog(textured_image(), max_keypoints=cap)
    assert a["keypoints"].shape == (cap, 2) and a["scores"].shape == (cap,)
    for key in a:
        assert torch.equal(a[key], b[key])
    # every kept score is >= every dropped one, and the kept keypoints are among the full set.
    kept = a["scores"].min()
    assert (torch.sort(full["scores"], descending=True).values[cap:] <= kept + 1e-7).all()
    dist = torch.cdist(a["keypoints"], full["keypoints"], compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert dist.max() < 1e-5
    assert detect_dog(textured_image(), max_keypoints=0)["keypoints"].shape == (0, 2)
    assert detect_dog(textured_image(), max_keypoints=10 * n)["keypoints"].shape == (n, 2)


def test_cap_prefers_high_contrast_blob():
    centres = [(24.0, 24.0), (72.0, 24.0), (48.0, 72.0)]
    image = blob_image(centres, contrasts=[0.25, 0.7, 0.4])
    out = detect_dog(image, max_keypoints=1)
    assert out["keypoints"].shape == (1, 2)
    assert (out["keypoints"][0] - torch.tensor(centres[1])).norm() < 0.5


def test_upright_zero_orientations():
    image = textured_image()
    out = detect_dog(image, upright=True)
    assert out["keypoints"].shape[0] > 10
    assert torch.all(out["oris"] == 0)
    rotated = detect_dog(image)
    assert (rotated["oris"] != 0).any()
    # one orientation per location when upright.
    assert torch.unique(out["keypoints"], dim=0).shape[0] == out["keypoints"].shape[0]


@pytest.mark.parametrize("shape", [(64, 64), (5, 7)])
def test_flat_or_tiny_image_gives_empty(shape):
    for image in (torch.zeros(1, 1, *shape), torch.full((1, 1, *shape), 0.5)):
        out = extract_sift(image)
        assert out["keypoints"].shape == (0, 2) and out["keypoints"].dtype == torch.float32
        for key in ("scales", "oris", "scores"):
            assert out[key].shape == (0,)
        assert out["descriptors"].shape == (128, 0)


def test_rootsift_descriptors():
    out = extract_sift(textured_image(), max_keypoints=50)
    desc = out["descriptors"]
    assert desc.shape == (128, 50) and desc.dtype == torch.float32
    assert (desc >= 0).all()
    torch.testing.assert_close(desc.norm(dim=0), torch.ones(50), atol=1e-4, rtol=0)
    # RootSIFT of pycolmap's plain L2 SIFT (not a second root, as upstream hloc's dog does).
    opts = dog_options()
    opts["normalization"] = pycolmap.Normalization.L2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sift = pycolmap.Sift(
            options=pycolmap.FeatureExtractionOptions(sift=pycolmap.SiftExtractionOptions(opts)),
            device=pycolmap.Device.cpu,
        )
    kpts, plain = sift.extract(np.ascontiguousarray(textured_image()[0, 0].numpy()))
    xy = torch.from_numpy(kpts[:, :2] - 0.5)
    idx = torch.cdist(out["keypoints"], xy, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
    reference = torch.from_numpy(sift_to_rootsift(plain)).T[:, idx]
    cos = (reference * desc).sum(dim=0)
    assert cos.median() > 0.998  # a second root (upstream hloc) gives ~0.976
    # same keypoints as detect_dog with the same arguments.
    det = detect_dog(textured_image(), max_keypoints=50)
    assert torch.equal(det["keypoints"], out["keypoints"])


def test_options_validation():
    with pytest.raises(ValueError, match="unknown DoG option 'peak_treshold'"):
        detect_dog(textured_image(64), {"peak_treshold": 0.01})
    with pytest.raises(ValueError, match="upright"):
        dog_options({"upright": True})
    with pytest.raises(ValueError, match=r"\(1, 1, H, W\)"):
        detect_dog(torch.rand(1, 3, 32, 32))
    sparse = detect_dog(textured_image(), {"peak_threshold": 0.03})
    dense = detect_dog(textured_image())
    assert 0 < sparse["keypoints"].shape[0] < dense["keypoints"].shape[0]


def test_sift_extractor_is_the_baseline_function(photo_small):
    from hloc_hndesc.confs import build_extractor, get_conf

    extractor = build_extractor({**get_conf("sift")["model"], "max_keypoints": 300})
    grey = torch.from_numpy(photo_small).permute(2, 0, 1)[None]
    out = extractor(grey)
    direct = extract_sift(extractor.check_image(grey), max_keypoints=300)
    assert out["keypoints"].shape == (300, 2) and out["descriptors"].shape == (128, 300)
    assert torch.equal(out["keypoints"], direct["keypoints"])
    assert torch.equal(out["descriptors"], direct["descriptors"])
    with pytest.raises(ValueError, match="no weights"):
        build_extractor(get_conf("sift")["model"], weights="w.pth")

"""Patch verification and patch retrieval on homography sequences (the descriptor alone).

The descriptor is judged apart from the detector, in the spirit of HPatches (Balntas et
al., CVPR 2017) and of the verification metric of the UBC benchmark that HyNet reports
(FPR@95). Choices made here:

Patch pairs
    Keypoints are detected only in the reference image of a sequence (``images[0]``):
    pycolmap DoG through :func:`~hloc_hndesc.features.dog.detect_dog` with the project's
    default options. Each keypoint's frame is HyNet's (:func:`keypoints_to_lafs`: centre,
    half-side ``mr_size * sigma / 2``, DoG orientation). Selection is deterministic: the
    ``candidate_factor * max_keypoints`` detections of largest |DoG| whose frame lies inside
    the reference image, then overlap suppression (a keypoint is dropped when a stronger one
    has a measurement disk of radius ``mr_size * sigma / 2`` overlapping it with IoU above
    ``max_overlap``; this removes the duplicate orientations of one location and
    near-identical regions, so two distinct keypoints are never "the same point"), then the
    ``max_keypoints`` strongest. Nothing is detected in the other images.

    The frame ``[A | c]`` of a keypoint is carried into image k by ``H_1_k``: the centre is
    warped, ``A`` becomes ``J A`` where ``J`` is the Jacobian of ``H_1_k`` at ``c`` (local
    affine approximation; exact for affine ``H``, off by the perspective term at the frame
    corners otherwise). A pair is kept when the four corners of the transferred frame lie
    inside image k (pixel centres, ``[0, W - 1] x [0, H - 1]``) and, with jitter, the
    jittered frame lies inside the reference image. Patches are
    ``patch_size`` x ``patch_size`` (32) grey patches cut with kornia's
    ``extract_patches_from_pyramid`` in both images, exactly as the HyNet extractor does
    (:func:`~hloc_hndesc.features.hynet.extract_patches`). Homographies are applied to
    hloc-convention coordinates as stored; the +-0.5 px convention difference between
    datasets is negligible against frames of 12 px and more.

    Jitter: as HPatches does to simulate detector repeatability errors, the frame may be
    perturbed in the reference image before it is carried into image k
    (:data:`JITTER_LEVELS`): ``[A | c] -> [A R(t) diag(e^s1, e^s2) | c + A d]`` with the
    rotation ``t``, log-scales ``s1, s2`` and shift ``d`` (in half-sides) uniform within the
    level's bounds, drawn per target patch from a generator seeded by (seed, sequence, k).
    The bounds give a median IoU between the jittered and exact patch squares of ~0.86
    (``easy``) and ~0.72 (``hard``), HPatches' stated median overlaps for its easy and hard
    patches (tests/test_patch_eval.py measures it). ``none`` keeps the exact frame: then
    only the photometric change, resampling and the affine approximation separate the
    patches of a pair.

Verification (FPR@95, verification AP)
    Positives: every kept (reference patch, transferred patch in image k). Negatives: as
    many as positives, one per positive, drawn with a seeded generator: with probability
    ``same_pair_fraction`` the target patch of another keypoint of the same image pair,
    otherwise a target patch of another scene (same pair only when there is a single
    scene; another scene only when the pair has one keypoint). Sequences whose names
    differ only by the ``i_``/``v_`` prefix are one scene (the synthetic sequences of
    ``benchmarks.make_sequences`` make both from one photo). Distances are L2.
    FPR@95 is the fraction of negatives with distance <= t, t the smallest distance that
    accepts 95 % of the positives (ties count against the descriptor). Verification AP is
    the average precision of positives ranked by distance among all pairs.

Retrieval (mAP)
    Each reference patch of an image pair queries a database made of the target patches
    of that pair (its one true match among them) plus ``num_distractors`` target patches
    drawn once per pair (seeded, without replacement) from other scenes (never the same
    scene, where the same surface appears in other images). With one relevant item, AP
    is ``1 / rank``; items at the same distance as the true match rank before it.

Reporting groups
    Sequences are grouped by HPatches kind (``i_``: illumination, ``v_``: viewpoint); a
    sequence of unknown kind (e.g. Oxford ``graf``) forms the group named by the caller;
    ``all`` pools every query. A negative belongs to the group of its positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from kornia.feature import SIFTDescriptor, extract_patches_from_pyramid

from ..features.dog import detect_dog
from ..features.hynet import keypoints_to_lafs
from ..io import read_image
from ..models.hynet import PATCH_SIZE
from .datasets import HomographySequence

#: (N, 1, P, P) patches in [0, 1] -> (N, D) descriptors.
Describer = Callable[[torch.Tensor], torch.Tensor]
#: frame jitter bounds: (rotation in degrees, log-scale per axis, shift in half-sides).
JITTER_LEVELS: dict[str, tuple[float, float, float]] = {
    "none": (0.0, 0.0, 0.0),
    "easy": (10.0, 0.1, 0.1),
    "hard": (22.5, 0.225, 0.225),
}


# ----------------------------------------------------------------------------- geometry


def homography_jacobian(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Jacobians (N, 2, 2) of ``x -> H x`` (dehomogenised) at (N, 2) points."""
    h = np.asarray(h, np.float64)
    points = np.asarray(points, np.float64).reshape(-1, 2)
    proj = np.concatenate([points, np.ones((len(points), 1))], 1) @ h.T
    w = proj[:, 2]
    image = proj[:, :2] / w[:, None]
    # d(u/w)/dx = (H[0, :2] - u/w * H[2, :2]) / w, same for v.
    return (h[None, :2, :2] - image[:, :, None] * h[None, 2:3, :2]) / w[:, None, None]


def transfer_lafs(lafs: torch.Tensor, h: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, N, 2, 3) LAFs of the reference -> LAFs in the image ``H`` maps to, and a (N,) mask
    of the frames whose centre stays in front (positive homogeneous coordinate)."""
    laf = lafs[0].detach().to("cpu", torch.float64).numpy()
    centres = laf[:, :, 2]
    h = np.asarray(h, np.float64)
    proj = np.concatenate([centres, np.ones((len(centres), 1))], 1) @ h.T
    front = proj[:, 2] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        warped = proj[:, :2] / proj[:, 2:]
        jac = homography_jacobian(h, centres)
    out = np.concatenate([jac @ laf[:, :, :2], warped[:, :, None]], axis=2)
    front &= np.isfinite(out).all(axis=(1, 2))
    out[~front] = 0.0
    return torch.from_numpy(out).to(lafs)[None], torch.from_numpy(front)


def sample_jitter(n: int, level: str, rng: np.random.Generator) -> np.ndarray:
    """(n, 2, 3) affine jitters ``[M | d]`` in frame units for a :data:`JITTER_LEVELS` level."""
    if level not in JITTER_LEVELS:
        raise ValueError(f"unknown jitter level {level!r}; expected one of {sorted(JITTER_LEVELS)}")
    rotation, log_scale, shift = JITTER_LEVELS[level]
    t = np.deg2rad(rng.uniform(-rotation, rotation, n))
    scales = np.exp(rng.uniform(-log_scale, log_scale, (n, 2)))
    d = rng.uniform(-shift, shift, (n, 2))
    cos, sin = np.cos(t), np.sin(t)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    return np.concatenate([rot * scales[:, None, :], d[:, :, None]], axis=2)


def apply_jitter(lafs: torch.Tensor, jitter: np.ndarray) -> torch.Tensor:
    """(1, N, 2, 3) LAFs ``[A | c]`` -> ``[A M | c + A d]`` for (N, 2, 3) jitters ``[M | d]``."""
    laf = lafs[0].detach().to("cpu", torch.float64)
    j = torch.from_numpy(np.asarray(jitter, np.float64))
    a = laf[:, :, :2]
    out = torch.cat([a @ j[:, :, :2], laf[:, :, 2:] + a @ j[:, :, 2:]], dim=2)
    return out.to(lafs)[None]


def laf_corners(lafs: torch.Tensor) -> torch.Tensor:
    """The four corners ``c + A (+-1, +-1)`` (N, 4, 2) of the squares (1, N, 2, 3) LAFs cover."""
    signs = lafs.new_tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    return lafs[0, :, None, :, 2] + torch.einsum("nij,kj->nki", lafs[0, :, :, :2], signs)


def lafs_inside(lafs: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(N,) whether each LAF's square lies inside a ``width`` x ``height`` image (pixel centres)."""
    corners = laf_corners(lafs)
    x, y = corners[..., 0], corners[..., 1]
    return ((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)).all(dim=1)


def disk_iou(centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(N, N) intersection over union of the disks of (N, 2) ``centres`` and (N,) ``radii``."""
    c = np.asarray(centres, np.float64)
    r = np.asarray(radii, np.float64)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    r1, r2 = r[:, None], r[None, :]
    area1, area2 = np.pi * r1**2, np.pi * r2**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a1 = np.arccos(np.clip((d**2 + r1**2 - r2**2) / (2 * d * r1), -1, 1))
        a2 = np.arccos(np.clip((d**2 + r2**2 - r1**2) / (2 * d * r2), -1, 1))
        kite = np.sqrt(np.clip((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2), 0, None))
        lens = r1**2 * a1 + r2**2 * a2 - 0.5 * kite
    inter = np.where(d >= r1 + r2, 0.0, np.where(d <= np.abs(r1 - r2), np.minimum(area1, area2), lens))
    return inter / (area1 + area2 - inter)


def suppress_overlaps(
    centres: np.ndarray, radii: np.ndarray, scores: np.ndarray, max_overlap: float = 0.5
) -> np.ndarray:
    """(N,) keep mask: a keypoint is dropped when a stronger one (higher score, then lower
    index) overlaps it with disk IoU above ``max_overlap``."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    stronger = rank[None, :] < rank[:, None]  # [i, j]: j is stronger than i
    return ~((disk_iou(centres, radii) > max_overlap) & stronger).any(axis=1)


# ----------------------------------------------------------------------------- patch pairs


def select_reference_keypoints(
    image: torch.Tensor,
    max_keypoints: int = 500,
    mr_size: float = 12.0,
    dog_options: Mapping[str, Any] | None = None,
    max_overlap: float = 0.5,
    candidate_factor: int = 4,
) -> dict[str, torch.Tensor]:
    """DoG keypoints of a (1, 1, H, W) reference image for patch pairs (see the module doc).

    Returns ``keypoints`` (N, 2), ``scales``, ``oris``, ``scores`` (N,) and ``lafs`` (1, N, 2, 3),
    on CPU, ordered by decreasing score.
    """
    feats = detect_dog(image.cpu(), dog_options, max_keypoints * candidate_factor)
    lafs = keypoints_to_lafs(feats["keypoints"], feats["scales"], feats["oris"], mr_size)
    height, width = image.shape[-2:]
    inside = lafs_inside(lafs, width, height).numpy()
    keep = np.nonzero(inside)[0]
    radii = feats["scales"].numpy()[keep] * mr_size / 2
    keep = keep[suppress_overlaps(feats["keypoints"].numpy()[keep], radii, feats["scores"].numpy()[keep], max_overlap)]
    keep = keep[np.argsort(-feats["scores"].numpy()[keep], kind="stable")[:max_keypoints]]
    index = torch.from_numpy(keep)
    out = {k: v[index] for k, v in feats.items()}
    out["lafs"] = lafs[:, index]
    return out


def cut_target_patches(
    target: torch.Tensor,
    reference_lafs: torch.Tensor,
    h: np.ndarray,
    patch_size: int = PATCH_SIZE,
    jitter: np.ndarray | None = None,
    reference_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (M, 1, P, P) of a (1, 1, H, W) image under the reference LAFs, optionally
    jittered (:func:`apply_jitter`), carried by ``h`` (module doc), and the (M,) indices of
    the reference LAFs kept: frame inside the image and, if ``reference_size`` (width,
    height) is given, the jittered frame also inside the reference image."""
    inside = torch.ones(reference_lafs.shape[1], dtype=torch.bool)
    if jitter is not None:
        reference_lafs = apply_jitter(reference_lafs, jitter)
    if reference_size is not None:
        inside = lafs_inside(reference_lafs, *reference_size)
    lafs, front = transfer_lafs(reference_lafs, h)
    height, width = target.shape[-2:]
    keep = torch.nonzero(inside & front & lafs_inside(lafs, width, height)).flatten()
    if len(keep) == 0:
        return target.new_zeros(0, 1, patch_size, patch_size), keep
    patches = extract_patches_from_pyramid(target, lafs[:, keep].to(target.dtype), PS=patch_size)[0]
    return patches, keep


@dataclass
class PatchPairs:
    """Positive patch pairs of several sequences, ordered by sequence then image pair.

    Target patch ``t`` matches reference patch ``ref_index[t]``; ``pair[t]`` and
    ``sequence[t]`` index ``pair_names`` and ``sequences``; ``groups[s]`` is the reporting
    group of sequence ``s``; ``ref_sequence[r]`` the sequence of reference patch ``r``.
    """

    reference: torch.Tensor
    target: torch.Tensor
    ref_index: np.ndarray
    pair: np.ndarray
    sequence: np.ndarray
    ref_sequence: np.ndarray
    sequences: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    pair_names: list[str] = field(default_factory=list)
    pair_sequence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_positives(self) -> int:
        return len(self.ref_index)

    def group_of_targets(self) -> np.ndarray:
        """(T,) reporting group of each target patch (positive pair)."""
        return np.asarray(self.groups, dtype=object)[self.sequence] if len(self.sequence) else np.zeros(0, object)

    def scene_of_sequences(self) -> np.ndarray:
        """(S,) scene id of each sequence: sequences whose names differ only by the ``i_`` /
        ``v_`` prefix show the same scene (e.g. synthetic sequences made from one photo)."""
        names = [scene_name(n) for n in self.sequences]
        return np.unique(np.asarray(names, dtype=object), return_inverse=True)[1].astype(np.int64)


def scene_name(sequence_name: str) -> str:
    """A sequence's name without its HPatches kind prefix (``i_``, ``v_``)."""
    return sequence_name[2:] if sequence_name[:2] in ("i_", "v_") else sequence_name


def _grey(path) -> torch.Tensor:
    return torch.from_numpy(read_image(path, grayscale=True))[None, None].contiguous()


def detect_references(
    sequences: Sequence[HomographySequence],
    max_keypoints: int = 500,
    mr_size: float = 12.0,
    dog_options: Mapping[str, Any] | None = None,
    max_overlap: float = 0.5,
) -> list[dict[str, torch.Tensor]]:
    """:func:`select_reference_keypoints` of each sequence's reference image (reusable
    across jitter levels through ``build_patch_pairs(references=...)``)."""
    return [
        select_reference_keypoints(_grey(seq.images[0]), max_keypoints, mr_size, dog_options, max_overlap)
        for seq in sequences
    ]


def build_patch_pairs(
    sequences: Sequence[HomographySequence],
    groups: Sequence[str],
    max_keypoints: int = 500,
    mr_size: float = 12.0,
    patch_size: int = PATCH_SIZE,
    dog_options: Mapping[str, Any] | None = None,
    max_overlap: float = 0.5,
    jitter: str = "none",
    seed: int = 0,
    references: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> PatchPairs:
    """Cut the positive patch pairs of every (reference, image k) pair of ``sequences``.

    ``groups[s]`` names the reporting group of sequences of unknown kind (kind ``i``/``v``
    takes precedence). ``jitter`` is a :data:`JITTER_LEVELS` level, drawn with ``seed``.
    ``references`` (from :func:`detect_references` with the same settings) skips the
    detection. Sequences and image pairs without any kept keypoint are kept in the name
    lists but contribute no patch.
    """
    if jitter not in JITTER_LEVELS:
        raise ValueError(f"unknown jitter level {jitter!r}; expected one of {sorted(JITTER_LEVELS)}")
    if len(groups) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(groups)} groups")
    if references is not None and len(references) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(references)} references")
    refs, targets, ref_index, pair, seq_of, ref_seq, pair_names, pair_seq = [], [], [], [], [], [], [], []
    offset = 0
    for s, seq in enumerate(sequences):
        image = _grey(seq.images[0])
        if references is None:
            lafs = select_reference_keypoints(image, max_keypoints, mr_size, dog_options, max_overlap)["lafs"]
        else:
            lafs = references[s]["lafs"]
        if lafs.shape[1]:
            refs.append(extract_patches_from_pyramid(image, lafs, PS=patch_size)[0])
        else:
            refs.append(image.new_zeros(0, 1, patch_size, patch_size))
        ref_seq.append(np.full(lafs.shape[1], s, np.int64))
        for k, h in enumerate(seq.homographies):
            p = len(pair_names)
            pair_names.append(f"{seq.name}/1-{k + 2}")
            pair_seq.append(s)
            noise = None
            if jitter != "none":
                noise = sample_jitter(lafs.shape[1], jitter, np.random.default_rng([seed, s, k]))
            patches, keep = cut_target_patches(
                _grey(seq.images[k + 1]), lafs, h, patch_size, noise, (image.shape[-1], image.shape[-2])
            )
            targets.append(patches)
            ref_index.append(keep.numpy() + offset)
            pair.append(np.full(len(keep), p, np.int64))
            seq_of.append(np.full(len(keep), s, np.int64))
        offset += lafs.shape[1]
    empty = torch.zeros(0, 1, patch_size, patch_size)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return PatchPairs(
        reference=torch.cat(refs) if refs else empty,
        target=torch.cat(targets) if targets else empty,
        ref_index=cat(ref_index).astype(np.int64),
        pair=cat(pair).astype(np.int64),
        sequence=cat(seq_of).astype(np.int64),
        ref_sequence=cat(ref_seq).astype(np.int64),
        sequences=[seq.name for seq in sequences],
        groups=[seq.kind or g for seq, g in zip(sequences, groups)],
        pair_names=pair_names,
        pair_sequence=np.asarray(pair_seq, np.int64),
    )


# ----------------------------------------------------------------------------- protocol


@dataclass
class Protocol:
    """Negatives and retrieval distractors, drawn once and shared by every descriptor.

    Negative ``m`` pairs reference patch ``negative_reference[m]`` with target patch
    ``negative_target[m]``; it was drawn for positive ``negative_of[m]``.
    ``distractors[p]`` are target-patch indices added to the database of image pair ``p``.
    """

    negative_reference: np.ndarray
    negative_target: np.ndarray
    negative_of: np.ndarray
    negative_same_pair: np.ndarray
    distractors: list[np.ndarray]
    seed: int


def _ranges(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and size of each label's block in a sorted label array."""
    sizes = np.bincount(labels, minlength=count).astype(np.int64)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), sizes


def sample_protocol(
    pairs: PatchPairs, seed: int = 0, same_pair_fraction: float = 0.5, num_distractors: int = 1000
) -> Protocol:
    """Draw one negative per positive and the distractors of each image pair (module doc).

    "Other sequence" means another scene (:meth:`PatchPairs.scene_of_sequences`), so that
    a negative or a distractor never shows the query's surface.
    """
    rng = np.random.default_rng(seed)
    n = pairs.num_positives
    pair_start, pair_size = _ranges(pairs.pair, len(pairs.pair_names))
    scene_of_seq = pairs.scene_of_sequences()
    scene = scene_of_seq[pairs.sequence] if n else np.zeros(0, np.int64)
    num_scenes = int(scene_of_seq.max()) + 1 if len(scene_of_seq) else 0
    scene_size = np.bincount(scene, minlength=num_scenes)
    p = pairs.pair
    can_same = pair_size[p] >= 2
    can_other = (n - scene_size[scene]) >= 1
    want_same = rng.random(n) < same_pair_fraction
    same = (want_same & can_same) | (~can_other & can_same)
    valid = can_same | can_other
    # same pair: another position of the pair's block, never the positive itself.
    offset = np.arange(n) - pair_start[p]
    step = 1 + np.floor(rng.random(n) * np.maximum(pair_size[p] - 1, 1)).astype(np.int64)
    target = pair_start[p] + (offset + step) % np.maximum(pair_size[p], 1)
    # other scene: uniform over the target patches of the other scenes.
    pools = [np.nonzero(scene != c)[0] for c in range(num_scenes)]
    for c in range(num_scenes):
        members = np.nonzero((scene == c) & ~same & valid)[0]
        if len(members):
            target[members] = pools[c][rng.integers(len(pools[c]), size=len(members))]
    distractors = []
    for q in range(len(pairs.pair_names)):
        pool = pools[scene_of_seq[pairs.pair_sequence[q]]]
        if len(pool) == 0 or num_distractors <= 0:
            distractors.append(np.zeros(0, np.int64))
            continue
        distractors.append(np.sort(rng.choice(pool, size=min(num_distractors, len(pool)), replace=False)))
    of = np.nonzero(valid)[0]
    return Protocol(
        negative_reference=pairs.ref_index[of],
        negative_target=target[valid].astype(np.int64),
        negative_of=of.astype(np.int64),
        negative_same_pair=same[valid],
        distractors=distractors,
        seed=seed,
    )


# ----------------------------------------------------------------------------- metrics


def fpr_at_recall(positive_distances: np.ndarray, negative_distances: np.ndarray, recall: float = 0.95) -> float:
    """False positive rate at the smallest threshold that accepts ``recall`` of the positives.

    A pair is accepted when its distance is <= the threshold (ties count as accepted).
    """
    pos = np.sort(np.asarray(positive_distances, np.float64))
    neg = np.asarray(negative_distances, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    threshold = pos[max(math.ceil(recall * len(pos) - 1e-9), 1) - 1]
    return float(np.mean(neg <= threshold))


def verification_ap(positive_distances: np.ndarray, negative_distances: np.ndarray) -> float:
    """Average precision of positives ranked by increasing distance among all pairs
    (at equal distance, negatives rank first)."""
    pos = np.asarray(positive_distances, np.float64)
    neg = np.asarray(negative_distances, np.float64)
    if len(pos) == 0:
        return float("nan")
    distances = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    order = np.lexsort((labels, distances))
    hits = labels[order] == 1
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def retrieval_ap(true_distances: np.ndarray, other_distances: np.ndarray) -> np.ndarray:
    """(Q,) AP of queries with one relevant item: ``1 / rank``, with (Q,) distances to it and
    (Q, M) distances to the other items (ties rank before the relevant item; NaN ignored)."""
    true = np.asarray(true_distances, np.float64)
    other = np.asarray(other_distances, np.float64).reshape(len(true), -1)
    return 1.0 / (1.0 + (other <= true[:, None]).sum(axis=1))


@dataclass
class PatchMetrics:
    """Metrics of one descriptor on one reporting group."""

    fpr95: float
    verification_ap: float
    retrieval_map: float
    positives: int
    negatives: int


def evaluate_patch_descriptors(
    pairs: PatchPairs, protocol: Protocol, reference_descriptors: torch.Tensor, target_descriptors: torch.Tensor
) -> dict[str, PatchMetrics]:
    """FPR@95, verification AP and retrieval mAP per reporting group and ``all``.

    ``reference_descriptors`` (R, D) and ``target_descriptors`` (T, D) describe
    ``pairs.reference`` and ``pairs.target``; distances are L2.
    """
    ref = reference_descriptors.detach().to("cpu", torch.float64)
    tgt = target_descriptors.detach().to("cpu", torch.float64)
    if ref.shape[0] != len(pairs.reference) or tgt.shape[0] != len(pairs.target):
        raise ValueError(
            f"descriptors ({ref.shape[0]}, {tgt.shape[0]}) do not match patches "
            f"({len(pairs.reference)}, {len(pairs.target)})"
        )
    positive = (ref[pairs.ref_index] - tgt).norm(dim=1).numpy()
    negative = (ref[protocol.negative_reference] - tgt[protocol.negative_target]).norm(dim=1).numpy()
    ap = np.full(pairs.num_positives, np.nan)
    pair_start, pair_size = _ranges(pairs.pair, len(pairs.pair_names))
    for p in range(len(pairs.pair_names)):
        if pair_size[p] == 0:
            continue
        block = slice(pair_start[p], pair_start[p] + pair_size[p])
        queries = ref[pairs.ref_index[block]]
        database = torch.cat([tgt[block], tgt[protocol.distractors[p]]])
        dist = torch.cdist(queries, database).numpy()
        idx = np.arange(pair_size[p])
        true = dist[idx, idx].copy()
        dist[idx, idx] = np.inf
        ap[block] = retrieval_ap(true, dist)
    group = pairs.group_of_targets()
    negative_group = group[protocol.negative_of]
    out = {}
    for name in [*sorted(set(pairs.groups)), "all"]:
        sel = np.ones(len(group), bool) if name == "all" else group == name
        nsel = np.ones(len(negative_group), bool) if name == "all" else negative_group == name
        if not sel.any():
            continue
        out[name] = PatchMetrics(
            fpr95=fpr_at_recall(positive[sel], negative[nsel]),
            verification_ap=verification_ap(positive[sel], negative[nsel]),
            retrieval_map=float(ap[sel].mean()),
            positives=int(sel.sum()),
            negatives=int(nsel.sum()),
        )
    return out


# ----------------------------------------------------------------------------- descriptors


def sift_describer(rootsift: bool = False, patch_size: int = PATCH_SIZE) -> Describer:
    """kornia's SIFT descriptor of the patches (128-D, L2-normalised; RootSIFT if asked)."""
    sift = SIFTDescriptor(patch_size=patch_size, rootsift=rootsift)
    return lambda patches: sift.to(patches.device)(patches)


def raw_pixel_describer() -> Describer:
    """The patch pixels, zero-mean and unit-norm per patch (L2 distance = sqrt(2 - 2 NCC))."""

    def describe(patches: torch.Tensor) -> torch.Tensor:
        x = patches.flatten(1)
        x = x - x.mean(dim=1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)

    return describe


def network_describer(net: torch.nn.Module) -> Describer:
    """A patch network (e.g. HyNet) in eval mode, fed the [0, 1] patches as the HyNet extractor does."""
    net.eval()
    return lambda patches: net.to(patches.device)(patches)


@torch.inference_mode()
def describe_patches(
    describer: Describer, patches: torch.Tensor, batch_size: int = 1024, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(N, 1, P, P) patches -> (N, D) float32 descriptors on CPU, ``batch_size`` at a time."""
    if patches.shape[0] == 0:
        probe = describer(torch.zeros(1, *patches.shape[1:], device=device))
        return torch.zeros(0, probe.shape[1])
    chunks = [describer(chunk.to(device)).float().cpu() for chunk in patches.split(batch_size)]
    return torch.cat(chunks)

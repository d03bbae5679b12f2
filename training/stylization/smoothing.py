"""Edge-aware smoothing guided by the content image: exact matting-Laplacian solve and guided filter.

Li et al.'s photorealistic smoothing finds the image ``r`` closest to the stylized ``y``
whose local colour model follows the content image ``I``:
``r = argmin Σ_ij w_ij ||r_i/√d_i − r_j/√d_j||² + λ||r − y||²`` with the matting affinity
``w`` of ``I`` (Levin et al.), i.e. the linear system ``(Id + μ D^-½ L D^-½) r = y`` with
``L`` the matting Laplacian, ``D`` its degree (the number of windows holding a pixel) and
``μ = 1/λ``. :func:`matting_smooth` solves it exactly (conjugate gradients to a relative
residual of ``tol``), applying ``L`` without forming it: with windows of radius ``r``
truncated at the border, ``(L p)_i = n_i p_i − (Σ_{k∋i} a_k)·I_i − Σ_{k∋i} b_k`` where
``a_k = (Σ_k + ε/n_k)^-1 (mean_k(I p) − μ_k mean_k(p))`` and ``b_k = mean_k(p) − a_k·μ_k``
(He, Sun and Tang's box-filter form, O(1) per pixel).

:func:`guided_filter` (He et al.) is the one-pass local linear model behind that
Laplacian: the fast approximation used online.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over (2r+1)² windows truncated at the border, of a (B, C, H, W) tensor."""
    if radius <= 0:
        return x
    k = 2 * radius + 1
    rows = F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return F.avg_pool2d(rows, (1, k), stride=1, padding=(0, radius), count_include_pad=False)


def window_counts(shape: tuple[int, int], radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Number of pixels in each truncated (2r+1)² window, (1, 1, H, W)."""
    h, w = shape
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    ch = (ys + radius + 1).clamp(max=h) - (ys - radius).clamp(min=0)
    cw = (xs + radius + 1).clamp(max=w) - (xs - radius).clamp(min=0)
    return (ch[:, None] * cw[None, :]).to(dtype)[None, None]


def _local_inverse(guide: torch.Tensor, radius: int, eps: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Window means of the guide (B, 3, H, W) and inverses of its regularised covariance (B, H, W, 3, 3)."""
    mean = box_mean(guide, radius)
    outer = guide[:, :, None] * guide[:, None]
    b, c, h, w = guide.shape
    second = box_mean(outer.reshape(b, c * c, h, w), radius).reshape(b, c, c, h, w)
    cov = (second - mean[:, :, None] * mean[:, None]).permute(0, 3, 4, 1, 2)
    eye = torch.eye(c, dtype=guide.dtype, device=guide.device)
    if isinstance(eps, torch.Tensor):
        eps = eps.permute(0, 2, 3, 1)[..., None]
    return mean, torch.linalg.inv(cov + eps * eye)


def _local_linear(
    guide: torch.Tensor, src: torch.Tensor, mean_i: torch.Tensor, inv: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients ``a`` (B, C, 3, H, W) and ``b`` (B, C, H, W) of the per-window linear model."""
    mean_p = box_mean(src, radius)
    b_, c, h, w = src.shape
    joint = box_mean((guide[:, None] * src[:, :, None]).reshape(b_, c * 3, h, w), radius).reshape(b_, c, 3, h, w)
    cov_ip = joint - mean_i[:, None] * mean_p[:, :, None]
    a = torch.einsum("bhwij,bcjhw->bcihw", inv, cov_ip)
    return a, mean_p - (a * mean_i[:, None]).sum(2)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int = 8, eps: float = 1e-3) -> torch.Tensor:
    """He et al.'s colour guided filter of ``src`` (B, C, H, W) by ``guide`` (B, 3, H, W)."""
    dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
    guide, src = guide.to(dtype), src.to(dtype)
    mean_i, inv = _local_inverse(guide, radius, eps)
    a, b = _local_linear(guide, src, mean_i, inv, radius)
    a_mean = box_mean(a.flatten(1, 2), radius).reshape(a.shape)
    return (a_mean * guide[:, None]).sum(2) + box_mean(b, radius)


@dataclass
class MattingLaplacian:
    """Matrix-free matting Laplacian of a guide image (B, 3, H, W), windows of radius ``radius``."""

    guide: torch.Tensor
    radius: int = 1
    eps: float = 1e-5

    def __post_init__(self) -> None:
        self.guide = self.guide.double()
        self.counts = window_counts(self.guide.shape[-2:], self.radius, self.guide.dtype, self.guide.device)
        self.mean, self.inv = _local_inverse(self.guide, self.radius, self.eps / self.counts)

    def apply(self, p: torch.Tensor) -> torch.Tensor:
        """``L p`` for ``p`` (B, C, H, W), float64."""
        a, b = _local_linear(self.guide, p, self.mean, self.inv, self.radius)
        n = self.counts
        a_sum = box_mean(a.flatten(1, 2), self.radius).reshape(a.shape) * n[:, :, None]
        b_sum = box_mean(b, self.radius) * n
        return n * p - (a_sum * self.guide[:, None]).sum(2) - b_sum

    def apply_normalized(self, p: torch.Tensor) -> torch.Tensor:
        """``D^-½ L D^-½ p`` with ``D`` the window counts (the affinity's degree)."""
        root = self.counts.sqrt()
        return self.apply(p / root) / root


@dataclass(frozen=True)
class SolveReport:
    """Outcome of :func:`matting_smooth`: iterations and the final relative residual."""

    iterations: int
    residual: float


def matting_smooth(
    guide: torch.Tensor,
    stylized: torch.Tensor,
    mu: float = 100.0,
    radius: int = 1,
    eps: float = 1e-5,
    tol: float = 1e-6,
    max_iter: int = 3000,
) -> tuple[torch.Tensor, SolveReport]:
    """Solve ``(Id + mu D^-½ L D^-½) r = stylized`` exactly by conjugate gradients.

    ``guide`` (B, 3, H, W) is the content image, ``stylized`` (B, C, H, W) the WCT output.
    Stops when every channel's residual is below ``tol`` times its right-hand side;
    returns ``r`` in the dtype of ``stylized`` and a :class:`SolveReport`.
    """
    lap = MattingLaplacian(guide, radius, eps)
    y = stylized.double()

    def op(v: torch.Tensor) -> torch.Tensor:
        return v + mu * lap.apply_normalized(v)

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u * v).sum((-2, -1), keepdim=True)

    x = y.clone()
    res = y - op(x)
    direction = res.clone()
    rr = dot(res, res)
    norm_y = dot(y, y).sqrt().clamp_min(1e-12)
    rel = float((rr.sqrt() / norm_y).max())
    it = 0
    while it < max_iter and rel > tol:
        ad = op(direction)
        step = rr / dot(direction, ad).clamp_min(1e-300)
        x = x + step * direction
        res = res - step * ad
        rr_new = dot(res, res)
        direction = res + (rr_new / rr.clamp_min(1e-300)) * direction
        rr = rr_new
        it += 1
        rel = float((rr.sqrt() / norm_y).max())
    return x.to(stylized.dtype), SolveReport(it, rel)

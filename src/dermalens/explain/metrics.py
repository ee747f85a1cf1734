"""Numbers that say whether a map means something.

- `energy_share`: how much of a map's mass lies in a region (a lesion mask,
  the image centre) -- the "energy-based pointing game" of Score-CAM.
- `spearman_correlation`, `structural_similarity`: how alike two maps are,
  for the model-randomisation check of Adebayo et al. (NeurIPS 2018): maps
  that barely change when the weights are replaced by random ones explain
  the image, not the model.
- `deletion_curve`: the target probability as the most important pixels are
  removed first (Petsiuk et al., RISE, 2018); removed pixels are filled by
  ROAD's noisy linear imputation (Rong et al., ICML 2022, from
  pytorch_grad_cam.metrics.road) so the shape of the hole gives little away.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import torch
from scipy.stats import spearmanr

from ..models.classifier import LesionClassifier, create_classifier

DELETION_FRACTIONS = tuple(np.round(np.linspace(0.0, 0.9, 10), 2))


def centre_mask(shape: tuple[int, int], fraction: float = 0.5) -> np.ndarray:
    """The centred box covering `fraction` of each side (so fraction**2 of the area)."""
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    dy, dx = int(round(height * (1 - fraction) / 2)), int(round(width * (1 - fraction) / 2))
    mask[dy:height - dy, dx:width - dx] = True
    return mask


def energy_share(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's (non-negative) mass inside a boolean region; NaN for an empty map."""
    heatmap = np.maximum(np.asarray(heatmap, dtype=np.float64), 0)
    if heatmap.shape != region.shape:
        raise ValueError(f"map {heatmap.shape} and region {region.shape} differ in shape")
    total = heatmap.sum()
    return float(heatmap[region].sum() / total) if total > 0 else float("nan")


def peak_location(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum. An upsampled coarse map has a flat top; of
    its tied pixels the one nearest to their centroid is taken, not the first in
    memory order (which would always sit on the plateau's top-left edge)."""
    heatmap = np.asarray(heatmap)
    rows, cols = np.nonzero(heatmap >= heatmap.max() - 1e-6 * abs(heatmap.max()))
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def peak_in_region(heatmap: np.ndarray, region: np.ndarray) -> bool:
    """Pointing game: does the map's maximum fall inside the region?"""
    return bool(region[peak_location(heatmap)])


def centred_gaussian_map(shape: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """The no-model baseline: a Gaussian blob at the image centre (sigma = fraction of each side)."""
    height, width = shape
    y = (np.arange(height) - (height - 1) / 2) / (sigma_fraction * height)
    x = (np.arange(width) - (width - 1) / 2) / (sigma_fraction * width)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


def spearman_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps of equal shape; NaN when one of them is constant."""
    a, b = np.ravel(a), np.ravel(b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.shape} vs {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def structural_similarity(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al., 2004) with a Gaussian window, for maps in [0, data_range]."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


def randomised_copy(model: LesionClassifier, seed: int = 0) -> LesionClassifier:
    """The same architecture with freshly initialised weights (full model randomisation)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        random_model = create_classifier(model.config, load_pretrained=False)
    finally:
        torch.random.set_rng_state(state)
    return random_model.to(next(model.parameters()).device).eval()


def importance_order(heatmap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices, most important first; ties (flat CAM plateaus) in random order.

    pytorch-grad-cam's ROAD metrics threshold at percentiles instead, which
    removes a whole plateau at once: a 2x2 Grad-CAM upsampled has only a few
    distinct values, so its curve would jump in steps of a quarter.
    """
    flat = np.ravel(heatmap)
    return np.lexsort((rng.random(flat.size), -flat))


@torch.no_grad()
def deletion_curve(model: torch.nn.Module, input_tensor: torch.Tensor, heatmap: np.ndarray, class_index: int,
                   fractions=DELETION_FRACTIONS, rng: np.random.Generator | None = None,
                   fill: str = "road") -> np.ndarray:
    """Probability of `class_index` after removing the top `fraction` of pixels, for each fraction.

    input_tensor: one preprocessed image (1, 3, S, S); heatmap: (S, S), higher = more important.
    fill: "road" (linear imputation from the kept neighbours, ROAD without its noise, so that curves
    are reproducible) or "mean" (the image's mean colour). A blurred copy is not offered: blurring
    a small bright spot leaves a bright blob, so the "deleted" evidence stays.
    """
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = rng or np.random.default_rng(0)
    image = input_tensor[0].detach().cpu().float()
    height, width = image.shape[-2:]
    if heatmap.shape != (height, width):
        raise ValueError(f"heatmap {heatmap.shape} must be at the model input size {(height, width)}")
    order = importance_order(heatmap, rng)
    if fill not in ("road", "mean"):
        raise ValueError(f"unknown fill {fill!r}; known fills: road, mean")
    mean = image.mean(dim=(1, 2), keepdim=True)
    imputer = NoisyLinearImputer(noise=0.0)
    perturbed = []
    for fraction in fractions:
        keep = np.ones(height * width, dtype=np.float32)
        keep[order[:int(round(fraction * height * width))]] = 0
        keep_t = torch.from_numpy(keep.reshape(height, width))
        if keep.all():
            perturbed.append(image)
        elif fill == "road":
            with warnings.catch_warnings():   # the imputer hands torch tensors to numpy functions
                warnings.filterwarnings("ignore", message="__array_wrap__", category=DeprecationWarning)
                perturbed.append(imputer(image, keep_t))
        else:
            perturbed.append(image * keep_t + mean * (1 - keep_t))
    device = next(model.parameters()).device
    probabilities = torch.softmax(model(torch.stack(perturbed).to(device)).float(), dim=1)
    return probabilities[:, class_index].cpu().numpy()


def curve_area(fractions, values) -> float:
    """Area under a curve over [fractions[0], fractions[-1]], divided by that span (a mean height)."""
    fractions, values = np.asarray(fractions, dtype=np.float64), np.asarray(values, dtype=np.float64)
    return float(np.trapezoid(values, fractions) / (fractions[-1] - fractions[0]))

"""Tissue memberships and the per-modality intensity model of the phantoms (pure maths).

Every normal-tissue contrast is a smooth function of the real SRI24 T1 intensity, so the
template's anatomy and texture carry over to all four modalities:

* three class means (CSF < GM < WM) are estimated with a 1D k-means on the T1 histogram;
* soft memberships are piecewise linear in T1 (they sum to 1 and interpolate the means);
* a modality's relative signal is ``sum_k membership_k * level_k`` (levels relative to WM = 1),
  plus a damped linear continuation below the CSF mean and above the WM mean so the texture of
  the darkest and brightest voxels is not flattened;
* ``t1n`` and ``t1c`` use the T1 itself (divided by the WM mean).

Tumour labels get their own relative level per modality (see :data:`TUMOUR_LEVELS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from scipy import ndimage

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
TISSUES: tuple[str, ...] = ("csf", "gm", "wm")
LABEL_NAMES: Mapping[int, str] = MappingProxyType({1: "NETC", 2: "SNFH", 3: "ET"})

#: Relative normal-tissue levels (WM = 1) of the T2-type modalities. ``t1n``/``t1c`` are not
#: listed: they follow the T1 intensity directly.
TISSUE_LEVELS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "t2w": MappingProxyType({"csf": 2.6, "gm": 1.35, "wm": 1.0}),
        "t2f": MappingProxyType({"csf": 0.35, "gm": 1.25, "wm": 1.0}),
    }
)

#: Relative tumour levels (normal WM = 1) per modality and label name.
TUMOUR_LEVELS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "t1n": MappingProxyType({"NETC": 0.45, "SNFH": 0.75, "ET": 0.80}),
        "t1c": MappingProxyType({"NETC": 0.45, "SNFH": 0.75, "ET": 1.60}),
        "t2w": MappingProxyType({"NETC": 2.30, "SNFH": 2.00, "ET": 1.60}),
        "t2f": MappingProxyType({"NETC": 1.25, "SNFH": 1.90, "ET": 1.50}),
    }
)


def estimate_tissue_means(
    t1_values: np.ndarray, n_bins: int = 256, n_iter: int = 50
) -> tuple[float, float, float]:
    """Estimate CSF, GM and WM mean T1 intensities with a 1D k-means on the histogram.

    Args:
        t1_values: T1 intensities of brain voxels (any shape, all > 0).
        n_bins: number of histogram bins used for the k-means.
        n_iter: maximum number of k-means iterations.

    Returns:
        The three class means in increasing order (CSF, GM, WM).

    Raises:
        ValueError: if fewer than 3 distinct intensities are given.
    """
    values = np.asarray(t1_values, dtype=np.float64).ravel()
    if values.size < 3 or np.unique(values[: min(values.size, 100_000)]).size < 3:
        raise ValueError(f"need >= 3 distinct T1 values to fit 3 classes, got {values.size} values")
    counts, edges = np.histogram(values, bins=n_bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    means = np.percentile(values, [10.0, 50.0, 90.0])
    for _ in range(n_iter):
        assign = np.argmin(np.abs(centres[:, None] - means[None, :]), axis=1)
        new = means.copy()
        for k in range(3):
            weights = counts[assign == k]
            if weights.sum() > 0:
                new[k] = np.average(centres[assign == k], weights=weights)
        if np.allclose(new, means):
            break
        means = new
    means = np.sort(means)
    return float(means[0]), float(means[1]), float(means[2])


def tissue_memberships(t1: np.ndarray, means: tuple[float, float, float]) -> np.ndarray:
    """Soft CSF/GM/WM memberships, piecewise linear in T1 intensity.

    CSF is 1 below the CSF mean and falls to 0 at the GM mean; GM is a triangle peaking at the
    GM mean; WM rises from 0 at the GM mean to 1 at the WM mean. Memberships sum to 1.

    Args:
        t1: T1 intensities, any shape.
        means: (CSF, GM, WM) class means, strictly increasing.

    Returns:
        float32 array of shape ``t1.shape + (3,)``.

    Raises:
        ValueError: if the means are not strictly increasing.
    """
    m_csf, m_gm, m_wm = means
    if not m_csf < m_gm < m_wm:
        raise ValueError(f"tissue means must be strictly increasing, got {means}")
    t = np.asarray(t1, dtype=np.float32)
    csf = np.clip((m_gm - t) / np.float32(m_gm - m_csf), 0.0, 1.0)
    wm = np.clip((t - m_gm) / np.float32(m_wm - m_gm), 0.0, 1.0)
    gm = 1.0 - csf - wm
    return np.stack([csf, gm, wm], axis=-1).astype(np.float32, copy=False)


def normal_tissue_signal(
    t1: np.ndarray,
    memberships: np.ndarray,
    means: tuple[float, float, float],
    levels: tuple[float, float, float] | None,
    tail_gain: float = 0.3,
) -> np.ndarray:
    """Relative (WM = 1) normal-tissue signal of one modality.

    Args:
        t1: T1 intensities, any shape.
        memberships: output of :func:`tissue_memberships` for ``t1``.
        means: (CSF, GM, WM) T1 class means.
        levels: relative (CSF, GM, WM) levels of the modality, or ``None`` for a T1-weighted
            modality whose signal is ``t1 / wm_mean``.
        tail_gain: fraction of the linear continuation kept below the CSF mean and above the
            WM mean (0 flattens the tails, 1 continues the end segments' slopes).

    Returns:
        float32 array of ``t1.shape``, floored at 5 % of the smallest level.

    Raises:
        ValueError: if ``tail_gain`` is outside [0, 1].
    """
    if not 0.0 <= tail_gain <= 1.0:
        raise ValueError(f"tail_gain must be in [0, 1], got {tail_gain}")
    t = np.asarray(t1, dtype=np.float32)
    m_csf, m_gm, m_wm = means
    if levels is None:
        return (t / np.float32(m_wm)).astype(np.float32, copy=False)
    lv = np.asarray(levels, dtype=np.float32)
    signal = memberships @ lv
    slope_low = (lv[1] - lv[0]) / np.float32(m_gm - m_csf)
    slope_high = (lv[2] - lv[1]) / np.float32(m_wm - m_gm)
    signal += np.float32(tail_gain) * (
        slope_low * np.minimum(t - np.float32(m_csf), 0.0)
        + slope_high * np.maximum(t - np.float32(m_wm), 0.0)
    )
    return np.maximum(signal, np.float32(0.05 * lv.min())).astype(np.float32, copy=False)


def polynomial_bias_field(
    coords: np.ndarray, coefficients: np.ndarray, amplitude: float
) -> np.ndarray:
    """Smooth multiplicative bias field from a second-order polynomial.

    Args:
        coords: (N, 3) coordinates already normalised to about [-1, 1].
        coefficients: 9 coefficients of x, y, z, x^2, y^2, z^2, xy, xz, yz.
        amplitude: the field spans ``1 - amplitude .. 1 + amplitude`` over ``coords``.

    Returns:
        float32 array of shape (N,), strictly positive.

    Raises:
        ValueError: on a wrong coefficient count or an amplitude outside [0, 0.9].
    """
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.shape != (9,):
        raise ValueError(f"expected 9 bias coefficients, got shape {coefficients.shape}")
    if not 0.0 <= amplitude <= 0.9:
        raise ValueError(f"bias amplitude must be in [0, 0.9], got {amplitude}")
    c = np.asarray(coords, dtype=np.float32)
    x, y, z = c[:, 0], c[:, 1], c[:, 2]
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    poly = np.zeros(c.shape[0], dtype=np.float32)
    for coef, term in zip(coefficients, terms, strict=True):
        poly += np.float32(coef) * term
    poly -= np.float32(0.5 * (poly.max() + poly.min())) if poly.size else np.float32(0.0)
    peak = float(np.abs(poly).max()) if poly.size else 0.0
    if peak > 0.0:
        poly *= np.float32(amplitude / peak)
    return (1.0 + poly).astype(np.float32, copy=False)


def partial_volume_weights(labels: np.ndarray, sigma_mm: float) -> dict[int, np.ndarray]:
    """Blurred indicator of each tumour label, used to blend intensities across borders.

    Only the intensity maps are blurred; the labels stay hard.

    Args:
        labels: uint8 label array (1 NETC, 2 SNFH, 3 ET).
        sigma_mm: Gaussian sigma in mm (1 mm voxels); 0 keeps hard weights.

    Returns:
        ``{label: float32 weight array}`` for labels 1, 2, 3; weights sum to <= 1.

    Raises:
        ValueError: for a negative sigma.
    """
    if sigma_mm < 0:
        raise ValueError(f"sigma_mm must be >= 0, got {sigma_mm}")
    weights = {}
    for label in LABEL_NAMES:
        indicator = (labels == label).astype(np.float32)
        if sigma_mm > 0 and indicator.any():
            indicator = ndimage.gaussian_filter(indicator, sigma=sigma_mm, mode="nearest")
        weights[label] = indicator
    return weights


def blend_tumour_signal(
    normal: np.ndarray,
    weights: Mapping[int, np.ndarray],
    levels: Mapping[str, float],
    texture: np.ndarray,
    texture_amplitude: float,
    edema_blend: float,
) -> np.ndarray:
    """Relative signal of one modality with the tumour blended in.

    Each label has its own level (relative to WM = 1) modulated by a texture field; the edema
    keeps a fraction ``edema_blend`` of the underlying normal tissue signal.

    Args:
        normal: relative normal-tissue signal of the region.
        weights: output of :func:`partial_volume_weights` for the region.
        levels: ``{"NETC": x, "SNFH": y, "ET": z}`` relative levels of this modality.
        texture: unit-std texture field of the region.
        texture_amplitude: relative std of the within-label texture.
        edema_blend: fraction of normal tissue signal kept inside the edema, in [0, 1].

    Returns:
        float32 relative signal of the region.

    Raises:
        ValueError: if ``edema_blend`` is outside [0, 1] or a label level is missing.
    """
    if not 0.0 <= edema_blend <= 1.0:
        raise ValueError(f"edema_blend must be in [0, 1], got {edema_blend}")
    missing = set(LABEL_NAMES.values()) - set(levels)
    if missing:
        raise ValueError(f"levels lack {sorted(missing)}; got keys {sorted(levels)}")
    modulation = 1.0 + np.float32(texture_amplitude) * texture
    total = np.zeros_like(normal)
    out = np.zeros_like(normal)
    for label, name in LABEL_NAMES.items():
        w = weights[label]
        signal = np.float32(levels[name]) * modulation
        if name == "SNFH":
            signal = (1.0 - np.float32(edema_blend)) * signal + np.float32(edema_blend) * normal
        out += w * signal
        total += w
    out += (1.0 - total) * normal
    return out.astype(np.float32, copy=False)

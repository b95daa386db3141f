"""Intensity: percentile clip, N4 bias-field correction, z-score (MRI), HU window (CT).

Each function works in place on one float32 (Z, Y, X) channel of the cropped canonical grid.
MRI follows the paper's order (section 4): clip at the 1st/99th percentile, N4 on T1 and
T1c, then normalise each channel (``braver.preprocess.case`` runs them in that order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from braver.errors import BraverError

# Percentiles are taken from at most this many foreground voxels (an even subsample); the
# 1st/99th percentile of 2^20 samples is within a few hundredths of a percent of the exact one.
_PERCENTILE_SAMPLES = 1 << 20


def _sample(values: np.ndarray) -> np.ndarray:
    step = max(1, values.size // _PERCENTILE_SAMPLES)
    return values[::step] if step > 1 else values.copy()


def _percentiles(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low``/``high`` percentiles (nearest rank) of ``values`` via one partial sort."""
    sample = _sample(values)
    n = sample.size
    ranks = sorted({int(round(low / 100 * (n - 1))), int(round(high / 100 * (n - 1)))})
    sample.partition(ranks)
    return float(sample[int(round(low / 100 * (n - 1)))]), float(
        sample[int(round(high / 100 * (n - 1)))]
    )


def _mean_std_inplace(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a float32 array, which is overwritten.

    Sums accumulate in float64 through numpy's buffered reduction, so no float64 copy of the
    array is made (``ndarray.std(dtype=float64)`` would make one).
    """
    if values.size == 0:
        return 0.0, 0.0
    mean = float(values.sum(dtype=np.float64)) / values.size
    values -= np.float32(mean)
    np.square(values, out=values)
    return mean, float(np.sqrt(values.sum(dtype=np.float64) / values.size))


def clip_to_percentiles(
    volume: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float], what: str
) -> tuple[float, float, np.ndarray]:
    """Clip ``volume`` in place at the ``percentiles`` of its foreground intensities.

    The paper's first step ("the 1% highest and lowest intensities were removed", section 4).
    Returns ``(low, high, foreground)``: the bounds and the clipped foreground values (a copy,
    ``volume[mask]``), which ``zscore`` can reuse when nothing changes the volume in between.
    ``what`` names the case in the error raised for an empty foreground.
    """
    foreground = volume[mask]
    if foreground.size == 0:
        raise BraverError(f"{what} has no foreground voxels", None, "check that it is not blank")
    low, high = _percentiles(foreground, *percentiles)
    np.clip(foreground, low, high, out=foreground)
    np.clip(volume, low, high, out=volume)
    return low, high, foreground


def zscore(
    volume: np.ndarray,
    mask: np.ndarray,
    outside: np.ndarray,
    foreground: np.ndarray | None = None,
) -> tuple[float, float]:
    """Z-score ``volume`` in place with the mean and deviation of its foreground; 0 outside.

    ``foreground``: ``volume[mask]`` if the caller has it (it is overwritten). Returns the
    mean and standard deviation before normalisation.
    """
    values = volume[mask] if foreground is None else foreground
    mean, std = _mean_std_inplace(values)
    volume -= np.float32(mean)
    volume *= np.float32(1.0 / std if std > 0 else 1.0)
    np.copyto(volume, 0, where=outside)
    return mean, std


def window_ct(
    volume: np.ndarray,
    mask: np.ndarray,
    outside: np.ndarray,
    window: tuple[float, float],
    normalisation: str = "zscore",
) -> dict:
    """Clip one CT channel to the HU ``window``, then scale it to [0, 1] (``"unit"``: the
    window's low end → 0, as air and padding) or z-score it inside the body (``"zscore"``:
    as the brain network's MRI channels were). Voxels outside the body are 0 either way."""
    low, high = window
    np.clip(volume, low, high, out=volume)
    if normalisation == "zscore":
        raw_mean, raw_std = zscore(volume, mask, outside)
        mean, std = 0.0, (1.0 if raw_std > 0 else 0.0)
    else:
        raw_mean, raw_std = _mean_std_inplace(volume[mask])
        volume -= np.float32(low)
        volume *= np.float32(1.0 / (high - low))
        np.copyto(volume, 0, where=outside)
        mean, std = (raw_mean - low) / (high - low), raw_std / (high - low)
    return {
        "channel": "ct",
        "clip_low": low,
        "clip_high": high,
        "normalisation": normalisation,
        "n4": False,
        "raw_mean": raw_mean,
        "raw_std": raw_std,
        "mean": mean,
        "std": std,
    }


def n4_correct(
    volume: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float], shrink: int
) -> np.ndarray:
    """N4 bias-field correction (SimpleITK) of one (Z, Y, X) channel inside ``mask``.

    N4 is fitted on a grid shrunk by ``shrink`` (as the ITK examples do, for speed) and the
    fitted log field is evaluated on the full grid.
    """
    import SimpleITK as sitk

    # one thread: ITK's multi-threaded sums differ in the last bits with the thread count, and
    # a cache must not depend on --workers (each worker process runs one thread anyway)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        positive = volume - min(float(volume[mask].min()), 0.0) + 1.0  # N4 needs values > 0
        image = sitk.GetImageFromArray(positive.astype(np.float32, copy=False))
        image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
        mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_image.CopyInformation(image)
        factors = [shrink if n >= 4 * shrink else 1 for n in image.GetSize()]
        small = sitk.Shrink(image, factors)
        small_mask = sitk.Shrink(mask_image, factors)
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations([50, 50, 30])
        corrector.Execute(small, small_mask)
        log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    corrected = positive / np.exp(log_field, dtype=np.float32)
    return corrected.astype(np.float32, copy=False)


__all__ = ["clip_to_percentiles", "zscore", "window_ct", "n4_correct"]

"""Whole-volume prediction: dense slices through the network, clean-up, original geometry.

The paper's networks are fully convolutional with stride-1 pooling (Havaei et al. 2017, §3.1),
so a zero-padded axial slice of side ``Y + S - 1`` (``S = max(model.input_sizes)``) gives the
logits of all ``Y × X`` pixels in one pass, identical to cutting an ``S × S`` patch around each
pixel. ``predict_volume`` runs batches of such slices, each cropped to the union of its
slices' foreground boxes first (outside it the image is 0 and the answer is background, and
inside it the zero padding reproduces exactly what the full slice would give).

On the CPU, the paper's output layer (a 21×21 convolution from 224 maps to a handful of
classes) is the slowest part of a dense pass: oneDNN's direct kernel runs such a wide, thin
convolution at a fraction of its usual speed. Inside ``predict_volume`` it is computed through
FFTs instead (``SpectralConvolutions``): same values up to float32 rounding (about 1e-5 on
logits of order 10), measured 2–3× faster for that layer and about 1.25× for the whole pass
on 2 busy CPU cores here (see ``bench/inference.py``).

Padding follows the patch convention of ``braver.models.crop_inputs``: a patch of side ``S``
centred on pixel ``c`` covers ``[c - S // 2, c - S // 2 + S)``, so a slice is padded by
``S // 2`` before and ``S - 1 - S // 2`` after (``S // 2`` on both sides for odd sizes).

Length: dense prediction, the raw-case path (predict_case) and whole-volume scoring share the
volume geometry and the label-value bookkeeping; split them when a second user of either appears.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from braver.data.labels import LabelScheme
from braver.errors import BraverError
from braver.metrics import region_scores, worst_hd95_mm
from braver.postprocess import PostprocessOptions, is_organ_scheme, postprocess, resolve_options
from braver.speedups import SpectralConvolutions  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from braver.data.cache import Cache, CachedCase
    from braver.data.formats import Case
    from braver.runs import RunInfo

#: post-processing options: a full ``PostprocessOptions``, or a mapping of changes to the
#: run's (``predict_case``) or the scheme's defaults (``score_cached_case``); None: those
PostprocessArgument = PostprocessOptions | Mapping[str, Any] | None

#: called as ``progress(slices_done, slices_total)`` while a volume is predicted
Progress = Callable[[int, int], None]


def resolve_device(name: str = "auto") -> torch.device:
    """``braver.devices.resolve_device`` as a ``torch.device``."""
    from braver.devices import resolve_device as resolve

    return torch.device(resolve(name))


def default_batch_size(device: str | torch.device) -> int:
    """Slices per forward pass: 4 on CPU (the FFT output layer gains from a few slices at once,
    more did not help: 0.76 s per 170×139 slice at 4 and 8, 1.0 s at 1), 32 on GPU."""
    return 32 if torch.device(device).type == "cuda" else 4


def _foreground_box(foreground: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the True pixels of a (B, Y, X) mask; the mask must hold one."""
    rows = torch.nonzero(foreground.any(dim=(0, 2))).flatten()
    cols = torch.nonzero(foreground.any(dim=(0, 1))).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def predict_volume(
    model: torch.nn.Module,
    image_czyx: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    tta: bool = False,
    progress: Progress | None = None,
    crop_to_foreground: bool = True,
    bf16: bool = False,
    fft: bool | None = None,
) -> np.ndarray:
    """Class probabilities (K, Z, Y, X) float32 of a preprocessed image (C, Z, Y, X).

    Every axial slice goes through the network whole (one pass per batch of slices), cascades
    included (their inputs are centre crops of the padded slice, ``braver.models.crop_inputs``).
    Slices without foreground (all-zero image) are not run and get background probability 1,
    as do pixels outside the foreground box of a batch when ``crop_to_foreground``.
    ``tta`` averages with the left-right flipped slice; ``bf16`` uses bfloat16 autocast on CUDA;
    ``fft`` (default: on the CPU) runs the output layer through FFTs (``SpectralConvolutions``).
    The model is put in eval mode for the call and its mode restored afterwards.
    """
    from braver.models import crop_inputs, input_padding

    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    if not torch.is_tensor(image_czyx):  # a copy: cached images are read-only memory maps
        image_czyx = torch.from_numpy(np.array(image_czyx, dtype=np.float32))
    image = image_czyx.to(device=device, dtype=torch.float32)
    channels, depth, height, width = image.shape
    before, after = input_padding(model)

    foreground = (image != 0).any(dim=0)  # (Z, Y, X)
    slices = torch.nonzero(foreground.any(dim=(1, 2))).flatten().tolist()
    probs = None
    if fft is None:
        fft = device.type == "cpu"
    spectral = (
        SpectralConvolutions((height + before + after, width + before + after))
        if fft
        else nullcontext()
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device, bf16), spectral:
            for start in range(0, len(slices), batch_size):
                index = slices[start : start + batch_size]
                if crop_to_foreground:
                    y0, y1, x0, x1 = _foreground_box(foreground[index])
                else:
                    y0, y1, x0, x1 = 0, height, 0, width
                tile = image[:, index, y0:y1, x0:x1].transpose(0, 1)  # (B, C, h, w)
                batch_probs = _dense_probs(model, tile, before, after, crop_inputs)
                if tta:
                    flipped = _dense_probs(model, tile.flip(-1), before, after, crop_inputs)
                    batch_probs = (batch_probs + flipped.flip(-1)) / 2
                if probs is None:
                    probs = torch.zeros(
                        (batch_probs.shape[1], depth, height, width),
                        dtype=torch.float32,
                        device=device,
                    )
                    probs[0] = 1.0
                probs[:, index, y0:y1, x0:x1] = batch_probs.transpose(0, 1).float()
                if progress is not None:
                    progress(start + len(index), len(slices))
    finally:
        model.train(was_training)
    if probs is None:  # no foreground at all: background everywhere
        probs = torch.zeros((model.num_classes, depth, height, width), dtype=torch.float32)
        probs[0] = 1.0
    return probs.cpu().numpy()


def _dense_probs(model, tile: torch.Tensor, before: int, after: int, crop_inputs) -> torch.Tensor:
    """Softmax over classes of a (B, C, h, w) tile, zero-padded so the output is (B, K, h, w)."""
    padded = torch.nn.functional.pad(tile, (before, after, before, after))
    logits = model(*crop_inputs(model, padded))
    return torch.softmax(logits.float(), dim=1)


# ---------------------------------------------------------------------------------------------
# clean-up


def clean_components(
    classes: np.ndarray,
    scheme: LabelScheme,
    *,
    min_size: int = 0,
    keep_largest: bool | None = None,
) -> np.ndarray:
    """Remove small tumour components; for liver, keep the largest liver component only.

    The paper's clean-up as ``braver.postprocess.postprocess`` options: ``min_size`` is
    ``min_component_voxels``, ``keep_largest`` (default: on for liver) ``largest_component``.
    Returns a new array; the input is not changed.
    """
    if keep_largest is None:
        keep_largest = is_organ_scheme(scheme)
    options = PostprocessOptions(largest_component=keep_largest, min_component_voxels=min_size)
    return postprocess(classes, scheme, options)


def _postprocess(classes, scheme, options, spacing_zyx) -> np.ndarray:
    # the argument named postprocess hides the function in the callers
    return postprocess(classes, scheme, options, spacing_zyx=spacing_zyx)


# ---------------------------------------------------------------------------------------------
# raw cases → NIfTI


@dataclass
class CasePrediction:
    """What ``predict_case`` made of one raw case."""

    case_id: str
    #: class map in the cropped canonical geometry of the preprocessed case (Z, Y, X)
    classes_zyx: np.ndarray
    #: segmentation in the input file's voxel grid with the dataset's label values
    segmentation: np.ndarray
    #: probabilities (X, Y, Z, K) in the file's voxel grid, when asked for
    probabilities: np.ndarray | None
    #: the preprocessed case (image, label if any, meta)
    prepared: object
    written: list[Path] = field(default_factory=list)


def check_compatible(run_info: RunInfo, case: Case) -> LabelScheme:
    """The label scheme to write ``case`` with; errors when the run cannot read the case."""
    if len(case.channels) != len(run_info.channels):
        raise BraverError(
            f"case {case.case_id!r} has {len(case.channels)} channel(s) {list(case.channels)} but "
            f"the run was trained on {len(run_info.channels)} {run_info.channels}",
            case.folder,
            "pass cases of the kind the run was trained on (brain MRI or liver CT)",
        )
    run_scheme = run_info.scheme
    if case.scheme.class_names == run_scheme.class_names:
        return case.scheme  # write the dataset's own label values (e.g. BraTS 2023's 3)
    if case.label is None:
        return run_scheme
    raise BraverError(
        f"case {case.case_id!r} is labelled with {case.scheme.name} classes "
        f"{list(case.scheme.class_names)} but the run predicts {list(run_scheme.class_names)}",
        case.label,
        "evaluate on a dataset with the run's label scheme",
    )


def channel_order(run_info: RunInfo, case: Case) -> list[int]:
    if sorted(case.channels) == sorted(run_info.channels):
        return [list(case.channels).index(c) for c in run_info.channels]
    return list(range(len(case.channels)))


def predict_case(
    model: torch.nn.Module,
    run_info: RunInfo,
    case: Case,
    *,
    out_dir: str | Path | None = None,
    probabilities: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    tta: bool = False,
    postprocess: PostprocessArgument = None,
    progress: Progress | None = None,
) -> CasePrediction:
    """Segment one raw case as the run was trained, back in the input file's geometry.

    Preprocesses with the run's prepare settings, predicts densely, post-processes (the run's
    options, ``braver.postprocess.run_options``, changed by ``postprocess``), and restores the
    class map to the file's voxel grid with the dataset's label values. With
    ``out_dir``, writes ``<case>_seg.nii.gz`` (uint8, the input's affine and shape) and, with
    ``probabilities``, ``<case>_probabilities.nii.gz`` (4-D float32, one volume per class).
    """
    from braver.data.io import save_nifti
    from braver.postprocess import run_options
    from braver.preprocess import PrepareSettings, preprocess_case, restore_to_original

    scheme = check_compatible(run_info, case)
    prepared = preprocess_case(case, PrepareSettings.from_dict(run_info.prepare))
    image = prepared.image[channel_order(run_info, case)]
    probs = predict_volume(
        model, image, device=device, batch_size=batch_size, tta=tta, progress=progress
    )
    classes = _postprocess(
        probs.argmax(axis=0).astype(np.uint8),
        scheme,
        run_options(run_info, postprocess),
        prepared.meta["spacing_zyx"],
    )

    meta = {**prepared.meta, "label_scheme": scheme.to_json()}
    segmentation = restore_to_original(classes, meta)
    restored_probs = restore_to_original(probs, meta, labels=False) if probabilities else None
    result = CasePrediction(case.case_id, classes, segmentation, restored_probs, prepared)
    if out_dir is not None:
        out_dir = Path(out_dir)
        affine = np.asarray(meta["affine"], dtype=np.float64)
        result.written.append(
            save_nifti(segmentation, affine, out_dir / segmentation_name(case.case_id))
        )
        if restored_probs is not None:
            target = out_dir / f"{case.case_id}_probabilities.nii.gz"
            result.written.append(save_nifti(restored_probs, affine, target, dtype=np.float32))
    return result


def segmentation_name(case_id: str) -> str:
    """File name of a case's predicted segmentation."""
    return f"{case_id}_seg.nii.gz"


# ---------------------------------------------------------------------------------------------
# scoring


def display_channel(channels: Sequence[str]) -> int:
    """The channel an overlay shows: FLAIR for brain MRI (tumour is brightest), else the first."""
    lowered = [c.lower() for c in channels]
    return lowered.index("flair") if "flair" in lowered else 0


@dataclass
class ScoredCase:
    """One scored case: its row of scores and what an overlay needs, axial slices first.

    ``classes_zyx``/``truth_zyx`` are class indices and ``image_zyx`` the display channel,
    all on the same (canonical, axial-first) grid; ``image_zyx`` may be None.
    """

    case_id: str
    row: dict
    classes_zyx: np.ndarray
    truth_zyx: np.ndarray
    spacing_zyx: tuple[float, ...]
    image_zyx: np.ndarray | None = None


def score_cached_case(
    model: torch.nn.Module,
    case: CachedCase,
    scheme: LabelScheme,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    tta: bool = False,
    postprocess: PostprocessArgument = None,
    progress: Progress | None = None,
) -> ScoredCase:
    """Predict a cached case densely and score it against its label (see ``region_scores``).

    ``postprocess``: options (``braver.postprocess``) over the scheme's defaults.
    Scored on the cropped canonical grid with the case's spacing; a missed or spurious region
    gets the diagonal of the full (uncropped) canonical volume as HD95. Specificity counts
    the true negatives inside the foreground crop only.
    """
    if not case.has_label:
        raise BraverError(
            f"case {case.case_id!r} has no label to score against",
            case.folder,
            "evaluate on labelled cases",
        )
    probs = predict_volume(
        model, case.image, device=device, batch_size=batch_size, tta=tta, progress=progress
    )
    return score_classes(case, probs.argmax(axis=0).astype(np.uint8), scheme, postprocess)


def score_classes(
    case: CachedCase,
    classes: np.ndarray,
    scheme: LabelScheme,
    postprocess: PostprocessArgument = None,
) -> ScoredCase:
    """Score a predicted class map of a cached case (the argmax of ``predict_volume``, before
    post-processing) as ``score_cached_case`` does: post-processed with ``postprocess`` over
    the scheme's defaults, on the cropped canonical grid."""
    if not case.has_label:
        raise BraverError(
            f"case {case.case_id!r} has no label to score against",
            case.folder,
            "evaluate on labelled cases",
        )
    meta = case.meta
    spacing = tuple(float(s) for s in meta["spacing_zyx"])
    options = resolve_options(scheme, postprocess)
    classes = _postprocess(np.asarray(classes, dtype=np.uint8), scheme, options, spacing)
    truth = np.asarray(case.label)
    # the whole file's diagonal in mm: its own grid and spacing (before any resampling)
    worst = worst_hd95_mm(
        meta.get("canonical_shape_zyx", truth.shape), meta.get("source_spacing_zyx", spacing)
    )
    scores = region_scores(classes, truth, scheme, spacing, worst_hd95=worst)
    channel = display_channel(meta.get("channels", []))
    return ScoredCase(
        case.case_id,
        {"case": case.case_id, **scores},
        classes,
        truth,
        spacing,
        np.asarray(case.image[channel], dtype=np.float32),
    )


def evaluate_cached_cases(
    model: torch.nn.Module,
    cache: Cache,
    case_ids: Sequence[str],
    device: str | torch.device = "cpu",
    *,
    batch_size: int | None = None,
    tta: bool = False,
    postprocess: PostprocessArgument = None,
    on_case: Callable[[ScoredCase], None] | None = None,
    maps: Mapping[str, np.ndarray] | None = None,
) -> list[dict]:
    """Whole-volume dense prediction of cached cases, one row of region scores per case.

    ``postprocess``: options (``braver.postprocess``) over the scheme's defaults.
    Rows are ``{"case": id, "<region>_dice": …, …}`` (see ``braver.metrics.region_scores``);
    ``on_case`` is called with each ``ScoredCase`` (e.g. to draw an overlay or advance a bar).
    ``maps``: class maps this model already predicted (``{case_id: argmax}``, before
    post-processing); those cases are scored without predicting them again.
    """
    scheme = cache.scheme
    maps = maps or {}
    rows = []
    for case_id in case_ids:
        if case_id in maps:
            scored = score_classes(cache.case(case_id), maps[case_id], scheme, postprocess)
        else:
            scored = score_cached_case(
                model,
                cache.case(case_id),
                scheme,
                device=device,
                batch_size=batch_size,
                tta=tta,
                postprocess=postprocess,
            )
        rows.append(scored.row)
        if on_case is not None:
            on_case(scored)
    return rows


def class_maps(
    model: torch.nn.Module,
    cache: Cache,
    case_ids: Sequence[str],
    device: str | torch.device = "cpu",
    *,
    batch_size: int | None = None,
    tta: bool = False,
    maps: Mapping[str, np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    """``(predicted classes, true classes, spacing_zyx)`` of cached labelled cases, before any
    post-processing: what ``braver.postprocess.choose_options`` chooses values on.

    ``maps``: class maps already predicted (``{case_id: argmax}``), used instead of predicting.
    """
    known = maps or {}
    out = []
    for case_id in case_ids:
        case = cache.case(case_id)
        if case_id in known:
            classes = np.asarray(known[case_id], dtype=np.uint8)
        else:
            probs = predict_volume(model, case.image, device=device, batch_size=batch_size, tta=tta)
            classes = probs.argmax(axis=0).astype(np.uint8)
        spacing = tuple(float(s) for s in case.meta["spacing_zyx"])
        out.append((classes, np.asarray(case.label), spacing))
    return out


def canonical_zyx(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """A file-order (X, Y, Z) array turned to the closest canonical RAS grid, as (Z, Y, X).

    Returns the array and its spacing (Z, Y, X) in mm. The same reorientation as the cache's
    (nibabel's closest canonical), without resampling.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    orientation = io_orientation(affine)
    spacing_file = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = spacing_file
    canonical = apply_orientation(data, orientation)
    return canonical.transpose(2, 1, 0), tuple(float(s) for s in spacing[::-1])


def _read_image_channel(case: Case, channel: int) -> np.ndarray:
    from braver.data.io import read_volume

    if case.volume_index is not None:
        data = read_volume(case.images[0], allow_4d=True).data
        return data[..., case.volume_index[channel]] if data.ndim == 4 else data
    return read_volume(case.images[channel]).data


def score_segmentation(
    case: Case,
    segmentation: np.ndarray | str | Path,
    scheme: LabelScheme | None = None,
    *,
    with_image: bool = True,
) -> ScoredCase:
    """Score a segmentation (label values, the file's voxel grid) against the case's label file.

    ``segmentation`` is an array or a NIfTI/MetaImage path (e.g. ``<case>_seg.nii.gz``).
    Scored on the file's grid with its spacing; a missed or spurious region gets the volume's
    diagonal in mm as HD95 (373.13 mm for BraTS). The returned class maps (and the display
    channel when ``with_image``) are turned to canonical (Z, Y, X) for overlays.
    """
    from braver.data.io import read_volume

    scheme = scheme or case.scheme
    if case.label is None:
        raise BraverError(
            f"case {case.case_id!r} has no label to score against",
            case.folder,
            "pass a labelled dataset to --truth/--data",
        )
    truth_volume = read_volume(case.label, label=True)
    source: Path | None = None
    if isinstance(segmentation, (str, Path)):
        source = Path(segmentation)
        if not source.exists():
            raise BraverError(
                f"the prediction of case {case.case_id!r} is missing",
                source,
                "predict every case of the dataset ('braver predict RUN DATA --out DIR') "
                "or score a dataset holding only the predicted cases",
            )
        segmentation = read_volume(source, label=True).data
    if segmentation.shape != truth_volume.data.shape:
        raise BraverError(
            f"the prediction has shape {tuple(segmentation.shape)} but the truth "
            f"{case.label.name} has {tuple(truth_volume.data.shape)}",
            source or case.label,
            "predict from this dataset's images so the segmentation has the input's shape",
        )
    pred = scheme.to_classes(np.asarray(segmentation), source)
    truth = scheme.to_classes(truth_volume.data, case.label)
    scores = region_scores(pred, truth, scheme, truth_volume.spacing)
    affine = truth_volume.affine
    pred_zyx, spacing_zyx = canonical_zyx(pred, affine)
    truth_zyx, _ = canonical_zyx(truth, affine)
    image_zyx = None
    if with_image:
        image = _read_image_channel(case, display_channel(case.channels))
        image_zyx = canonical_zyx(image, affine)[0] if image.shape == truth.shape else None
    return ScoredCase(
        case.case_id, {"case": case.case_id, **scores}, pred_zyx, truth_zyx, spacing_zyx, image_zyx
    )

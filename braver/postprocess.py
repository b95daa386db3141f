"""Anatomy-aware clean-up of a predicted class map (Havaei et al. 2017, section 4).

The paper removes connected components below a size threshold; for the liver, the organ is
one piece and a tumour lies inside it. Four options, each off unless asked for, applied in
this order by ``postprocess(classes, scheme, options)``:

- ``largest_component`` (organ schemes, i.e. liver): only the largest 26-connected component
  of the organ region (liver and tumour together) stays; every other component becomes
  background.
- ``inside_organ_dilation_mm`` (organ schemes): tumour voxels farther than this many mm from
  the organ's liver voxels (their holes filled, slice by slice) become background; ``None``
  is off, ``0`` keeps tumour inside the filled liver only.
- ``min_component_voxels``: 26-connected tumour components (brain: all tumour classes
  together) of fewer voxels become background (brain) or liver (organ schemes).
- ``fill_holes``: holes of the tumour core (brain: pixels enclosed by core in an axial slice)
  become the core's non-enhancing class (necrosis); organ schemes: holes of the organ become
  liver. Holes are filled per axial slice, where a 2-D network draws its rims.

Class maps are (Z, Y, X) class indices (axial slices first, as the cache stores them); every
function returns a new array. Defaults (``DEFAULTS``) are measured on phantom validation cases
with ``bench/quality.py``; a run may record its own (run.json ``extra["postprocess"]``, e.g.
a size learnt by ``select_option`` on its validation cases), which ``run_options`` reads.

Length: the options, the mask operations and the choice of values on validation cases are
one feature; each function is short.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from braver.data.labels import LabelScheme
from braver.errors import BraverError

if TYPE_CHECKING:
    from braver.runs import RunInfo

# components touch across faces, edges and corners (26-connectivity in 3-D)
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class PostprocessOptions:
    """What ``postprocess`` does (see the module docstring); the default does nothing."""

    largest_component: bool = False
    inside_organ_dilation_mm: float | None = None
    min_component_voxels: int = 0
    fill_holes: bool = False

    @classmethod
    def from_dict(
        cls, table: Mapping[str, Any], base: PostprocessOptions | None = None, where: object = None
    ) -> PostprocessOptions:
        """Options from a recipe table or run.json entry; keys left out keep ``base``'s values.

        Unknown keys and values of the wrong type are a ``BraverError`` naming ``where``.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise BraverError(
                f"unknown post-processing option(s) {unknown}",
                where,
                f"use {', '.join(names)}",
            )
        values = asdict(base or cls())
        for key, value in table.items():
            values[key] = _checked(key, value, where)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> PostprocessOptions:
        return replace(self, **{k: _checked(k, v, None) for k, v in changes.items()})


def _checked(key: str, value: Any, where: object) -> Any:
    def bad(expected: str) -> BraverError:
        return BraverError(
            f"post-processing option {key} = {value!r} must be {expected}",
            where,
            f"set {key} to {expected}",
        )

    if key in ("largest_component", "fill_holes"):
        if not isinstance(value, (bool, np.bool_)):
            raise bad("true or false")
        return bool(value)
    if key == "min_component_voxels":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise bad("a whole number of voxels, 0 or more")
        return int(value)
    if key == "inside_organ_dilation_mm":
        if value is None or (isinstance(value, str) and value.lower() in ("none", "off")):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value < 0:
            raise bad("a distance in mm, 0 or more (or none)")
        return float(value)
    return value


#: nothing done
NONE = PostprocessOptions()


def describe(options: PostprocessOptions) -> str:
    """A short description of what the options do, for a terminal line ("none" when nothing)."""
    parts = []
    if options.largest_component:
        parts.append("largest component")
    if options.inside_organ_dilation_mm is not None:
        parts.append(f"tumour within {options.inside_organ_dilation_mm:g} mm of the liver")
    if options.min_component_voxels:
        parts.append(f"components of {options.min_component_voxels}+ voxels")
    if options.fill_holes:
        parts.append("holes filled")
    return ", ".join(parts) or "none"


# Measured with bench/quality.py on the phantom validation cases (runs of a short schedule:
# 6 epochs of 512 tiles, a shared 2-core CPU; mean Dice over the regions, raw → option):
# brain, components below 100 voxels removed: easy 0.7751 → 0.7767 (5 cases), realistic
# 0.3086 → 0.3202 (larger sizes help the realistic set more, up to 0.3463 at 800, and cost
# the easy one 0.12 at 400: a run learns its own, see recipe_options); core holes filled:
# no change on either (±0.0002), so off. Liver (transfer --freeze local, 3 cases): largest
# component 0.4283 → 0.4368, tumour within 8 mm of the liver → 0.4408 (0 mm: 0.4194, the
# tumours at the liver's edge are lost; 4 and 16 mm: 0.4383 and 0.4380); small tumour
# components and filled holes: no change (≤ 0.0002), so off.
#: the options used when neither the run nor the caller says otherwise, per scheme kind
DEFAULTS: dict[str, PostprocessOptions] = {
    "brain": PostprocessOptions(min_component_voxels=100, fill_holes=False),
    "liver": PostprocessOptions(largest_component=True, inside_organ_dilation_mm=8.0),
}

#: sizes tried by ``select_option`` for ``min_component_voxels`` when none are given
MIN_COMPONENT_CANDIDATES = (0, 10, 25, 50, 100, 200, 400, 800, 1600)


def is_organ_scheme(scheme: LabelScheme) -> bool:
    """A scheme with an organ region holding the tumour (liver CT), not a brain scheme."""
    return "liver" in scheme.regions and "liver" in scheme.class_names


def scheme_kind(scheme: LabelScheme) -> str:
    return "liver" if is_organ_scheme(scheme) else "brain"


def resolve_options(
    scheme: LabelScheme,
    options: PostprocessOptions | Mapping[str, Any] | None = None,
    where: object = None,
) -> PostprocessOptions:
    """``None``: the scheme's defaults; a mapping: the defaults with those keys changed."""
    if isinstance(options, PostprocessOptions):
        resolved = options
    else:
        resolved = PostprocessOptions.from_dict(
            options or {}, base=DEFAULTS[scheme_kind(scheme)], where=where
        )
    if not is_organ_scheme(scheme) and resolved.inside_organ_dilation_mm is not None:
        raise BraverError(
            f"inside_organ_dilation_mm applies to organ (liver) schemes, not {scheme.name}",
            where,
            "leave it out of the brain's post-processing options",
        )
    return resolved


def run_options(
    info: RunInfo, overrides: PostprocessOptions | Mapping[str, Any] | None = None
) -> PostprocessOptions:
    """The options a run records (run.json ``extra["postprocess"]``) over the scheme's defaults,
    then ``overrides`` over those (a full ``PostprocessOptions`` replaces them all)."""
    if isinstance(overrides, PostprocessOptions):
        return resolve_options(info.scheme, overrides)
    recorded = (info.extra or {}).get("postprocess") or {}
    options = resolve_options(info.scheme, recorded, where="run.json")
    if overrides:
        options = PostprocessOptions.from_dict(overrides, base=options)
    return resolve_options(info.scheme, options)


# ---------------------------------------------------------------------------------------------
# masks


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty; ties: first)."""
    labels, count = ndimage.label(mask, CONNECTIVITY)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """The voxels of 26-connected components of fewer than ``min_voxels`` voxels."""
    if min_voxels <= 0:
        return np.zeros(mask.shape, dtype=bool)
    labels, count = ndimage.label(mask, CONNECTIVITY)
    if not count:
        return np.zeros(mask.shape, dtype=bool)
    small = np.bincount(labels.ravel()) < min_voxels
    small[0] = False
    return small[labels]


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``mask`` with each axial slice's holes filled (a hole: pixels not 4-connected to the
    slice's border through pixels outside the mask). ``mask`` is (Z, Y, X)."""
    filled = np.array(mask, dtype=bool, copy=True)
    for z in np.flatnonzero(filled.reshape(filled.shape[0], -1).any(axis=1)):
        filled[z] = ndimage.binary_fill_holes(filled[z])
    return filled


def within_distance(
    mask: np.ndarray, distance_mm: float, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Voxels whose centre lies within ``distance_mm`` of a voxel of ``mask`` (the mask itself
    included); Euclidean, in mm with the voxel spacing. An empty mask gives an empty result."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    if distance_mm <= 0:
        return mask.astype(bool, copy=True)
    distance = ndimage.distance_transform_edt(~mask, sampling=np.asarray(spacing_zyx, float))
    return distance <= distance_mm


# ---------------------------------------------------------------------------------------------
# class maps


def postprocess(
    classes: np.ndarray,
    scheme: LabelScheme,
    options: PostprocessOptions | Mapping[str, Any] | None = None,
    *,
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """The class map after the options' clean-up (``None``: the scheme's defaults).

    ``classes`` holds class indices of ``scheme`` on a (Z, Y, X) grid of ``spacing_zyx`` mm
    (used by ``inside_organ_dilation_mm``). Returns a new array; the input is not changed.
    """
    options = resolve_options(scheme, options)
    out = np.array(classes, copy=True)
    if is_organ_scheme(scheme):
        _organ(out, scheme, options, spacing_zyx)
    else:
        _brain(out, scheme, options)
    return out


def _classes_mask(classes: np.ndarray, indices: Iterable[int]) -> np.ndarray:
    return np.isin(classes, list(indices))


def _organ(out: np.ndarray, scheme: LabelScheme, options: PostprocessOptions, spacing) -> None:
    liver = scheme.class_names.index("liver")
    tumour_classes = scheme.region_classes("tumor")
    organ_classes = scheme.region_classes("liver")
    if options.largest_component:
        organ = _classes_mask(out, organ_classes)
        out[organ & ~largest_component(organ)] = 0
    if options.inside_organ_dilation_mm is not None:
        hull = fill_holes_per_slice(out == liver)
        allowed = within_distance(hull, options.inside_organ_dilation_mm, spacing)
        out[_classes_mask(out, tumour_classes) & ~allowed] = 0
    if options.min_component_voxels:
        out[small_components(_classes_mask(out, tumour_classes), options.min_component_voxels)] = (
            liver
        )
    if options.fill_holes:
        organ = _classes_mask(out, organ_classes)
        out[fill_holes_per_slice(organ) & ~organ] = liver


def _brain(out: np.ndarray, scheme: LabelScheme, options: PostprocessOptions) -> None:
    if options.largest_component:
        tumour = out != 0
        out[tumour & ~largest_component(tumour)] = 0
    if options.min_component_voxels:
        out[small_components(out != 0, options.min_component_voxels)] = 0
    if options.fill_holes and "tumor_core" in scheme.regions:
        core_classes = scheme.region_classes("tumor_core")
        core = _classes_mask(out, core_classes)
        out[fill_holes_per_slice(core) & ~core] = core_fill_class(scheme)


def core_fill_class(scheme: LabelScheme) -> int:
    """The class a hole in the tumour core becomes: the first core class that does not enhance
    (necrosis in BraTS, non-enhancing in MSD)."""
    enhancing = (
        set(scheme.region_classes("enhancing_tumor"))
        if "enhancing_tumor" in scheme.regions
        else set()
    )
    return next(c for c in scheme.region_classes("tumor_core") if c not in enhancing)


# ---------------------------------------------------------------------------------------------
# choosing values on validation cases


def region_dice(pred: np.ndarray, truth: np.ndarray, scheme: LabelScheme) -> dict[str, float]:
    """Dice of every region of the scheme (both empty: 1, as ``braver.metrics``)."""
    scores = {}
    for region in scheme.regions:
        indices = scheme.region_classes(region)
        a, b = _classes_mask(pred, indices), _classes_mask(truth, indices)
        tp = int(np.count_nonzero(a & b))
        total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
        scores[f"{region}_dice"] = 2 * tp / total if total else 1.0
    return scores


def select_option(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    scheme: LabelScheme,
    name: str = "min_component_voxels",
    candidates: Sequence[Any] | None = None,
    base: PostprocessOptions | Mapping[str, Any] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """The candidate value of option ``name`` with the highest mean validation Dice.

    ``cases`` are ``(predicted classes, true classes, spacing_zyx)`` of validation cases, the
    prediction before post-processing; each candidate is applied on top of ``base`` (default:
    the scheme's defaults). The score is the Dice averaged over the scheme's regions and the
    cases; on a tie the first candidate wins (list the gentlest first). Returns the value and
    one row per candidate (``{name: value, "mean_dice": …, "<region>_dice": …}``).
    """
    if not cases:
        raise BraverError(
            f"no validation cases to choose {name} on", None, "give at least one labelled case"
        )
    if candidates is None:
        if name != "min_component_voxels":
            raise BraverError(f"give the candidate values of {name} to choose from")
        candidates = MIN_COMPONENT_CANDIDATES
    base = resolve_options(scheme, base)
    rows = []
    for value in candidates:
        options = resolve_options(scheme, base.replace(**{name: value}))
        totals: dict[str, float] = {}
        for pred, truth, spacing in cases:
            cleaned = postprocess(pred, scheme, options, spacing_zyx=spacing)
            for key, dice in region_dice(cleaned, truth, scheme).items():
                totals[key] = totals.get(key, 0.0) + dice / len(cases)
        rows.append({name: value, "mean_dice": float(np.mean(list(totals.values()))), **totals})
    best = max(range(len(rows)), key=lambda i: (rows[i]["mean_dice"], -i))
    return candidates[best], rows


#: what ``choose_options`` tries by default, per scheme kind, in this order
CANDIDATES: dict[str, dict[str, tuple[Any, ...]]] = {
    "brain": {
        "min_component_voxels": MIN_COMPONENT_CANDIDATES,
        "fill_holes": (False, True),
    },
    "liver": {
        "largest_component": (False, True),
        "inside_organ_dilation_mm": (None, 0.0, 4.0, 8.0, 16.0),
        "min_component_voxels": (0, 3, 5, 10, 20, 50),
        "fill_holes": (False, True),
    },
}


def choose_options(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    scheme: LabelScheme,
    candidates: Mapping[str, Sequence[Any]] | None = None,
    base: PostprocessOptions | Mapping[str, Any] | None = None,
) -> tuple[PostprocessOptions, dict[str, list[dict[str, Any]]]]:
    """Options chosen one after the other on validation cases (``select_option`` each).

    ``candidates`` maps option names to the values to try, in the order they are chosen
    (default: ``CANDIDATES`` of the scheme's kind); each is chosen with the ones before it
    applied. ``base`` holds the options not chosen (default: the scheme's defaults; pass
    ``NONE`` to start from nothing). Returns the options and each option's table of rows.
    """
    options = resolve_options(scheme, base)
    tables = {}
    for name, values in (candidates or CANDIDATES[scheme_kind(scheme)]).items():
        best, rows = select_option(cases, scheme, name, values, base=options)
        options = options.replace(**{name: best})
        tables[name] = rows
    return options, tables


#: the value of a recipe key whose value is chosen on the validation cases
AUTO = "auto"


def recipe_options(
    table: Mapping[str, Any] | None,
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    scheme: LabelScheme,
    where: object = None,
) -> tuple[PostprocessOptions, dict[str, list[dict[str, Any]]]]:
    """A recipe's ``[postprocess]`` table made concrete for a run.

    Keys set to ``"auto"`` are chosen on ``cases`` (the validation cases' ``class_maps``) in
    the order of ``CANDIDATES`` with its values, on top of the other keys over the scheme's
    defaults; with no ``"auto"`` key ``cases`` are not used. Returns the options (what the run
    records in run.json ``extra["postprocess"]``) and the tables of the choices.
    """
    table = dict(table or {})
    auto = [key for key, value in table.items() if isinstance(value, str) and value == AUTO]
    fixed = {key: value for key, value in table.items() if key not in auto}
    base = resolve_options(scheme, fixed, where=where)
    names = [f.name for f in fields(PostprocessOptions)]
    unknown = sorted(set(auto) - set(names))
    if unknown:
        raise BraverError(
            f"unknown post-processing option(s) {unknown}", where, f"use {', '.join(names)}"
        )
    if not auto:
        return base, {}
    order = CANDIDATES[scheme_kind(scheme)]
    candidates = {name: order[name] for name in order if name in auto}
    missing = sorted(set(auto) - set(candidates))
    if missing:
        raise BraverError(
            f"post-processing option {missing[0]} cannot be chosen automatically for {scheme.name}",
            where,
            f"set {missing[0]} to a value, or 'auto' only {', '.join(order)}",
        )
    return choose_options(cases, scheme, candidates, base=base)

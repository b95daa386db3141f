"""Reading and writing volumes: NIfTI through nibabel, MetaImage (.mha) through SimpleITK.

Every reader returns the array in the file's own voxel order, spatial axes first
(``(X, Y, Z)`` or ``(X, Y, Z, T)``), with a 4x4 voxel-to-world affine in RAS+ millimetres as
nibabel defines it. For MetaImage the ITK index order (i, j, k) is used as (X, Y, Z) and the
LPS world of ITK is turned into RAS. Every way a file can be unreadable becomes a
``BraverError`` that names the file and says what to do.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from braver.errors import BraverError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MHA_SUFFIXES = (".mha", ".mhd")

# ITK physical space is LPS; nibabel's affines map to RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """One image file: ``data`` in file voxel order (spatial axes first) and its affine."""

    path: Path
    data: np.ndarray
    affine: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along the file's X, Y, Z axes (mm)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_metaimage(path: Path) -> bool:
    return path.name.lower().endswith(MHA_SUFFIXES)


def strip_suffix(name: str) -> str:
    """File name without its image suffix (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``)."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES + MHA_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _unreadable(path: Path, error: BaseException) -> BraverError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return BraverError(
        f"could not be read ({reason})",
        path,
        "the file is corrupt or truncated; download or export it again",
    )


def read_header_shape(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of an image file without reading its voxels."""
    path = Path(path)
    if is_metaimage(path):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise _unreadable(path, error) from None
        shape = tuple(int(s) for s in reader.GetSize())
        if reader.GetNumberOfComponents() > 1:
            shape = (*shape, reader.GetNumberOfComponents())
        return shape, _itk_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise BraverError("does not exist", path, "check the path") from None
    except Exception as error:  # nibabel raises many types for a damaged header
        raise _unreadable(path, error) from None
    return tuple(int(s) for s in image.shape), np.asarray(image.affine, dtype=np.float64)


def read_volume(path: str | Path, *, allow_4d: bool = False, label: bool = False) -> Volume:
    """Read one image file; checks that it is 3D (or 4D when ``allow_4d``) and finite.

    Intensities keep the file's dtype where it is an integer type without scaling (int16 MRI
    and CT stay int16, which halves memory); scaled or float data becomes float32. A trailing
    axis of length 1 is dropped (some tools write ``(X, Y, Z, 1)``).
    """
    path = Path(path)
    if not path.exists():
        raise BraverError("does not exist", path, "check the path or the dataset layout")
    if is_metaimage(path):
        data, affine = _read_metaimage(path)
    elif is_nifti(path):
        data, affine = _read_nifti(path)
    else:
        raise BraverError(
            "is not a NIfTI (.nii, .nii.gz) or MetaImage (.mha) file",
            path,
            "convert it to NIfTI",
        )
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    max_dims = 4 if allow_4d else 3
    if data.ndim < 3 or data.ndim > max_dims:
        expected = "3D or 4D" if allow_4d else "3D"
        raise BraverError(
            f"is a {data.ndim}D image of shape {tuple(data.shape)}; braver expects a {expected} volume",
            path,
            "give one 3D volume per modality (a 2D slice or a 5D file cannot be used)",
        )
    if label:
        data = _integer_labels(data, path)
    elif data.dtype.kind == "f":
        _check_finite(data, path)
    return Volume(path, data, affine)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        proxy = image.dataobj
        scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
        raw_dtype = image.get_data_dtype()
        if raw_dtype.kind in "iub" and not scaled:
            data = np.asanyarray(proxy)
        else:
            data = np.asarray(proxy, dtype=np.float32)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as error:
        raise _unreadable(path, error) from None
    except Exception as error:  # nibabel.filebasedimages.ImageFileError and friends
        raise _unreadable(path, error) from None
    return data, np.asarray(image.affine, dtype=np.float64)


def _read_metaimage(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise _unreadable(path, error) from None
    array = sitk.GetArrayFromImage(image)  # (k, j, i[, components])
    spatial = image.GetDimension()
    axes = tuple(reversed(range(spatial))) + tuple(range(spatial, array.ndim))
    data = np.ascontiguousarray(array.transpose(axes))  # (i, j, k[, components])
    if data.dtype.kind == "f" and data.dtype != np.float32:
        data = data.astype(np.float32)
    if spatial != 3:
        return data, np.eye(4)
    return data, _itk_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())


def _itk_affine(direction, spacing, origin) -> np.ndarray:
    dim = len(spacing)
    if dim != 3:
        return np.eye(4)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing)
    affine[:3, 3] = origin
    return _LPS_TO_RAS @ affine


def _check_finite(data: np.ndarray, path: Path) -> None:
    # np.isfinite on the sum is one cheap pass; only on failure look for what is wrong
    if np.isfinite(data.sum(dtype=np.float64)):
        return
    finite = np.isfinite(data)
    if finite.all():  # the sum overflowed, the values are fine
        return
    bad = int(data.size - np.count_nonzero(finite))
    kinds = []
    if np.isnan(data).any():
        kinds.append("NaN")
    if np.isinf(data).any():
        kinds.append("infinite")
    raise BraverError(
        f"has {bad} {' and '.join(kinds)} intensities",
        path,
        "the export went wrong; re-export the volume or replace those voxels before preparing",
    )


def _integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind in "iub":
        return data
    _check_finite(data, path)
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise BraverError(
            "has non-integer label values; a segmentation must hold class values such as 0, 1, 2",
            path,
            "check that this is the segmentation file and not an image",
        )
    return rounded.astype(np.int16)


def save_nifti(data: np.ndarray, affine: np.ndarray, target: str | Path, *, dtype=None) -> Path:
    """Write ``data`` (file voxel order) with ``affine`` to ``target`` atomically."""
    import nibabel as nib

    from braver.atomic import atomic_path

    array = np.asarray(data if dtype is None else data.astype(dtype, copy=False))
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.header.set_data_dtype(array.dtype)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    with atomic_path(target) as tmp:
        nib.save(image, str(tmp))
    return Path(target)


def save_metaimage(data: np.ndarray, affine: np.ndarray, target: str | Path) -> Path:
    """Write a 3D ``data`` (i, j, k) to a MetaImage file with the geometry of ``affine``."""
    import SimpleITK as sitk

    from braver.atomic import atomic_path

    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(target)


def save_like(data: np.ndarray, affine: np.ndarray, target: str | Path) -> Path:
    """Write to NIfTI or MetaImage according to the suffix of ``target``."""
    if is_metaimage(Path(target)):
        return save_metaimage(data, affine, target)
    return save_nifti(data, affine, target)

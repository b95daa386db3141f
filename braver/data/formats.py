"""Dataset layouts on disk → cases: which files hold which modality and which hold the labels.

Supported layouts (``format`` names as used by ``--format``):

``brats2021``  BraTS 2018-2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (labels 0,1,2,4);
               also HGG/LGG sub-folders (2018/2019) and the braver brain phantoms.
``brats2023``  BraTS 2023: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (enhancing = 3).
``brats2013``  BRATS 2013/2015 MetaImage: ``<case>/VSD.Brain.XX.O.MR_{T1,T1c,T2,Flair}.<id>/…mha``
               and the truth ``VSD.Brain_3more.XX.XX.OT.<id>/…mha`` (labels 0-4), e.g.
               ``Image_Data/HG/0001/…``; the .mha files may also lie in the case folder itself.
``msd-brain``  Medical Segmentation Decathlon Task01_BrainTumour: 4D ``imagesTr/BRATS_001.nii.gz``,
               ``labelsTr/BRATS_001.nii.gz``; channel order and labels from ``dataset.json``.
``msd-liver``  MSD Task03_Liver: ``imagesTr/liver_0.nii.gz``, ``labelsTr/liver_0.nii.gz``.
``lits``       LiTS 2017: ``volume-N.nii`` / ``segmentation-N.nii``, possibly spread over batch
               sub-folders (``Training Batch 1/``, ``Training Batch 2/``).

Brain cases always list their channels as T1, T1c, T2, FLAIR (``"t1", "t1c", "t2", "flair"``),
CT cases as ``"ct"``. A case without a label file is allowed (for prediction). Hidden files
(``.*``, including the ``._*`` files of macOS archives shipped with MSD) are ignored.

Length: one small class per dataset layout, declarative; the layouts are the long part.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from braver.data.io import is_metaimage, is_nifti, strip_suffix
from braver.data.labels import BRATS_2013, BRATS_2021, BRATS_2023, LIVER, MSD_BRAIN, LabelScheme
from braver.errors import BraverError

BRAIN_CHANNELS = ("t1", "t1c", "t2", "flair")
CT_CHANNELS = ("ct",)
FORMATS = ("brats2021", "brats2023", "brats2013", "msd-brain", "msd-liver", "lits")


@dataclass(frozen=True)
class Case:
    """One case: the image file(s) per channel, the label file (or None), and the layout.

    ``images`` holds one path per channel, except for 4D files (MSD): then one path, and
    ``volume_index[i]`` is the volume of that file holding ``channels[i]``.
    """

    case_id: str
    images: tuple[Path, ...]
    channels: tuple[str, ...]
    label: Path | None
    format: str
    scheme: LabelScheme
    modality: str  # "mri" | "ct"
    volume_index: tuple[int, ...] | None = None
    #: channels whose file the dataset ships already N4-corrected (BRATS 2013 ``_N4ITK.mha``
    #: when it is the only file of its modality): preprocessing does not correct them again
    n4_corrected: tuple[str, ...] = ()
    #: what the layout chose for this case that a user should hear about (one sentence each)
    notes: tuple[str, ...] = ()

    @property
    def has_label(self) -> bool:
        return self.label is not None

    @property
    def source_files(self) -> list[Path]:
        """Every file the case is read from (images, then the label), without repeats."""
        files = list(dict.fromkeys(self.images))
        return files + ([self.label] if self.label is not None else [])

    @property
    def folder(self) -> Path:
        """The folder of the first image (what error messages point at)."""
        return self.images[0].parent


@dataclass
class Dataset:
    """A discovered dataset: its layout and cases in a stable (natural) order."""

    root: Path
    format: str
    cases: list[Case]
    scheme: LabelScheme
    channels: tuple[str, ...]
    modality: str

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def notes(self) -> list[str]:
        """Every case's notes (what the layout chose, e.g. which of two files it reads)."""
        return [note for case in self.cases for note in case.notes]

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise BraverError(
            f"has no case {case_id!r}", self.root, f"choose one of {self.case_ids[:5]} …"
        )


# --------------------------------------------------------------------------------------------
# Listing files


@dataclass
class _Listing:
    """Image files (and dataset.json files) below a root, hidden files skipped."""

    root: Path
    images: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)

    @classmethod
    def scan(cls, root: Path) -> _Listing:
        listing = cls(root)
        if root.is_file():
            (listing.images if _is_image(root) else listing.others).append(root)
            return listing
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(folder) / name
                (listing.images if _is_image(path) else listing.others).append(path)
        return listing


def _is_image(path: Path) -> bool:
    return is_nifti(path) or is_metaimage(path)


def natural_key(text: str) -> list:
    """Sort key that orders ``case_2`` before ``case_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------------------------
# Layouts: one small class per format; ``match`` counts the files it recognises, ``cases``
# builds the cases (raising BraverError for an incomplete case).


class Layout:
    name: str = ""
    scheme: LabelScheme = BRATS_2021
    channels: tuple[str, ...] = BRAIN_CHANNELS
    modality: str = "mri"
    example: str = ""

    def match(self, listing: _Listing) -> int:
        """How many files of ``listing`` look like this layout (0: not this layout)."""
        raise NotImplementedError

    def cases(self, listing: _Listing) -> list[Case]:
        raise NotImplementedError

    def _case(
        self, case_id, images, label, volume_index=None, scheme=None, n4_corrected=(), notes=()
    ) -> Case:
        return Case(
            case_id=case_id,
            images=tuple(images),
            channels=self.channels,
            label=label,
            format=self.name,
            scheme=scheme or self.scheme,
            modality=self.modality,
            volume_index=volume_index,
            n4_corrected=tuple(n4_corrected),
            notes=tuple(notes),
        )


class SuffixLayout(Layout):
    """``<case><sep><key>.nii[.gz]`` per modality, all files of a case in one folder (BraTS)."""

    sep = "_"
    keys: dict[str, str] = {}  # file key → channel
    label_key = "seg"

    def _parse(self, path: Path) -> tuple[str, str] | None:
        if not is_nifti(path):
            return None
        stem = strip_suffix(path.name)
        if self.sep not in stem:
            return None
        prefix, key = stem.rsplit(self.sep, 1)
        key = key.lower()
        if key in self.keys or key == self.label_key:
            return prefix, key
        return None

    def match(self, listing: _Listing) -> int:
        return sum(
            1 for p in listing.images if (m := self._parse(p)) is not None and m[1] in self.keys
        )

    def cases(self, listing: _Listing) -> list[Case]:
        groups: dict[tuple[Path, str], dict[str, Path]] = defaultdict(dict)
        for path in listing.images:
            parsed = self._parse(path)
            if parsed is not None:
                groups[(path.parent, parsed[0])][parsed[1]] = path
        by_channel = {channel: key for key, channel in self.keys.items()}
        cases = []
        for (folder, prefix), files in groups.items():
            modality_files = [k for k in files if k != self.label_key]
            if not modality_files:
                raise BraverError(
                    f"holds a label file ({files[self.label_key].name}) but no images",
                    folder,
                    f"add the images named like {prefix}{self.sep}{next(iter(self.keys))}.nii.gz "
                    "or remove the folder",
                )
            images = []
            for channel in self.channels:
                key = by_channel[channel]
                if key not in files:
                    present = next(iter(files.values()))
                    suffix = present.name[len(strip_suffix(present.name)) :]
                    raise BraverError(
                        f"case {prefix} is missing its {channel.upper()} image "
                        f"({prefix}{self.sep}{key}{suffix})",
                        folder,
                        "add the file, or move the incomplete case out of the dataset folder",
                    )
                images.append(files[key])
            cases.append(self._case(prefix, images, files.get(self.label_key)))
        return cases


class BraTS2021(SuffixLayout):
    name = "brats2021"
    scheme = BRATS_2021
    sep = "_"
    keys = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}
    example = "<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz"


class BraTS2023(SuffixLayout):
    name = "brats2023"
    scheme = BRATS_2023
    sep = "-"
    keys = {"t1n": "t1", "t1c": "t1c", "t2w": "t2", "t2f": "flair"}
    example = "<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz"


class BraTS2013(Layout):
    """BRATS 2013 / 2015 MetaImage files, one sub-folder (or file) per modality and the truth.

    The challenge shipped some modalities twice, raw and N4-corrected (``…_N4ITK.mha``). With
    both present, the raw file is read and the case carries a note saying so: braver applies
    N4 itself, after the 1% clip, as the paper orders it (section 4). With only the
    ``_N4ITK`` file, that file is read and the channel is listed in ``Case.n4_corrected``, so
    preprocessing does not correct it a second time.
    """

    name = "brats2013"
    scheme = BRATS_2013
    example = "<case>/VSD.Brain.XX.O.MR_{T1,T1c,T2,Flair}.<id>/….mha + VSD.Brain_3more.XX.XX.OT.<id>/….mha"
    _modality = re.compile(r"(?:^|\.)MR_(T1c|T1|T2|Flair)(?:\.|$)", re.IGNORECASE)
    _truth = re.compile(r"(?:^|\.)OT(?:\.|$)")
    _n4itk = re.compile(r"[._]N4ITK(?=[._]|$)", re.IGNORECASE)
    _channel = {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "flair"}
    _names = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "Flair"}

    def _parse(self, path: Path) -> tuple[str, bool] | None:
        """(channel or "label", whether the file is the challenge's N4ITK-corrected one)."""
        if not is_metaimage(path):
            return None
        stem = strip_suffix(path.name)
        corrected = self._n4itk.search(stem) is not None
        stem = self._n4itk.sub("", stem)
        if m := self._modality.search(stem):
            return self._channel[m.group(1).lower()], corrected
        if self._truth.search(stem) and not corrected:
            return "label", False
        return None

    @staticmethod
    def _case_folder(path: Path) -> Path:
        # VSD.Brain.XX.O.MR_T1.54513/VSD.Brain.XX.O.MR_T1.54513.mha → the folder above
        return path.parent.parent if path.parent.name.startswith("VSD.") else path.parent

    def match(self, listing: _Listing) -> int:
        return sum(
            1 for p in listing.images if (m := self._parse(p)) is not None and m[0] != "label"
        )

    def cases(self, listing: _Listing) -> list[Case]:
        # folder → (kind, N4ITK?) → file
        groups: dict[Path, dict[tuple[str, bool], Path]] = defaultdict(dict)
        for path in listing.images:
            parsed = self._parse(path)
            if parsed is None:
                continue
            folder = self._case_folder(path)
            if parsed in groups[folder]:
                kind = parsed[0] + (" N4ITK" if parsed[1] else "")
                raise BraverError(
                    f"holds two {kind} files ({groups[folder][parsed].name} and {path.name})",
                    folder,
                    "keep one file per modality in each case folder",
                )
            groups[folder][parsed] = path
        ids = _unique_ids(list(groups), listing.root)
        cases = []
        for folder, files in groups.items():
            images, corrected, notes = [], [], []
            for channel in self.channels:
                raw, n4itk = files.get((channel, False)), files.get((channel, True))
                name = self._names[channel]
                if raw is None and n4itk is None:
                    raise BraverError(
                        f"is missing its {channel.upper()} image (VSD.Brain.XX.O.MR_{name}.<id>.mha)",
                        folder,
                        "add the file, or move the incomplete case out of the dataset folder",
                    )
                if raw is not None and n4itk is not None:
                    notes.append(
                        f"{ids[folder]}: {name} is there raw ({raw.name}) and N4-corrected "
                        f"({n4itk.name}); reading the raw file, which braver N4-corrects "
                        "after the clip as the paper does"
                    )
                elif raw is None:
                    corrected.append(channel)
                    notes.append(
                        f"{ids[folder]}: {name} is there only N4-corrected ({n4itk.name}); "
                        "reading it without a second N4"
                    )
                images.append(raw if raw is not None else n4itk)
            label = files.get(("label", False))
            cases.append(
                self._case(ids[folder], images, label, n4_corrected=corrected, notes=notes)
            )
        return cases


class LiTS(Layout):
    name = "lits"
    scheme = LIVER
    channels = CT_CHANNELS
    modality = "ct"
    example = "volume-N.nii + segmentation-N.nii (optionally in batch sub-folders)"
    _volume = re.compile(r"^volume-(\d+)$")
    _label = re.compile(r"^segmentation-(\d+)$")

    def _parse(self, path: Path) -> tuple[str, int] | None:
        if not is_nifti(path):
            return None
        stem = strip_suffix(path.name)
        if m := self._volume.match(stem):
            return "volume", int(m.group(1))
        if m := self._label.match(stem):
            return "label", int(m.group(1))
        return None

    def match(self, listing: _Listing) -> int:
        return sum(1 for p in listing.images if (m := self._parse(p)) and m[0] == "volume")

    def cases(self, listing: _Listing) -> list[Case]:
        found: dict[str, dict[int, Path]] = {"volume": {}, "label": {}}
        for path in listing.images:
            parsed = self._parse(path)
            if parsed is None:
                continue
            kind, number = parsed
            if number in found[kind]:
                raise BraverError(
                    f"is a second copy of {path.name} (the first is {found[kind][number]})",
                    path,
                    "keep one copy of each volume in the dataset folder",
                )
            found[kind][number] = path
        for number, path in found["label"].items():
            if number not in found["volume"]:
                raise BraverError(
                    f"has no matching volume-{number} file",
                    path,
                    "add the volume or remove the segmentation",
                )
        return [
            self._case(f"volume-{n}", [path], found["label"].get(n))
            for n, path in found["volume"].items()
        ]


class MSD(Layout):
    """Medical Segmentation Decathlon task folder: dataset.json, imagesTr/, labelsTr/."""

    task_modality = "mri"

    def _task_folder(self, listing: _Listing) -> Path | None:
        for candidate in (listing.root, *sorted(p.parent for p in listing.others)):
            if (candidate / "dataset.json").is_file() and (candidate / "imagesTr").is_dir():
                return candidate
        return None

    def _read_json(self, folder: Path) -> dict:
        path = folder / "dataset.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise BraverError(
                f"could not be read as JSON ({error})",
                path,
                "restore the dataset.json that came with the Decathlon task",
            ) from None

    @staticmethod
    def _json_modality(meta: dict) -> str:
        names = [str(v).lower() for v in meta.get("modality", {}).values()]
        return "ct" if names == ["ct"] else "mri"

    def match(self, listing: _Listing) -> int:
        folder = self._task_folder(listing)
        if folder is None:
            return 0
        if self._json_modality(self._read_json(folder)) != self.modality:
            return 0
        return sum(1 for p in listing.images if p.parent == folder / "imagesTr")

    def cases(self, listing: _Listing) -> list[Case]:
        folder = self._task_folder(listing)
        if folder is None:
            raise BraverError(
                "has no dataset.json beside an imagesTr folder; the Decathlon layout needs both "
                "(dataset.json gives the channel order and labels)",
                listing.root,
                "point at the Task folder (e.g. Task01_BrainTumour) as it was unpacked",
            )
        meta = self._read_json(folder)
        json_path = folder / "dataset.json"
        if self._json_modality(meta) != self.modality:
            raise BraverError(
                f"describes {list(meta.get('modality', {}).values())} images, not the "
                f"{self.name} task",
                json_path,
                "pass the --format that matches the task (msd-brain or msd-liver)",
            )
        scheme = self._scheme(meta, json_path)
        volume_index = self._volume_index(meta, json_path)
        images = sorted(
            (p for p in listing.images if p.parent == folder / "imagesTr" and is_nifti(p)),
            key=lambda p: natural_key(p.name),
        )
        cases = []
        for image in images:
            label = folder / "labelsTr" / image.name
            case_id = strip_suffix(image.name)
            cases.append(
                self._case(
                    case_id, [image], label if label.is_file() else None, volume_index, scheme
                )
            )
        return cases

    def _scheme(self, meta: dict, path: Path) -> LabelScheme:
        labels = meta.get("labels", {})
        try:
            values = sorted(int(k) for k in labels)
        except ValueError:
            values = []
        if tuple(values) != self.scheme.values:
            raise BraverError(
                f"lists labels {labels}; the {self.name} layout expects the values "
                f"{list(self.scheme.values)}",
                path,
                "check that this is the unmodified dataset.json of the task",
            )
        return self.scheme

    def _volume_index(self, meta: dict, path: Path) -> tuple[int, ...] | None:
        return None


class MSDBrain(MSD):
    name = "msd-brain"
    scheme = MSD_BRAIN
    example = "Task01_BrainTumour/{dataset.json, imagesTr/BRATS_001.nii.gz, labelsTr/…}"

    def _volume_index(self, meta: dict, path: Path) -> tuple[int, ...]:
        modality = meta.get("modality", {})
        channel_of = {}
        for index, name in modality.items():
            channel = brain_channel(str(name))
            if channel is None or channel in channel_of:
                raise BraverError(
                    f"names the modalities {list(modality.values())}; braver needs T1, T1c "
                    "(gadolinium), T2 and FLAIR once each",
                    path,
                    "check that this is the dataset.json of Task01_BrainTumour",
                )
            channel_of[channel] = int(index)
        missing = [c for c in self.channels if c not in channel_of]
        if missing:
            raise BraverError(
                f"has no {', '.join(c.upper() for c in missing)} channel in 'modality' "
                f"({list(modality.values())})",
                path,
                "braver's brain networks need T1, T1c, T2 and FLAIR",
            )
        return tuple(channel_of[c] for c in self.channels)


class MSDLiver(MSD):
    name = "msd-liver"
    scheme = LIVER
    channels = CT_CHANNELS
    modality = "ct"
    example = "Task03_Liver/{dataset.json, imagesTr/liver_0.nii.gz, labelsTr/liver_0.nii.gz}"


def brain_channel(name: str) -> str | None:
    """Map a modality name as datasets spell it (``T1w``, ``t1gd``, ``T1ce``, ``FLAIR``) to ours."""
    n = re.sub(r"[^a-z0-9]", "", name.lower())
    if "flair" in n or n in ("t2f",):
        return "flair"
    if n.startswith("t1") and any(t in n[2:] for t in ("gd", "c", "contrast", "post")):
        return "t1c"
    if n.startswith("t1"):
        return "t1"
    if n.startswith("t2"):
        return "t2"
    return None


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (BraTS2021(), BraTS2023(), BraTS2013(), MSDBrain(), MSDLiver(), LiTS())
}


def _unique_ids(folders: Sequence[Path], root: Path) -> dict[Path, str]:
    """Case ids from folder names; where two share a name, prefix parent folders until unique."""
    depth = 1
    while True:
        ids = {}
        for folder in folders:
            try:
                parts = folder.relative_to(root).parts
            except ValueError:
                parts = folder.parts
            parts = parts or (folder.name,)
            ids[folder] = "_".join(parts[-depth:])
        if len(set(ids.values())) == len(ids) or depth > 8:
            return ids
        depth += 1


# --------------------------------------------------------------------------------------------
# Public entry points


def discover(root: str | Path, format: str | None = None) -> Dataset:
    """Find the cases of the dataset below ``root``, detecting its layout unless ``format`` is given.

    Raises ``BraverError`` for a missing or empty folder, an unknown or mixed layout, and an
    incomplete case (a missing modality), naming the file or folder and the fix.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise BraverError("does not exist", root, "check the dataset path")
    if format is not None and format not in LAYOUTS:
        raise BraverError(
            f"unknown dataset format {format!r}", None, f"choose one of {', '.join(FORMATS)}"
        )
    listing = _Listing.scan(root)
    if not listing.images and not listing.others:
        raise BraverError(
            "is empty",
            root,
            "point at the folder that holds the case folders (or run 'braver data synth brain "
            "OUT' for a phantom dataset)",
        )
    layout = LAYOUTS[format] if format else _detect(listing)
    cases = layout.cases(listing)
    if not cases:
        raise BraverError(
            f"holds no cases in the {layout.name} layout ({layout.example})",
            root,
            "check the folder, or pass another --format (one of " + ", ".join(FORMATS) + ")",
        )
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise BraverError(
                f"holds two cases named {case.case_id!r} ({seen[case.case_id].folder} and "
                f"{case.folder})",
                root,
                "keep one copy of each case",
            )
        seen[case.case_id] = case
    cases.sort(key=lambda c: natural_key(c.case_id))
    return Dataset(root, layout.name, cases, cases[0].scheme, layout.channels, layout.modality)


def _detect(listing: _Listing) -> Layout:
    scores = {name: layout.match(listing) for name, layout in LAYOUTS.items()}
    # a Decathlon task folder is recognised by its dataset.json, whatever its file names
    for name in ("msd-brain", "msd-liver"):
        if scores[name]:
            return LAYOUTS[name]
    found = [name for name, score in scores.items() if score]
    if len(found) == 1:
        return LAYOUTS[found[0]]
    if len(found) > 1:
        raise BraverError(
            f"mixes dataset layouts ({', '.join(f'{n}: {scores[n]} files' for n in found)})",
            listing.root,
            "keep one layout per folder, or pass --format to choose one",
        )
    examples = ", ".join(p.name for p in (listing.images or listing.others)[:3])
    expected = "; ".join(f"{name}: {layout.example}" for name, layout in LAYOUTS.items())
    raise BraverError(
        f"does not look like any dataset layout braver knows (found e.g. {examples}); "
        f"expected one of {expected}",
        listing.root,
        "rename the files to one of these layouts or pass --format",
    )


def discover_inputs(paths: Sequence[str | Path], format: str | None = None) -> list[Case]:
    """Cases from what a user passes to predict: dataset folders, case folders or image files.

    Folders are discovered as datasets (a single case folder is a dataset of one case). Image
    files given together are grouped by layout: a BraTS-style set of four modality files is one
    brain case; ``volume-N.nii`` or any single 3D NIfTI with ``format`` ``lits``/``msd-liver``
    is one CT case. Labels are optional throughout.
    """
    cases: list[Case] = []
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise BraverError("does not exist", path, "check the path")
        if path.is_dir():
            cases.extend(discover(path, format).cases)
        else:
            files.append(path)
    if files:
        cases.extend(_cases_from_files(files, format))
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise BraverError(
                f"the case {case.case_id!r} was given twice",
                case.folder,
                "pass each case once",
            )
        seen.add(case.case_id)
    return cases


def _cases_from_files(files: list[Path], format: str | None) -> list[Case]:
    for path in files:
        if not _is_image(path):
            raise BraverError(
                "is not a NIfTI or MetaImage file", path, "pass image files or case folders"
            )
    listing = _Listing(files[0].parent, images=files)
    if format in ("lits", "msd-liver") or (format is None and _all_ct_files(files)):
        layout = LAYOUTS[format or "lits"]
        return [
            Case(
                case_id=_ct_case_id(path),
                images=(path,),
                channels=CT_CHANNELS,
                label=None,
                format=layout.name,
                scheme=LIVER,
                modality="ct",
            )
            for path in files
        ]
    layout = LAYOUTS[format] if format else None
    if layout is None:
        scores = {
            name: LAYOUTS[name].match(listing) for name in ("brats2021", "brats2023", "brats2013")
        }
        best = max(scores, key=scores.get)
        if not scores[best]:
            raise BraverError(
                "cannot tell which modality each file holds",
                files[0],
                "name the files like BraTS (<case>_t1.nii.gz, _t1ce, _t2, _flair) or pass the "
                "case folder, or pass --format lits for single CT volumes",
            )
        layout = LAYOUTS[best]
    return layout.cases(listing)


def _all_ct_files(files: list[Path]) -> bool:
    return all(LAYOUTS["lits"]._parse(p) is not None for p in files)  # type: ignore[attr-defined]


def _ct_case_id(path: Path) -> str:
    return strip_suffix(path.name)

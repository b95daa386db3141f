"""Benchmark dense whole-volume inference against per-pixel patch inference (issue 4).

The volume: a phantom brain (``braver.data.phantoms``, generated on a 171 x 191 x 145 grid) is
placed in a BraTS-size 240 x 240 x 155 volume with 4 channels and preprocessed as ``braver
data prepare`` does (canonical RAS, z-scored, cropped to the foreground). Its foreground box
is 139 x 170 x 134 (X x Y x Z, a plausible brain box); dense inference runs on that crop,
as it does on a cached or prepared case. Weights are random (untrained): the time does not
depend on them.

For TwoPathCNN and InputCascadeCNN it measures:
- ``seconds_per_volume_dense``: ``braver.inference.predict_volume`` on the cropped volume
  (whole padded axial slices, slices without foreground skipped; best of ``--repeats``);
- ``seconds_per_pixel_patch``: the paper's per-pixel mode, one patch per pixel (k = 1),
  timed on ``--sample`` brain pixels in batches of ``--patch-batch``, forward only (cutting
  the patches is not counted, which favours the per-pixel way);
- ``seconds_per_volume_per_pixel``: that time per pixel times the brain voxels of the volume;
- ``ratio``: per-pixel seconds / dense seconds.

Prints progress on stderr and one JSON object as the last line of stdout; the top-level
``ratio`` is the smaller of the two models' speed-ups. Targets (issue 4): ratio >= 150;
TwoPathCNN <= 90 s per cropped volume on 2 CPU cores; on an H100 <= 0.5 s (TwoPathCNN) and
<= 1.5 s (InputCascadeCNN).

    python bench/inference.py [--device cpu|cuda] [--threads N] [--bf16] [--models twopath,input_cascade]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from braver.data.formats import BRAIN_CHANNELS, Case
from braver.data.labels import BRATS_2021
from braver.data.phantoms import brain_phantom
from braver.inference import predict_volume
from braver.models import create_model, crop_inputs
from braver.preprocess import PrepareSettings, RawCase, preprocess_raw

BRATS_SHAPE = (240, 240, 155)  # X, Y, Z
PHANTOM_GRID = (171, 191, 145)  # its brain's foreground box is about 139 x 170 x 134


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def brats_size_volume(seed: int = 0) -> np.ndarray:
    """A prepared (C, Z, Y, X) float32 image: phantom brain in a 240 x 240 x 155 volume, cropped."""
    channels, _, affine = brain_phantom(PHANTOM_GRID, seed)
    offset = [(full - part) // 2 for full, part in zip(BRATS_SHAPE, PHANTOM_GRID, strict=True)]
    box = tuple(slice(o, o + n) for o, n in zip(offset, PHANTOM_GRID, strict=True))
    volumes = []
    for name in BRAIN_CHANNELS:
        full = np.zeros(BRATS_SHAPE, dtype=channels[name].dtype)
        full[box] = channels[name]
        volumes.append(full)
    case = Case(
        "bench",
        tuple(Path(f"bench_{c}.nii.gz") for c in BRAIN_CHANNELS),
        BRAIN_CHANNELS,
        None,
        "brats2021",
        BRATS_2021,
        "mri",
    )
    prepared = preprocess_raw(RawCase(case, volumes, affine, None), PrepareSettings())
    return prepared.image


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_dense(model, image, device, batch_size, bf16, repeats, fft=None) -> float:
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        predict_volume(model, image, device=device, batch_size=batch_size, bf16=bf16, fft=fft)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_per_pixel(model, image, device, sample, patch_batch, bf16, rng) -> float:
    """Seconds per pixel of the paper's patch mode: one S x S patch per pixel, k = 1."""
    side = max(model.input_sizes)
    before = side // 2
    foreground = np.argwhere((image != 0).any(axis=0))
    picks = foreground[rng.choice(len(foreground), size=sample, replace=False)]
    pad = ((0, 0), (0, 0), (before, side - 1 - before), (before, side - 1 - before))
    padded = np.pad(image, pad)
    patches = np.stack([padded[:, z, y : y + side, x : x + side] for z, y, x in picks])
    patches = torch.from_numpy(patches).to(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if bf16 and device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    model = model.to(device).eval()
    with torch.inference_mode(), autocast:
        model(*crop_inputs(model, patches[:patch_batch]))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for first in range(0, sample, patch_batch):
            model(*crop_inputs(model, patches[first : first + patch_batch]))
        synchronize(device)
    return (time.perf_counter() - start) / sample


def machine(device: torch.device) -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per dense pass")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--models", default="twopath,input_cascade")
    parser.add_argument("--sample", type=int, default=1024, help="pixels timed in patch mode")
    parser.add_argument("--patch-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="dense runs per model (best)")
    parser.add_argument(
        "--no-fft", action="store_true", help="direct output layer on CPU (for comparison)"
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available; run with --device cpu")
    result: dict = {"machine": machine(device)}

    log("preparing a BraTS-size phantom volume …")
    image = brats_size_volume()
    brain_voxels = int(np.count_nonzero((image != 0).any(axis=0)))
    result["volume"] = {
        "input_shape_xyz": list(BRATS_SHAPE),
        "channels": int(image.shape[0]),
        "cropped_shape_xyz": [int(s) for s in image.shape[1:][::-1]],
        "brain_voxels": brain_voxels,
        "weights": "random (untrained)",
    }
    rng = np.random.default_rng(0)
    ratios = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name, in_channels=4, num_classes=4).to(device).eval()
        if device.type == "cuda":  # warm-up: kernels, allocator
            time_dense(model, image[:, :8], device, args.batch_size, args.bf16, 1)
        log(f"{name}: dense …")
        fft = False if args.no_fft else None
        dense = time_dense(model, image, device, args.batch_size, args.bf16, args.repeats, fft)
        log(f"{name}: dense {dense:.2f} s per volume; per-pixel …")
        per_pixel = time_per_pixel(
            model, image, device, args.sample, args.patch_batch, args.bf16, rng
        )
        per_volume = per_pixel * brain_voxels
        ratios[name] = per_volume / dense
        result[name] = {
            "input_sizes": list(model.input_sizes),
            "seconds_per_volume_dense": round(dense, 3),
            "seconds_per_pixel_patch": per_pixel,
            "pixels_per_second_patch": round(1 / per_pixel, 1),
            "seconds_per_volume_per_pixel": round(per_volume, 1),
            "sampled_pixels": args.sample,
            "ratio": round(ratios[name], 1),
        }
        log(f"{name}: per-pixel {per_volume:.0f} s per volume, ratio {ratios[name]:.0f}")
    result["slices_per_batch"] = args.batch_size or ("32 (cuda)" if device.type == "cuda" else 4)
    result["bf16"] = bool(args.bf16 and device.type == "cuda")
    result["fft_output_layer"] = device.type == "cpu" and not args.no_fft
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["ratio"] = round(min(ratios.values()), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

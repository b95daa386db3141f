"""Patch loading: braver's batch gather vs TorchIO's LabelSampler + Queue, and peak memory.

Both draw class-balanced centres from the same phantom set and deliver multi-scale pairs (a 4 x 33 x 33 local patch and the 4 x 65 x 65 patch around it, the
InputCascadeCNN's inputs) in batches of 128. TorchIO runs twice: reading the NIfTI files (its
usual path; the headline ``ratio``) and from the cached arrays held in memory (its best case).
Peak RSS is measured in a fresh process that
trains-loads from 10 and from 50 phantom cases (memory-mapped: it should not grow).

    python bench/loader.py [--batches 60] [--skip-rss]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (33, 65)
BATCH = 128


def braver_rate(cache_root: Path, batches: int) -> float:
    from braver.data.blocks import patch_dataloaders
    from braver.data.cache import Cache

    cache = Cache.open(cache_root)
    dls = patch_dataloaders(
        cache, cache.case_ids, [], SIZES, bs=BATCH, train_patches=BATCH * batches, seed=0
    )
    next(iter(dls.train))  # warm up (index files, page cache)
    start = time.perf_counter()
    pairs = 0
    for local, wide, label in dls.train:
        assert local.shape[-1] == 33 and wide.shape[-1] == 65
        pairs += len(label)
    return pairs / (time.perf_counter() - start)


def torchio_rate(cache_root: Path, batches: int, files: Path | None = None) -> float:
    """TorchIO's LabelSampler + Queue with equal class probabilities.

    ``files``: subjects read from the NIfTI dataset (TorchIO's usual, lazy-loading path, 16
    patches per volume); otherwise the cached arrays held in memory as tensors (TorchIO's
    best case: no file reading, 128 patches per volume).
    """
    import numpy as np
    import torch
    import torchio as tio

    from braver.data.cache import Cache

    cache = Cache.open(cache_root)
    subjects = []
    if files is not None:
        from braver.data.formats import discover

        for case in discover(files).cases:
            subjects.append(
                tio.Subject(
                    image=tio.ScalarImage(path=list(case.images)),
                    label=tio.LabelMap(path=case.label),
                )
            )
        # label values 0, 1, 2, 4 (BraTS 2021) as in the files
        probabilities = dict.fromkeys(cache.scheme.values, 1)
        patch_size, per_volume = (65, 65, 1), 16
    else:
        for case in cache:
            # TorchIO wants (C, W, H, D): our (C, Z, Y, X) with the axial plane last
            image = torch.from_numpy(np.asarray(case.image, dtype=np.float32)).permute(0, 3, 2, 1)
            label = torch.from_numpy(np.asarray(case.label, dtype=np.int64))[None]
            subjects.append(
                tio.Subject(
                    image=tio.ScalarImage(tensor=image),
                    label=tio.LabelMap(tensor=label.permute(0, 3, 2, 1)),
                )
            )
        probabilities = dict.fromkeys(range(cache.scheme.num_classes), 1)
        patch_size, per_volume = (65, 65, 1), BATCH
    sampler = tio.LabelSampler(
        patch_size=patch_size, label_name="label", label_probabilities=probabilities
    )
    queue = tio.Queue(
        tio.SubjectsDataset(subjects),
        max_length=BATCH * 8,
        samples_per_volume=per_volume,
        sampler=sampler,
        num_workers=0,
        shuffle_subjects=True,
        shuffle_patches=True,
        verbose=False,
    )
    loader = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)

    def endless():
        while True:  # the queue's epoch is len(subjects) * samples_per_volume patches
            yield from loader

    iterator = endless()
    next(iterator)
    start = time.perf_counter()
    pairs = 0
    for _ in range(batches):
        batch = next(iterator)
        wide = batch["image"][tio.DATA][..., 0]  # (B, C, 65, 65)
        local = wide[..., 16:49, 16:49]
        assert local.shape[-1] == 33 and wide.shape[-1] == 65
        pairs += len(wide)
    return pairs / (time.perf_counter() - start)


def make_phantom_cache(folder: Path, cases: int) -> Path:
    from braver.data.phantoms import synth_brain
    from braver.preprocess import prepare_dataset

    synth_brain(folder / "dataset", cases, seed=7, overwrite=True)
    prepare_dataset(folder / "dataset", folder / "cache", workers=1, progress=False)
    return folder / "cache"


def child_peak_rss(cache_root: Path, batches: int) -> float:
    """Peak RSS (MB) of a fresh process that indexes the cache and loads ``batches`` batches."""
    here = str(Path(__file__).parent)
    code = (
        f"import resource, sys; sys.path.insert(0, {here!r});"
        "from loader import braver_rate; from pathlib import Path;"
        f"braver_rate(Path({str(cache_root)!r}), {batches});"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from braver.data.phantoms import default_phantom_cache

    dataset, cache = default_phantom_cache("brain", progress=False)
    ours = braver_rate(cache, args.batches)
    print(f"braver: {ours:,.0f} pairs/s", flush=True)
    theirs = torchio_rate(cache, max(args.batches // 10, 4), files=dataset)
    print(f"torchio (NIfTI subjects, 16 patches a volume): {theirs:,.0f} pairs/s", flush=True)
    in_memory = torchio_rate(cache, max(args.batches // 6, 5))
    print(
        f"torchio (tensors in memory, 128 patches a volume): {in_memory:,.0f} pairs/s", flush=True
    )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": "cpu",
        },
        "batch_size": BATCH,
        "patch_sides": list(SIZES),
        "braver_pairs_per_second": round(ours, 1),
        "torchio_pairs_per_second": round(theirs, 1),
        "torchio_in_memory_pairs_per_second": round(in_memory, 1),
        "ratio": round(ours / theirs, 1),
        "ratio_vs_torchio_in_memory": round(ours / in_memory, 1),
    }
    if not args.skip_rss:
        with tempfile.TemporaryDirectory() as tmp:
            for cases in (10, 50):
                root = make_phantom_cache(Path(tmp) / str(cases), cases)
                rss = child_peak_rss(root, args.batches)
                result[f"peak_rss_mb_{cases}_cases"] = round(rss, 1)
                print(f"peak RSS with {cases} cases: {rss:,.0f} MB", flush=True)
    result["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

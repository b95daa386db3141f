"""Training throughput: labelled pixels per second, per-patch (the paper) vs dense tiles.

Same TwoPathCNN, same loss, same optimiser step; batches come from the phantom cache through
braver's loaders. Per-patch: 33 x 33 patches, one labelled pixel each, batch 128 (the paper's
mode). Dense tiles: (33 + k - 1)^2 tiles, k x k labelled pixels each, batch 4 (the phantom
recipe's mode). On CUDA (when available) also the GPU-resident gather rate.

    python bench/train.py [--steps 4] [--tile 32]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time


def pixels_per_second(cache, model, tile: int, batch: int, steps: int, device: str) -> float:
    import torch

    from braver.data.blocks import patch_dataloaders
    from braver.recipe import OptimSection
    from braver.speedups import TrainingConvolutions
    from braver.train.learner import PixelCrossEntropy

    dls = patch_dataloaders(
        cache,
        cache.case_ids,
        [],
        model.input_sizes,
        tile=tile,
        bs=batch,
        train_patches=batch * (steps + 1),
        device=device,
    )
    optim = OptimSection()
    opt = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum_start)
    loss_func = PixelCrossEntropy()
    batches = iter(dls.train)

    def step(batch_):
        *inputs, label = batch_
        loss = loss_func(model(*inputs), label)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return label.numel()

    with TrainingConvolutions() if device == "cpu" else contextlib.nullcontext():
        step(next(batches))  # warm up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        pixels = 0
        for batch_ in batches:
            pixels += step(batch_)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return pixels / (time.perf_counter() - start)


def gpu_gather_rate(cache, batches: int = 50) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from braver.data.patches import DeviceVolumes, PatchGeometry
    from braver.data.sampling import PatchSampler

    geometry = PatchGeometry((33, 65), 1)
    volumes = DeviceVolumes(cache, cache.case_ids, pad=geometry.side, device="cuda")
    centres = torch.from_numpy(PatchSampler.from_cache(cache).sample(1024 * batches, "balanced", 0))
    centres = centres.cuda()
    volumes.gather(centres[:1024], geometry)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(batches):
        volumes.gather(centres[i * 1024 : (i + 1) * 1024], geometry)
    torch.cuda.synchronize()
    return 1024 * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch

    from braver.data.cache import Cache
    from braver.data.phantoms import default_phantom_cache
    from braver.models import create_model

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, root = default_phantom_cache("brain", progress=False)
    cache = Cache.open(root)

    def fresh():
        torch.manual_seed(0)
        return create_model("twopath", num_classes=cache.scheme.num_classes).to(device)

    patch = pixels_per_second(cache, fresh(), 1, 128, args.steps, device)
    print(f"per-patch: {patch:,.0f} labelled pixels/s", flush=True)
    dense = pixels_per_second(cache, fresh(), args.tile, 4, args.steps, device)
    print(f"dense tiles k={args.tile}: {dense:,.0f} labelled pixels/s", flush=True)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": device,
        },
        "model": "twopath",
        "tile": args.tile,
        "per_patch_pixels_per_second": round(patch, 1),
        "dense_tile_pixels_per_second": round(dense, 1),
        "ratio": round(dense / patch, 1),
    }
    gpu = gpu_gather_rate(cache)
    if gpu is not None:
        result["gpu_gather_pairs_per_second"] = round(gpu, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

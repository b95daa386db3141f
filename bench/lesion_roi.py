"""Would a tumour network that looks only inside the liver find the liver's tumours better?

The organ-then-lesion cascade of LiTS-era work: a second network, trained from scratch on the
training cases of a liver run, tells tumour from liver inside the liver only (two classes,
TwoPathCNN, dense 24 x 24 tiles around liver pixels, mirrored at random and with the liver
recipe's intensity jitter, loss on liver pixels only, each class weighing half of it; SGD
with momentum 0.9, the learning rate falling 15 % an epoch). Its input is the run's cache
image less the case's liver median, so that each case's liver sits at 0 whatever its
density.

It is scored on the run's validation cases, whole volume, twice:

- inside the TRUE liver (its median and its mask from the label): what the lesion stage could
  give at best, with a perfect liver;
- inside the run's own liver (the largest connected component of its liver + tumour map):
  what the cascade would give.

Against it, the run's own tumour map, raw and restricted to the true liver. Cases have one
Dice each (1 when neither the truth nor the prediction has tumour), averaged.

    python bench/lesion_roi.py RUN [--epochs 10] [--tiles 240] [--context 1] [--threads 2]

``--context 3`` gives the network the slices above and below as two more channels (2.5-D:
a vessel is a tube through slices, a tumour a blob). The last line of stdout is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

OUT = 24  # labelled pixels per tile side
PAD = 16  # a TwoPathCNN's input is its output + 32 (16 each side)


def dice(pred, truth) -> float:
    denominator = int(pred.sum() + truth.sum())
    return 1.0 if denominator == 0 else float(2 * (pred & truth).sum() / denominator)


def stacked(image_zyx, context: int):
    """(Z, C, Y, X): each slice with its ``context`` // 2 neighbours each side (edge repeated)."""
    import numpy as np

    half = context // 2
    depth = image_zyx.shape[0]
    index = np.clip(np.arange(depth)[:, None] + np.arange(-half, half + 1)[None], 0, depth - 1)
    return image_zyx[index]


def centred(image_zyx, organ):
    import numpy as np

    return image_zyx - np.float32(np.median(image_zyx[organ]))


HALF_IN, HALF_OUT = OUT // 2 + PAD, OUT // 2


def padded(image_zcyx, label_zyx):
    """A training case padded once for ``tiles``: (image, label, liver, liver pixels), the
    image's border repeated, the label's zero."""
    import numpy as np

    image = np.pad(image_zcyx, ((0, 0), (0, 0), (HALF_IN,) * 2, (HALF_IN,) * 2), mode="edge")
    label = np.pad(label_zyx, ((0, 0), (HALF_IN,) * 2, (HALF_IN,) * 2))
    return image, label, label > 0, np.argwhere(label > 0)


def tiles(cases, count: int, rng):
    """``count`` tiles (input, tumour target, liver mask) centred on random liver pixels of
    ``padded`` cases."""
    import numpy as np

    inputs, targets, masks = [], [], []
    for _ in range(count):
        image, label, organ, where = cases[rng.integers(len(cases))]
        z, y, x = where[rng.integers(len(where))]
        inp = image[z, :, y - HALF_IN : y + HALF_IN, x - HALF_IN : x + HALF_IN]
        out = (z, slice(y - HALF_OUT, y + HALF_OUT), slice(x - HALF_OUT, x + HALF_OUT))
        tgt, msk = label[out] == 2, organ[out]
        if rng.random() < 0.5:
            inp, tgt, msk = inp[..., ::-1], tgt[:, ::-1], msk[:, ::-1]
        inp = inp * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)  # the recipe's jitter
        inputs.append(np.ascontiguousarray(inp))
        targets.append(np.ascontiguousarray(tgt))
        masks.append(np.ascontiguousarray(msk))
    return np.stack(inputs), np.stack(targets), np.stack(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a liver run folder (braver transfer liver)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tiles", type=int, default=240, help="tiles per epoch")
    parser.add_argument("--context", type=int, default=1, choices=(1, 3, 5), help="slices")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from tumour_cues import liver_run  # bench/ is the script's folder, first on sys.path

    from braver.inference import predict_volume
    from braver.models import create_model
    from braver.postprocess import largest_component

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    run_model, info, cache = liver_run(args.run)
    valid = list(info.validation_cases)

    train = []
    for case_id in info.extra["train_cases"]:  # what the run trained on
        case = cache.case(case_id)
        image, label = np.asarray(case.image[0], np.float32), np.asarray(case.label)
        if (label > 0).any():
            train.append(padded(stacked(centred(image, label > 0), args.context), label))
    tumour = sum(int((c[1] == 2).sum()) for c in train)
    liver = sum(int((c[1] == 1).sum()) for c in train)
    weight = torch.tensor([(tumour + liver) / (2 * liver), (tumour + liver) / (2 * tumour)])

    net = create_model("twopath", in_channels=args.context, num_classes=2)
    optimiser = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-5)
    history = []
    for epoch in range(args.epochs):
        net.train()
        inputs, targets, masks = tiles(train, args.tiles, rng)
        total = 0.0
        for start in range(0, args.tiles, 8):
            x = torch.from_numpy(inputs[start : start + 8]).float()
            y = torch.from_numpy(targets[start : start + 8]).long()
            m = torch.from_numpy(masks[start : start + 8])
            loss = F.cross_entropy(net(x), y, weight=weight, reduction="none")[m].mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        for group in optimiser.param_groups:
            group["lr"] *= 0.85
        history.append(round(total / (args.tiles / 8), 4))
        print(
            f"epoch {epoch}  loss {history[-1]}  {time.perf_counter() - started:.0f} s", flush=True
        )

    net.eval()
    rows = []
    for case_id in valid:
        case = cache.case(case_id)
        image, label = np.asarray(case.image[0], np.float32), np.asarray(case.label)
        truth = label == 2
        predicted = predict_volume(run_model, case.image).argmax(0)
        run_liver = largest_component(predicted > 0)
        row = {
            "case": case_id,
            "tumour_voxels": int(truth.sum()),
            "run": dice(predicted == 2, truth),
            "run_in_true_liver": dice((predicted == 2) & (label > 0), truth),
        }
        for name, organ in (("true_liver", label > 0), ("run_liver", run_liver)):
            if not organ.any():
                row[f"lesion_in_{name}"] = dice(np.zeros_like(truth), truth)
                continue
            x = stacked(centred(image, organ), args.context)
            x = np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)), mode="edge")
            with torch.inference_mode():
                p = torch.softmax(net(torch.from_numpy(x).float()), 1)[:, 1].numpy()
            row[f"lesion_in_{name}"] = dice((p > 0.5) & organ, truth)
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print("  ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    keys = [k for k in rows[0] if k not in ("case", "tumour_voxels")]
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    print(
        json.dumps(
            {
                "bench": "lesion_roi",
                "run": str(args.run),
                "context": args.context,
                "epochs": args.epochs,
                "tiles_per_epoch": args.tiles,
                "training_cases": len(train),
                "loss": history,
                "mean": mean,
                "cases": rows,
                "seconds": round(time.perf_counter() - started, 1),
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()

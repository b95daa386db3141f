"""The paper's weight bound and gradient clipping: what they cost at the shipped rate, and
whether they keep a too-high rate from diverging.

Each setting trains the brain recipe's phantom profile (``braver train brain``) on the
built-in phantoms with a shortened schedule, at the shipped rate and at a rate known to
diverge with the class-weighted tiles, and reports per run: whole-volume Dice on the
validation cases (after stage selection and the learnt post-processing, as the run writes
them), the divergence guard's rollbacks, whether it still diverged, and the largest absolute
kernel weight per layer (what a bound would have to leave alone):

    python bench/stability.py                                    # the default grid
    python bench/stability.py --lr 0.005 --lr 0.03 --setting none --setting bound=0.05
    python bench/stability.py --set stage1.epochs=8 --runs runs-stability

``--setting``: ``none``, ``bound=B`` (``optim.weight_bound``), ``clip=C``
(``optim.grad_clip``, the gradients' global L2 norm). One JSON line per run as it ends; the
last line of stdout is one JSON object with all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

DEFAULT_LRS = (0.005, 0.03)
DEFAULT_SETTINGS = ("none", "bound=0.05", "clip=1.0")
DEFAULT_OVERRIDES = ("stage1.epochs=6", "stage1.patches_per_epoch=512", "optim.lr_saturate=6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", dest="lrs", type=float, action="append", default=None)
    parser.add_argument("--setting", dest="settings", action="append", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=None)
    parser.add_argument("--runs", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    lrs = args.lrs or list(DEFAULT_LRS)
    settings = args.settings or list(DEFAULT_SETTINGS)
    overrides = list(args.overrides if args.overrides is not None else DEFAULT_OVERRIDES)
    for setting in settings:
        setting_overrides(setting)  # refuse a bad one before any training

    import torch
    from rich.console import Console

    from braver.data.phantoms import default_phantom_cache
    from braver.recipe import load_recipe, shipped_recipe
    from braver.train import train_from_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    _, cache = default_phantom_cache("brain", progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="braver-stability-") as tmp:
        runs = args.runs or Path(tmp)
        for lr in lrs:
            for setting in settings:
                keys = [*overrides, f"optim.lr={lr}", *setting_overrides(setting)]
                recipe = load_recipe(shipped_recipe("brain"), keys, profile="phantom")
                out = runs / f"lr{lr}-{setting.replace('=', '')}"
                start = time.perf_counter()
                run = Path(
                    train_from_recipe(recipe, cache=cache, out=out, console=console, progress=False)
                )
                row = {"lr": lr, "setting": setting, **measure(run)}
                row["seconds"] = round(time.perf_counter() - start, 1)
                row["load_average"] = [round(x, 2) for x in os.getloadavg()]
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "bench": "stability",
                "overrides": overrides,
                "runs": rows,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


def setting_overrides(setting: str) -> list[str]:
    """Recipe overrides of one ``--setting`` (``none``, ``bound=B``, ``clip=C``)."""
    if setting == "none":
        return []
    name, _, value = setting.partition("=")
    keys = {"bound": "optim.weight_bound", "clip": "optim.grad_clip"}
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if name not in keys or number <= 0:
        raise SystemExit(f"--setting {setting!r}: use none, bound=B or clip=C with B, C > 0")
    return [f"{keys[name]}={number}"]


def measure(run: Path) -> dict:
    """Dice, rollbacks, divergence and the largest kernel weight per layer of one run."""
    from safetensors.torch import load_file

    metrics = json.loads((run / "metrics.json").read_text())
    extra = json.loads((run / "run.json").read_text()).get("extra", {})
    weights = load_file(str(run / "model.safetensors"))
    largest = {
        name.removesuffix(".weight"): round(float(w.abs().max()), 4)
        for name, w in weights.items()
        if name.endswith(".weight") and w.dim() == 4
    }
    return {
        "dice": {
            k: round(v, 4)
            for k, v in metrics.items()
            if k.endswith("_dice") and isinstance(v, int | float)
        },
        "rollbacks": len(extra.get("rollbacks", [])),
        "diverged": bool(extra.get("diverged", False)),
        "kept": extra.get("selection", {}).get("kept"),
        "largest_kernel_weight": largest,
        "run": str(run),
    }


if __name__ == "__main__":
    main()

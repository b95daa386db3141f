"""Run folders written by hand, as braver train/transfer/prune leave them (no training).

Imported by the dashboard tests and tests/test_report.py (by path).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image

REGIONS = ("whole_tumor", "tumor_core", "enhancing_tumor")
CHANNELS = ["t1", "t1c", "t2", "flair"]
HEADER = "stage,epoch,train_loss,valid_loss,whole_tumor_dice,patch_accuracy,lr,momentum,time"


def history_row(stage: str, epoch: int) -> str:
    loss = 1.0 / (epoch + 1)
    return f"{stage},{epoch},{loss + 0.1:.4f},{loss:.4f},{0.5 + 0.04 * epoch:.4f},{0.6 + 0.03 * epoch:.4f},0.005,{0.5 + 0.05 * epoch:.2f},2.0"


def write_history(folder: Path, stages: dict[str, int]) -> None:
    lines, epoch = [HEADER], 0
    for stage, count in stages.items():
        for _ in range(count):
            lines.append(history_row(stage, epoch))
            epoch += 1
    (folder / "history.csv").write_text("\n".join(lines) + "\n")


def append_epoch(folder: Path, stage: str) -> None:
    rows = (folder / "history.csv").read_text().splitlines()
    with open(folder / "history.csv", "a") as f:
        f.write(history_row(stage, len(rows) - 1) + "\n")


def write_previews(folder: Path, case_ids: list[str], slices=(3, 5, 7), version: int = 1) -> None:
    """Channel, truth and prediction PNGs as PreviewCallback writes them; the prediction's
    disc grows with ``version`` so a reload shows a different image."""
    size = 24
    yy, xx = np.mgrid[:size, :size]
    cases = []
    for n, case in enumerate(case_ids):
        out = folder / "previews" / case
        out.mkdir(parents=True, exist_ok=True)
        for z in slices:
            for c, channel in enumerate(CHANNELS):
                grey = ((xx + yy * (c + 1) + z * 10) % 255).astype(np.uint8)
                Image.fromarray(grey).save(out / f"{channel}_z{z}.png")
            disc = (yy - 12) ** 2 + (xx - 12) ** 2 < (3 + z % 3) ** 2
            truth = np.zeros((size, size, 4), np.uint8)
            truth[disc] = (227, 26, 28, 140)
            Image.fromarray(truth).save(out / f"truth_z{z}.png")
            pred = np.zeros((size, size, 4), np.uint8)
            pred[(yy - 12) ** 2 + (xx - 12) ** 2 < (1 + version + z // 2) ** 2] = (
                56,
                125,
                184,
                140,
            )
            Image.fromarray(pred).save(out / f"pred_z{z}.png")
        cases.append(
            {
                "case": case,
                "folder": case,
                "slices": list(slices),
                "channels": CHANNELS,
                "display": "flair",
                "truth": True,
                "size": [size, size],
                "aspect": 1.0,
                "main_slice": slices[len(slices) // 2] if n == 0 else slices[0],
            }
        )
    index = {
        "version": version,
        "stage": "stage1",
        "epoch": 2,
        "updated": time.time(),
        "classes": [
            {"name": "necrosis", "colour": "#e31a1c"},
            {"name": "edema", "colour": "#4cb04a"},
            {"name": "enhancing", "colour": "#387db8"},
        ],
        "cases": cases,
    }
    (folder / "previews" / "index.json").write_text(json.dumps(index))


def write_run(
    runs: Path,
    name: str,
    *,
    status: str = "done",
    stages: dict[str, int] | None = None,
    planned: dict[str, int] | None = None,
    model: str = "twopath",
    previews: bool = True,
) -> Path:
    """A run folder in the given state: ``done``, ``running`` (this process in live.json),
    ``interrupted`` (a dead process in live.json) or ``diverged``."""
    folder = runs / name
    folder.mkdir(parents=True)
    stages = stages if stages is not None else {"stage1": 3, "stage2": 1}
    planned = planned or {"stage1": 3, "stage2": 1}
    cases = ["case03", "case01", "case02"]
    info = {
        "kind": "brain",
        "model": {"name": model, "in_channels": 4, "num_classes": 4},
        "label_scheme": {},
        "channels": CHANNELS,
        "cache": str(runs / "cache" / "phantoms-brain"),
        "data": None,
        "validation_cases": cases,
        "prepare": {},
        "extra": {
            "recipe": "brain",
            "device": "cpu",
            "train_cases": ["case00"],
            "trainable_parameters": {"stage1": 710852, "stage2": 395140}
            if status == "done"
            else {},
        },
    }
    (folder / "run.json").write_text(json.dumps(info))
    recipe = "\n".join(
        f"[{stage}]\nepochs = {epochs}\npatches_per_epoch = 4\n"
        for stage, epochs in planned.items()
    )
    (folder / "recipe.toml").write_text('name = "brain"\nkind = "brain"\n\n' + recipe)
    write_history(folder, stages)
    if previews:
        write_previews(folder, cases[:2])
    epochs_done = sum(stages.values())
    last_stage = list(stages)[-1] if stages else "stage1"
    (folder / "progress.json").write_text(
        json.dumps({"finished": [], "phase": last_stage, "epochs_done": epochs_done})
    )
    if status == "done":
        (folder / "model.safetensors").write_bytes(b"weights")
        rows = [
            {
                "case": case,
                **{f"{r}_dice": 0.9 - 0.2 * i - 0.05 * j for j, r in enumerate(REGIONS)},
                **{f"{r}_hd95_mm": 3.0 + i for r in REGIONS},
            }
            for i, case in enumerate(cases)
        ]
        metrics = {
            **{f"{r}_dice": float(np.mean([row[f"{r}_dice"] for row in rows])) for r in REGIONS},
            "summary": {f"{r}_dice": {"mean": 0.7} for r in REGIONS},
            "cases": rows,
            "patch": {"valid_loss": float("nan")},  # NaN as Python's json writes it
            "train_seconds": 12.5,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    else:
        (folder / "checkpoint.safetensors").write_bytes(b"checkpoint")
        pid = os.getpid() if status == "running" else _dead_pid()
        live = {
            "pid": pid,
            "host": socket.gethostname(),
            "started": time.time() - 30,
            "updated": time.time(),
            "status": "diverged" if status == "diverged" else "running",
            "stage": last_stage,
            "epoch": epochs_done,
            "epochs": sum(planned.values()),
            "batch": 3,
            "batches": 10,
            "loss": 0.4,
        }
        (folder / "live.json").write_text(json.dumps(live))
    return folder


def _dead_pid() -> int:
    """A process id that no process has (a child that has exited and been reaped)."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def write_transfer_study(runs: Path, name: str = "transfer-liver-20250101-000000") -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    rows = [
        {
            "setup": setup,
            "freeze": freeze,
            "trainable_parameters": params,
            "epochs": 4,
            "seconds_per_epoch": secs,
            "cpu_seconds_per_epoch": None,
            "train_seconds": 8.0,
            "train_accuracy": 0.9,
            "valid_accuracy": 0.85,
            "liver_dice": liver,
            "tumor_dice": tumour,
            "run": str(runs / f"liver-{setup}"),
        }
        for setup, freeze, params, secs, liver, tumour in (
            ("local", "local", 600000, 1.5, 0.8, 0.3),
            ("none", "none", 2200000, 3.0, 0.85, 0.4),
        )
    ]
    meta = {"source_run": str(runs / "brain-a"), "strategy": "sum", "class_map": "liver"}
    (folder / "transfer.json").write_text(json.dumps({**meta, "rows": rows}))
    return folder


def write_surgery_study(run: Path, name: str = "prune-20250101-000000") -> Path:
    folder = run / name
    folder.mkdir(parents=True)
    rows = []
    for variant, dice in (("intact", 0.8), ("identity local.conv2", 0.6), ("keep global", 0.75)):
        rows.append(
            {
                "variant": variant,
                "parameters_removed": 0 if variant == "intact" else 36928,
                "foreground_accuracy": 0.9,
                "whole_tumor_dice": dice,
                "seconds_per_volume": 0.5,
                "delta_foreground_accuracy": None if variant == "intact" else 0.0,
                "delta_whole_tumor_dice": None if variant == "intact" else dice - 0.8,
                "note": "",
            }
        )
    report = {"run": str(run), "model": "twopath", "kind": "validation", "rows": rows}
    (folder / "prune.json").write_text(json.dumps(report))
    return folder

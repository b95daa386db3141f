"""One tiny epoch of the recipe runner on CUDA (bf16 training): it learns and writes its run."""

import csv
import math

import pytest
import torch
from safetensors.torch import load_file

from braver.recipe import load_recipe, shipped_recipe
from braver.train import runner

DEVICE = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ONE_EPOCH = [
    "data.mode=tile",
    "data.tile=4",
    "data.batch_size=2",
    "data.validation_fraction=0.25",
    "data.validation_patches=4",
    "stage1.epochs=1",
    "stage1.patches_per_epoch=8",
    "stage2.epochs=0",
    "model.dropout=0.0",
]


def test_one_epoch_on_cuda_trains_and_writes_the_run(tiny_cache, tmp_path):
    recipe = load_recipe(shipped_recipe("brain"), ONE_EPOCH)
    torch.manual_seed(0)
    start = runner.recipe_model(recipe, tiny_cache).state_dict()
    torch.manual_seed(0)
    folder = runner.train_from_recipe(
        recipe, cache=tiny_cache.root, out=tmp_path, device=DEVICE, evaluate=False, progress=False
    )
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert [r["stage"] for r in rows] == ["stage1"]
    assert math.isfinite(float(rows[0]["train_loss"])) and math.isfinite(
        float(rows[0]["valid_loss"])
    )
    final = load_file(str(folder / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in final.values())
    assert all(v.dtype == torch.float32 for v in final.values())  # bf16 only inside the steps
    assert any(not torch.equal(final[k], start[k].cpu()) for k in final)

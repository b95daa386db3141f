"""Two CPU processes (gloo): each rank trains on its own shard and both end with equal weights."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

TINY = [
    "data.mode=tile",
    "data.tile=8",
    "data.batch_size=2",
    "data.validation_fraction=0.25",
    "data.validation_patches=4",
    "stage1.epochs=2",
    "stage1.patches_per_epoch=8",
    "stage2.epochs=1",
    "stage2.patches_per_epoch=4",
    "model.dropout=0.5",
]


def _worker(rank: int, world: int, init_file: str, cache_root: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    from braver.data.blocks import PatchDL
    from braver.recipe import load_recipe, shipped_recipe
    from braver.train import train_from_recipe

    seen = []
    original = PatchDL.get_idxs

    def logged(self):
        epoch = self.epoch
        result = original(self)
        if not self.fixed:  # this rank's centres, and the whole draw of the epoch (one rank)
            rank, world = self.rank, self.world
            self.rank, self.world = 0, 1
            whole = self.draw(epoch)
            self.rank, self.world = rank, world
            seen.append({"mine": self.centres.tolist(), "whole": whole.tolist()})
        return result

    PatchDL.get_idxs = logged
    from braver.train import learner as learner_module

    learners = []
    build = learner_module.braver_learner

    def keep(*args, **kwargs):
        learners.append(build(*args, **kwargs))
        return learners[-1]

    learner_module.braver_learner = keep
    recipe = load_recipe(shipped_recipe("brain"), TINY, profile="phantom")
    folder = train_from_recipe(recipe, cache=cache_root, out=out, evaluate=False)
    final = learners[-1].model
    assert isinstance(final, torch.nn.parallel.DistributedDataParallel)
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in final.module.state_dict().items()}
    save_file(state, f"{out}/rank{rank}.safetensors")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"folder": str(folder), "centres": seen}, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _key(centre):
    return tuple(np.ravel(centre).tolist())


@pytest.mark.slow
def test_two_gloo_processes_train_shards_and_agree(tiny_cache, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "runs"
    out.mkdir()
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "init"), str(tiny_cache.root), str(out)),
        nprocs=2,
        join=True,
    )
    logs = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["folder"] == logs[1]["folder"]  # one run folder, written by rank 0
    assert len(list(out.glob("brain-phantom-*"))) == 1
    # each epoch's centres: the two ranks hold complementary halves of the same draw
    for epoch0, epoch1 in zip(logs[0]["centres"], logs[1]["centres"], strict=True):
        assert epoch0["whole"] == epoch1["whole"]  # both ranks drew the same
        whole = Counter(map(_key, epoch0["whole"]))
        a, b = Counter(map(_key, epoch0["mine"])), Counter(map(_key, epoch1["mine"]))
        assert len(epoch0["mine"]) == len(epoch1["mine"]) == len(epoch0["whole"]) // 2 > 0
        assert a + b == whole  # disjoint halves (as a multiset) that together make the draw
        assert a != b
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    saved = load_file(str(next(out.glob("brain-phantom-*")) / "model.safetensors"))
    for name, value in saved.items():
        assert torch.equal(value, weights[0][name]), name

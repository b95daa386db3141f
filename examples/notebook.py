"""braver from Python, the fastai way: what `braver train/transfer/prune` do, as a notebook would.

    python examples/notebook.py                      # on the built-in phantoms (a few minutes)
    BRAVER_PHANTOMS=tiny python examples/notebook.py # on six small phantoms (about a minute)

The same code is the README's "Python" section; tests/test_readme_example.py runs it.
"""

from braver import *  # noqa: F403  (the names a notebook needs: braver.__all__)

# 1. data: the built-in phantom brains (BraTS layout, prepared once). Your own data:
#    prepare_dataset("~/BraTS2021", "~/braver-cache/brats"); cache = Cache.open(...)
cache = phantom_cache("brain")
dls = patch_datablock("twopath", tile=16, valid_pct=0.2).dataloaders(
    cache, bs=16, patches_per_epoch=256, valid_patches=64
)
dls.show_batch(max_n=4)  # each scale, its label block, the labels around it

# 2. one fastai Learner; the paper's two stages and schedule as callbacks
learn = braver_learner(dls, "twopath", dropout=0.2)
learn.lr_find(num_it=20)
learn.fit(5, cbs=[DualStage(4, 1, stage2_lr=1e-3), PaperSchedule(learn.optim)])
learn.show_results(max_n=4)  # truth beside prediction
scores = learn.evaluate_volumes()  # whole-volume Dice / sensitivity / HD95 per region
print({k: round(v, 3) for k, v in scores.items() if k.endswith("_dice")})

# 3. a run folder without pickle (safetensors + run.json + recipe.toml), and back
learn.save_run("runs/notebook-brain")
learn = load_run("runs/notebook-brain")

# 4. transfer to liver CT: one channel, background / liver / tumour, local path frozen
liver = phantom_cache("liver")
model, _ = adapt_for_transfer(learn.network, in_channels=1, num_classes=3)
liver_dls = patch_datablock(model, tile=16).dataloaders(
    liver, bs=16, patches_per_epoch=256, valid_patches=64
)
liver_learn = braver_learner(liver_dls, model)
liver_learn.fit(3, cbs=[FreezeGroups(["local"]), DualStage(2, 1), PaperSchedule(liver_learn.optim)])
print("liver", round(liver_learn.evaluate_volumes()["liver_dice"], 3))

# 5. surgery: the local path's second layer replaced by an identity, scored on the same cases
pruned = replace_with_identity(learn.network, "conv2")
print("without conv2", round(learn.evaluate_volumes(model=pruned)["whole_tumor_dice"], 3))

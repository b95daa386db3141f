"""braver: patch-based tumor segmentation with the networks of Havaei et al. (2017).

The names a notebook needs, the fastai way (``from braver import *``)::

    cache = phantom_cache("brain")                                   # or prepare_dataset(...)
    dls = patch_datablock("twopath", tile=16).dataloaders(cache, bs=16)
    learn = braver_learner(dls, "twopath")
    learn.fit(12, cbs=[DualStage(10, 2), PaperSchedule(learn.optim)])
    learn.evaluate_volumes(); learn.save_run("runs/mine"); learn = load_run("runs/mine")

Names are imported lazily (``import braver`` stays light; the CLI's ``--help`` needs no torch).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("braver")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: public name → module that defines it
_EXPORTS = {
    # data: datasets, preparation, phantoms, the cache
    "Cache": "braver.data.cache",
    "discover": "braver.data.formats",
    "phantom_cache": "braver.data.sources",
    "training_cache": "braver.data.sources",
    "synth_brain": "braver.data.phantoms",
    "synth_liver": "braver.data.phantoms",
    "PrepareSettings": "braver.preprocess",
    "prepare_dataset": "braver.preprocess",
    # fastai blocks
    "MultiScalePatchBlock": "braver.data.blocks",
    "PatchMaskBlock": "braver.data.blocks",
    "CaseSplitter": "braver.data.blocks",
    "labelled_cases": "braver.data.blocks",
    "patch_datablock": "braver.data.blocks",
    "patch_dataloaders": "braver.data.blocks",
    "TensorPatch": "braver.data.blocks",
    "TensorPatchMask": "braver.data.blocks",
    # models
    "create_model": "braver.models",
    "list_models": "braver.models",
    # the Learner and the paper's callbacks
    "BraverLearner": "braver.train.learner",
    "braver_learner": "braver.train.learner",
    "DualStage": "braver.train.stages",
    "CascadeFirst": "braver.train.stages",
    "PaperSchedule": "braver.train.stages",
    "FreezeGroups": "braver.train.callbacks",
    "KeepBest": "braver.train.safety",
    "DivergenceGuard": "braver.train.safety",
    "WeightBound": "braver.train.safety",
    # recipes and runs
    "load_recipe": "braver.recipe",
    "shipped_recipe": "braver.recipe",
    "train_from_recipe": "braver.train.runner",
    "load_run": "braver.runs",
    "load_model": "braver.runs",
    # prediction and evaluation
    "predict_volume": "braver.inference",
    "predict_case": "braver.inference",
    "evaluate_cached_cases": "braver.inference",
    "region_scores": "braver.metrics",
    "postprocess": "braver.postprocess",
    # transfer, surgery and the studies
    "adapt_for_transfer": "braver.transfer",
    "replace_with_identity": "braver.surgery",
    "switch_layers": "braver.surgery",
    "copy_layer": "braver.surgery",
    "run_transfer_study": "braver.studies.transfer",
    "run_surgery_study": "braver.studies.surgery",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'braver' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

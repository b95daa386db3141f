"""``braver_learner``: a fastai ``Learner`` for the paper's networks, with braver's run methods.

``braver_learner(dls, "input_cascade")`` builds the model for the cache's channels and classes
(or takes a model), and returns a ``BraverLearner``: a plain fastai ``Learner`` (``fit``,
``fit_one_cycle``, ``lr_find``, ``get_preds``, ``show_results`` all work) whose splitter is the
model's named groups (``braver.models.naming.param_groups``: ``local, global, output`` per
network), so ``freeze()`` trains only the final output layer — the paper's second stage — and
``freeze_to``/``unfreeze`` mean something. Optimiser: SGD with momentum and L2 as coupled
weight decay (Havaei et al. 2017, §3.2); L1, max-norm, the weight bound, class weights (tile
mode) and the divergence guard are callbacks.

Its additions: ``save_run(folder)`` (safetensors + run.json, no pickle; ``braver.load_run`` reads
it back), ``predict_volume(image)``, ``predict_case(path_or_case)`` and ``evaluate_volumes()``
(whole-volume Dice per region on the validation cases).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import fastai.callback.schedule  # noqa: F401  (lr_find, fit_one_cycle, fit_flat_cos on Learner)
import torch
import torch.nn.functional as F
from fastai.callback.progress import ProgressCallback
from fastai.callback.tracker import TerminateOnNaNCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import SGD
from torch import nn

from braver.data.labels import LabelScheme
from braver.recipe import OptimSection
from braver.speedups import CpuSpeedups
from braver.train.callbacks import ClassWeights, DropFrozenGrads, L1Penalty, MaxNorm
from braver.train.safety import DivergenceGuard, WeightBound


class PixelCrossEntropy(nn.Module):
    """Cross-entropy over every labelled pixel: logits (B, K, k, k) or (B, K), target (B, k, k).

    ``weight`` (K,) per-class weights, set by ``ClassWeights`` in tile mode; ``None`` otherwise.
    """

    def __init__(self):
        super().__init__()
        self.weight: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[1]
        flat = logits.float().movedim(1, -1).reshape(-1, classes)
        return F.cross_entropy(flat, target.reshape(-1), weight=self.weight)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def decodes(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.argmax(dim=1)


class BraverLearner(Learner):
    """A fastai ``Learner`` that knows its label scheme and can save and apply itself as a run.

    Attributes beyond fastai's: ``optim`` (the ``OptimSection``), ``scheme`` (``LabelScheme``),
    ``tile_mode``, and ``run_info`` once saved or loaded.
    """

    optim: OptimSection
    scheme: LabelScheme
    tile_mode: bool
    run_info: Any = None

    @property
    def network(self) -> nn.Module:
        """The model itself (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    def save_run(self, folder: str | Path, **run_fields) -> Path:
        """Write ``folder`` as a run: model.safetensors and run.json (model config, label
        scheme, channels, cache, validation cases). ``braver.load_run(folder)`` reads it."""
        from braver.runs import save_run_info, save_weights

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        info = self.run_info or self._run_info(**run_fields)
        if run_fields and self.run_info is not None:
            for key, value in run_fields.items():
                setattr(info, key, value)
        save_weights(folder, self.network)
        save_run_info(folder, info)
        if not (folder / "recipe.toml").exists():
            from braver.atomic import write_text

            write_text(folder / "recipe.toml", self.recipe(folder.name, info.kind).to_toml())
        self.run_info = info
        return folder

    def recipe(self, name: str = "notebook", kind: str = "brain"):
        """This learner's settings as a recipe (network, patch geometry, optimiser), so that
        ``load_run`` can rebuild its data the same way."""
        from braver.recipe import DataSection, ModelSection, Recipe

        train = self.dls.train
        config = self.network.config
        tile = train.geometry.tile
        return Recipe(
            name=name,
            kind=kind,
            model=ModelSection(
                name=config["name"],
                maxout_k=config.get("maxout_k", 2),
                dropout=config.get("dropout", 0.2),
                init=config.get("init", "paper"),
            ),
            data=DataSection(
                mode="tile" if tile > 1 else "patch",
                tile=tile,
                batch_size=train.bs,
                validation_patches=getattr(self.dls.valid, "valid_patches", 2000)
                if len(self.dls.loaders) > 1
                else 2000,
                seed=train.seed,
            ),
            optim=self.optim,
        )

    def _run_info(self, **fields):
        from braver.runs import RunInfo

        cache = getattr(self.dls.train, "cache", None)
        valid = self.dls.valid.cases if len(self.dls.loaders) > 1 else []
        fields.setdefault("extra", {})
        fields["extra"].setdefault("train_cases", [c.case_id for c in self.dls.train.cases])
        return RunInfo(
            kind=fields.pop("kind", _kind_of(cache)),
            model=self.network.config,
            label_scheme=self.scheme.to_json(),
            channels=list(cache.channels) if cache is not None else [],
            cache=str(cache.root) if cache is not None else None,
            validation_cases=[c.case_id for c in valid],
            prepare=dict(cache.summary.get("settings", {})) if cache is not None else {},
            **fields,
        )

    def predict_volume(self, image_czyx, **kwargs):
        """Class probabilities (K, Z, Y, X) of a preprocessed image (C, Z, Y, X)
        (``braver.inference.predict_volume``)."""
        from braver.inference import predict_volume

        kwargs.setdefault("device", self.dls.device or "cpu")
        return predict_volume(self.network, image_czyx, **kwargs)

    def predict_case(self, case, **kwargs):
        """Segment a raw case (a folder or file of a known layout, or a ``Case``) back in its
        own geometry (``braver.inference.predict_case``); needs ``run_info`` (save or load the
        run first)."""
        from braver.data.formats import Case, discover_inputs
        from braver.errors import BraverError
        from braver.inference import predict_case

        if self.run_info is None:
            raise BraverError(
                "the learner has no run yet", None, "call learn.save_run(folder) or load_run"
            )
        if not isinstance(case, Case):
            (case,) = discover_inputs([case])
        kwargs.setdefault("device", self.dls.device or "cpu")
        return predict_case(self.network, self.run_info, case, **kwargs)

    def evaluate_volumes(
        self, case_ids: Sequence[str] | None = None, model: nn.Module | None = None, **kwargs
    ) -> dict:
        """Whole-volume scores (Dice, sensitivity, specificity, HD95 per region) of the
        validation cases (or ``case_ids``): ``{"cases": rows, "summary": …, <metric>: mean}``.
        ``model`` scores another network on the same cases (e.g. a surgery variant)."""
        from braver.inference import evaluate_cached_cases
        from braver.metrics import summarize

        cache = self.dls.train.cache
        if case_ids is None:
            case_ids = [c.case_id for c in self.dls.valid.cases]
        kwargs.setdefault("device", self.dls.device or "cpu")
        network = model if model is not None else self.network
        rows = evaluate_cached_cases(network.eval(), cache, list(case_ids), **kwargs)
        summary = summarize(rows)
        return {**{k: v["mean"] for k, v in summary.items()}, "summary": summary, "cases": rows}


def braver_learner(
    dls: DataLoaders,
    model: str | nn.Module = "twopath",
    *,
    optim: OptimSection | None = None,
    scheme: LabelScheme | None = None,
    path: str | Path = ".",
    tile_mode: bool | None = None,
    metrics: Sequence | None = None,
    cbs: Sequence = (),
    progress: bool = True,
    cpu_speedups: bool = True,
    **model_options,
) -> BraverLearner:
    """A ``BraverLearner`` on patch ``dls`` (``braver.data.blocks``) for ``model``.

    ``model`` is a registered name (``twopath``, ``input_cascade``, …; built with the cache's
    channels and classes and ``model_options``, e.g. ``dropout=0.2``) or a module. ``optim``
    defaults to the paper's values (``OptimSection()``). Metrics: per-region Dice and patch
    accuracy. ``cpu_speedups`` gives the wide convolutions a faster backward during fits on
    the CPU (``braver.speedups``; same values, the model untouched). ``progress=False`` drops fastai's progress bars.
    """
    from braver.metrics import region_dice_metrics
    from braver.models import create_model
    from braver.models.naming import param_groups

    optim = optim or OptimSection()
    cache = getattr(dls.train, "cache", None)
    scheme = scheme or (cache.scheme if cache is not None else None)
    if scheme is None:
        raise ValueError("braver_learner needs the label scheme: pass scheme= or patch dls")
    if isinstance(model, str):
        model = create_model(
            model,
            in_channels=len(cache.channels),
            num_classes=scheme.num_classes,
            **model_options,
        )
    if tile_mode is None:
        tile_mode = dls.train.geometry.tile > 1
    device = dls.device or torch.device("cpu")
    model.to(device)
    callbacks = [
        *([CpuSpeedups()] if cpu_speedups else []),
        DropFrozenGrads(),
        L1Penalty(optim.l1),
        MaxNorm(optim.max_norm),
        WeightBound(optim.weight_bound),
        DivergenceGuard(optim.divergence_retries, optim.spike_factor),
        *cbs,
    ]
    if optim.grad_clip > 0:
        from fastai.callback.training import GradientClip

        callbacks.append(GradientClip(optim.grad_clip))
    if tile_mode:
        callbacks.append(ClassWeights())
    learn = BraverLearner(
        dls,
        distributed(model),
        loss_func=PixelCrossEntropy(),
        opt_func=partial(SGD, mom=optim.momentum_start, decouple_wd=False),
        lr=optim.lr,
        wd=optim.l2,
        wd_bn_bias=False,
        splitter=lambda m: param_groups(getattr(m, "module", m)),
        metrics=list(metrics) if metrics is not None else region_dice_metrics(scheme),
        cbs=callbacks,
        path=path,
        model_dir=".",
        train_bn=True,
    )
    learn.optim, learn.scheme, learn.tile_mode = optim, scheme, tile_mode
    learn.logger = _quiet
    if TerminateOnNaNCallback in [type(cb) for cb in learn.cbs]:
        learn.remove_cb(TerminateOnNaNCallback)
    if not progress:
        learn.remove_cb(ProgressCallback)
    return learn


def distributed(model: nn.Module) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under ``torch.distributed`` (world > 1).

    DDP registers the parameters that require gradients when it is built: after freezing,
    wrap again (``DualStage`` does when stage 2 starts)."""
    model = getattr(model, "module", model)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model
    if torch.distributed.get_world_size() <= 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def _kind_of(cache) -> str:
    """``liver`` for a one-channel CT cache, ``brain`` otherwise."""
    channels = [c.lower() for c in (cache.channels if cache is not None else [])]
    return "liver" if channels == ["ct"] else "brain"


def _quiet(*args, **kwargs) -> None:
    """The Recorder prints raw epoch lists when there is no progress bar; braver prints rows."""

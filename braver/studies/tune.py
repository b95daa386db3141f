"""``braver tune``: a hyperparameter search over recipe keys, run by Optuna.

Optuna does the searching (TPE sampler, median or successive-halving pruner, RDB storage);
this module only maps it onto braver: a *search space* file names recipe keys and their
ranges, every trial is one ordinary run folder trained from the base recipe with the trial's
values, the objective is a whole-volume validation metric from the run's ``metrics.json``,
and the validation metric of every epoch is reported to Optuna so that a poor trial stops
early (its run folder then holds ``pruned.json``).

A study lives in a folder (``runs/tune-<study>/`` from the CLI)::

    study.db          Optuna's storage (SQLite) unless --storage names another database
    trials/           one run folder per trial: <recipe name>-trial<NNNN>-<time>/
    trials.csv        one row per trial: state, value, duration, parameters, run folder
    history.png       the metric of every finished trial and the best so far
    importances.png   parameter importances (Optuna's fANOVA), once two trials finished
    best.toml         the base recipe with the best trial's values: ``braver train best.toml``
    tune.json         the study's settings, counts and best trial

Resuming is running the same command again: finished trials are kept, and trials left
RUNNING by a process that died are marked FAIL (at once for processes of this machine, after
Optuna's heartbeat grace period for other machines). ``trials`` is the number of finished
(complete or pruned) trials the *study* should reach, whoever runs them.

The search space (``braver.studies.search_space``) is TOML over dotted recipe keys; what
the study writes is in ``braver.studies.tune_results``.

Length: the Optuna objective, pruning callback and storage handling belong together; the
space and the result files already live in their own modules.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback, CancelFitException
from rich.console import Console

from braver.atomic import write_json
from braver.errors import BraverError
from braver.recipe import Recipe
from braver.studies.search_space import (  # noqa: F401  (the names a study is written with)
    SearchSpace,
    SpaceParam,
    apply_params,
    default_space_path,
    load_space,
)
from braver.studies.tune_results import (  # noqa: F401
    BestRecipe,
    TuneResult,
    param_importances,
    plot_history,
    safe_url,
    say,
    show_value,
    trial_rows,
    write_results,
    write_trials,
)

PRUNED_FILE = "pruned.json"  # in a pruned trial's run folder
STUDY_DB = "study.db"
PRUNERS = ("median", "halving", "none")
# whole-volume metric optimised when none is named, by recipe kind
DEFAULT_METRIC = {"brain": "whole_tumor_dice", "liver": "tumor_dice"}
HEARTBEAT_SECONDS = 30  # a trial's process writes a heartbeat this often …
GRACE_SECONDS = 180  # … and one silent for this long is marked FAIL by the next process
STORAGE_ATTEMPTS = 6  # opens of a new SQLite study that another process is creating


# ---------------------------------------------------------------------------------------------
# objective and pruning


def metric_direction(metric: str) -> str:
    """``minimize`` for distances and losses (``*_hd95_mm``, ``*loss``), else ``maximize``."""
    return "minimize" if metric.endswith(("hd95_mm", "loss")) else "maximize"


class OptunaPruning(Callback):
    """Reports each epoch's validation metric to an Optuna trial; stops the run when it says so.

    ``monitor`` is a column of the Recorder (``history.csv``); ``sign`` is -1 when the
    monitored value falls as the study's objective rises (``valid_loss`` for a Dice). Steps
    count epochs across every fit of the run. A pruned fit is cancelled the fastai way, later
    fits are cancelled before they start, and after the fit ``optuna.TrialPruned`` is raised
    so that the run goes no further (no weights, no whole-volume evaluation).
    """

    order = 90  # after the Recorder (50), History (65) and the checkpoint (70)

    def __init__(self, trial, monitor: str, sign: float = 1.0):
        self.trial, self.monitor, self.sign = trial, monitor, sign
        self.step = 0
        self.pruned: dict[str, Any] | None = None

    def before_fit(self):
        if self.pruned is not None:
            raise CancelFitException()

    def after_epoch(self):
        recorder = self.learn.recorder
        names = [str(n) for n in recorder.metric_names[1:-1]]  # no "epoch", no "time"
        values = dict(zip(names, recorder.log[1 : 1 + len(names)], strict=False))
        value = _float(values.get(self.monitor))
        step, self.step = self.step, self.step + 1
        if value is None or not math.isfinite(value):
            return
        self.trial.report(self.sign * value, step)
        if self.trial.should_prune():
            self.pruned = {"epoch": step, "monitor": self.monitor, "value": value}
            raise CancelFitException()

    def after_fit(self):
        if self.pruned is not None:
            import optuna

            raise optuna.TrialPruned(
                f"pruned after epoch {self.pruned['epoch']} "
                f"({self.monitor} {self.pruned['value']:.4f})"
            )


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


Trainer = Callable[[Recipe, Path, list], Path]
"""``train(recipe, out, callbacks) -> run folder``: one trial's training and evaluation."""


def recipe_trainer(
    cache: str | Path,
    *,
    device: str = "cpu",
    data: str | Path | None = None,
    console: Console | None = None,
    progress: bool = False,
) -> Trainer:
    """Trials trained by ``braver.train.train_from_recipe`` on a prepared cache."""

    def train(recipe: Recipe, out: Path, callbacks: list) -> Path:
        from braver.train import train_from_recipe

        return train_from_recipe(
            recipe,
            cache=cache,
            out=out,
            device=device,
            data=data,
            console=console,
            progress=progress,
            evaluate=True,
            callbacks=callbacks,
        )

    return train


# the model keys a transfer setup takes from the brain run, whatever its recipe says
TRANSFER_FIXED = ("model.name", "model.maxout_k", "model.dropout", "model.init")


def transfer_trainer(
    plan,
    cache: str | Path,
    *,
    device: str = "cpu",
    console: Console | None = None,
    progress: bool = False,
) -> Trainer:
    """Trials trained as the one setup of a transfer plan (``braver.studies.transfer``):
    the brain network adapted to the liver data, the setup's groups frozen."""
    from braver.data.cache import Cache
    from braver.studies.transfer_training import train_setup

    if len(plan.setups) != 1 or plan.setups[0].baseline:
        raise BraverError(
            f"a study tunes one transfer setup, not {len(plan.setups)}",
            None,
            "pass one --freeze (e.g. --freeze local) and no --baseline",
        )
    (setup,) = plan.setups
    cache = Cache.open(cache)

    def train(recipe: Recipe, out: Path, callbacks: list) -> Path:
        return train_setup(
            setup,
            recipe,
            plan.brain,
            plan.brain_run,
            cache,
            out=out,
            device=device,
            data=plan.data,
            strategy=plan.strategy,
            class_map=plan.settings.class_map,
            console=console,
            progress=progress,
            callbacks=callbacks,
        )

    return train


# ---------------------------------------------------------------------------------------------
# the study


def tune(
    recipe: Recipe,
    space: SearchSpace,
    train: Trainer,
    *,
    folder: str | Path,
    study_name: str,
    metric: str,
    valid_metrics: Sequence[str] | None = None,
    storage: str | None = None,
    trials: int = 20,
    timeout: float | None = None,
    pruner: str | Any = "median",
    seed: int | None = None,
    baseline: bool = True,
    settings: dict[str, Any] | None = None,
    best_tables: dict[str, dict] | None = None,
    best_command: str | None = None,
    console: Console | None = None,
) -> TuneResult:
    """Run (or resume) a study until it has ``trials`` finished trials; write its results.

    Finished: complete or pruned. A failed trial (the run diverged, a bad value) does not
    count; the study stops early after as many failed trials as it still needed finished ones.

    ``train`` trains one trial (``recipe_trainer``); ``valid_metrics`` are the names
    ``metrics.json`` will hold (``braver.metrics.metric_names``), checked against ``metric``.
    ``storage`` is an Optuna RDB URL (default: SQLite in ``folder``); ``pruner`` is one of
    ``PRUNERS`` or an Optuna pruner. With ``baseline``, a new study's first trial is the
    recipe's own values (those inside the space), so the search starts from the known point.
    ``settings`` (e.g. a transfer's brain run and setup) must match when the study resumes,
    like the recipe, the space and the metric. ``best_tables`` are written into best.toml
    after the recipe (a transfer's ``[transfer]`` and ``[prepare]``), ``best_command`` is the
    command its header says trains it.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if valid_metrics is not None and metric not in valid_metrics:
        raise BraverError(
            f"unknown metric {metric!r}", None, f"choose one of {', '.join(valid_metrics)}"
        )
    if trials < 1:
        raise BraverError(f"--trials {trials} must be at least 1", None, "ask for 1 or more")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(folder / STUDY_DB).resolve()}"
    direction = metric_direction(metric)
    study, rdb, created = _open_study(url, study_name, direction, pruner, seed, trials)
    fixed = {
        "recipe": {k: v for k, v in recipe.to_dict().items() if k != "name"},
        "space": space.to_dict(),
        "metric": metric,
        **(settings or {}),
    }
    _check_settings(study, fixed, study_name, url)
    interrupted = _fail_interrupted(study, rdb, study_name)
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    say(
        console,
        f"[bold]Study[/] {study_name} ({safe_url(url)}): {metric} ({direction}), "
        f"{done} of {trials} trials finished"
        + (f", {len(interrupted)} interrupted marked failed" if interrupted else ""),
    )
    for param in space.params:
        say(console, f"  {param.describe()}")
    if baseline and created:
        base = space.base_values(recipe)
        if base:
            study.enqueue_trial(base, user_attrs={"baseline": True})

    monitor, sign = _monitor(metric, direction)
    trials_folder = folder / "trials"

    def objective(trial) -> float:
        # first: which process runs the trial, so a later process can tell it died
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = space.suggest(trial)
        name = f"{recipe.name}-trial{trial.number:04d}"
        trial_recipe = apply_params(recipe, params, source=space.source, name=name)
        if console is not None:
            console.rule(f"[bold]trial {trial.number}[/] ({_count(study)} of {trials} finished)")
            say(console, "  ".join(f"{k} = {show_value(v)}" for k, v in params.items()))
        pruning = OptunaPruning(trial, monitor, sign)
        try:
            run = train(trial_recipe, trials_folder, [pruning])
        except optuna.TrialPruned:
            run = _run_folder(trials_folder, name)
            if run is not None:
                trial.set_user_attr("run", str(run))
                write_json(run / PRUNED_FILE, {"trial": trial.number, **(pruning.pruned or {})})
            say(console, f"[yellow]trial {trial.number} pruned[/] after epoch {_epoch(pruning)}")
            raise
        except BraverError as error:  # e.g. a diverged run: this trial fails, the study goes on
            run = _run_folder(trials_folder, name)
            if run is not None:
                trial.set_user_attr("run", str(run))
            trial.set_user_attr("error", str(error))
            say(console, f"[yellow]trial {trial.number} failed[/]: {error}")
            raise
        trial.set_user_attr("run", str(run))
        value = _metric_value(run, metric)
        say(console, f"[bold]trial {trial.number}[/] {metric} [bold]{value:.4f}[/]")
        return value

    def after_trial(study, trial) -> None:
        write_trials(study, folder, metric, console=None)

    remaining = trials - done
    failures = []

    def give_up(study, trial) -> None:
        # a failed trial (e.g. a diverged run) does not count toward ``trials``; a study whose
        # trials keep failing stops after as many failures as the trials it still needed
        if trial.state == TrialState.FAIL:
            failures.append(trial.number)
            if len(failures) >= remaining:
                say(console, f"[yellow]{len(failures)} trials failed[/]: the study stops here")
                study.stop()

    if remaining > 0:
        study.optimize(
            objective,
            n_trials=None,  # until ``trials`` finished (MaxTrialsCallback), a timeout or give_up
            timeout=timeout,
            catch=(BraverError,),
            callbacks=[
                optuna.study.MaxTrialsCallback(trials, states=finished_states),
                give_up,
                after_trial,
            ],
            gc_after_trial=True,
        )
    best = BestRecipe(recipe, space, best_tables or {}, best_command)
    return write_results(study, folder, best, metric, url=url, console=console)


def _open_study(url: str, name: str, direction: str, pruner, seed, trials: int):
    import optuna

    engine_kwargs, attempts = {}, 1
    if url.startswith("sqlite"):
        # trials of several processes write to one file: wait for the lock instead of failing,
        # and open a new study again when another process was writing its schema
        engine_kwargs, attempts = {"connect_args": {"timeout": 60}}, STORAGE_ATTEMPTS
    try:
        storage = _rdb_storage(url, engine_kwargs, attempts)
    except Exception as error:  # a bad URL, a missing driver, an unreachable server
        raise BraverError(
            f"cannot open the study storage {safe_url(url)} ({type(error).__name__}: {error})",
            None,
            "check --storage (e.g. postgresql://user:password@host/db, with psycopg2 installed)",
        ) from None
    if isinstance(pruner, str):
        pruner = make_pruner(pruner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # few trials: fewer random start-up trials than Optuna's 10; constant_liar keeps
        # processes that share the study from sampling the same point at the same time
        sampler = optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=max(2, min(10, trials // 3)),
            multivariate=True,
            constant_liar=True,
        )
    options = dict(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    try:
        # only the process whose create succeeds counts as the creator (the name is unique
        # in the database), so two processes starting together do not both seed the study
        study, created = optuna.create_study(direction=direction, **options), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**options), False
    if study.direction.name.lower() != direction:
        raise BraverError(
            f"study {name!r} ({safe_url(url)}) {study.direction.name.lower()}s its metric, "
            f"and --metric asks to {direction} it",
            None,
            "use the study's own --metric or a new --study name",
        )
    return study, storage, created


def _rdb_storage(url: str, engine_kwargs: dict, attempts: int):
    """Optuna's RDBStorage for ``url``, in up to ``attempts`` opens.

    A first open writes the schema and its version. Two processes opening one new SQLite study
    together both write them, and one fails (``table studies already exists``, a UNIQUE
    constraint on ``alembic_version``); it opens again once the other is done and the schema is
    there to read. A server URL gets one attempt: an unreachable host is not waited for twice.
    """
    import optuna
    import sqlalchemy.exc

    def open_storage():
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
            )

    for attempt in range(attempts - 1):
        try:
            return open_storage()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    return open_storage()


def make_pruner(name: str):
    """``median`` (Optuna's MedianPruner), ``halving`` (SuccessiveHalvingPruner) or ``none``."""
    import optuna

    if name == "median":
        # the first epochs of a short schedule are noisy: compare from the second one on,
        # and only once three trials have reported
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise BraverError(f"unknown pruner {name!r}", None, f"choose one of {', '.join(PRUNERS)}")


def _check_settings(study, settings: dict, name: str, url: str) -> None:
    """A resumed study must search the same space of the same recipe for the same metric."""
    settings = json.loads(json.dumps(settings))
    stored = study.user_attrs
    if not stored.get("settings"):
        study.set_user_attr("settings", settings)
        return
    before = stored["settings"]
    for part in settings:
        what = _first_difference(before.get(part), settings[part], part)
        if what is not None:
            raise BraverError(
                f"study {name!r} ({safe_url(url)}) was started with other settings ({what})",
                None,
                "run it with the same recipe, --set, --space and --metric, or give a new --study",
            )


def _first_difference(old: Any, new: Any, where: str) -> str | None:
    """Where two settings differ, or None. A recipe key only one side has (a braver version
    that added or dropped it) is not a difference."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) & set(new)):
            found = _first_difference(old[key], new[key], f"{where}.{key}")
            if found is not None:
                return found
        return None
    if old == new:
        return None
    return f"{where.removeprefix('recipe.')}: {show_value(old)} then, {show_value(new)} now"


def _fail_interrupted(study, storage, name: str) -> list[int]:
    """Mark FAIL the RUNNING trials whose process, on this machine, is gone; their numbers.

    Trials of other machines are left to Optuna's heartbeat check (``GRACE_SECONDS``).
    """
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    study_id = storage.get_study_id_from_name(name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or _alive(attrs.get("pid")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        failed.append(trial.number)
    return failed


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` runs (this process itself counts as not: it starts no trial
    before this check, so a trial recorded with its number is from an earlier process)."""
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _monitor(metric: str, direction: str) -> tuple[str, float]:
    """Which per-epoch column stands for ``metric`` while training, with its sign.

    The Recorder has the patch-level Dice of every region under the whole-volume names;
    for anything else (HD95, sensitivity …) the validation loss is reported instead.
    """
    if metric.endswith("_dice"):
        return metric, 1.0
    return "valid_loss", (1.0 if direction == "minimize" else -1.0)


def _run_folder(trials_folder: Path, name: str) -> Path | None:
    found = sorted(trials_folder.glob(f"{name}-*"))
    return found[-1] if found else None


def _metric_value(run: Path, metric: str) -> float:
    path = run / "metrics.json"
    if not path.exists():
        raise BraverError("has no metrics.json", run, "the trial was not evaluated")
    metrics = json.loads(path.read_text())
    if metric not in metrics:
        known = [k for k, v in metrics.items() if isinstance(v, int | float)]
        raise BraverError(f"has no {metric!r}", path, f"choose one of {', '.join(known)}")
    return float(metrics[metric])


def _count(study) -> int:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _epoch(pruning: OptunaPruning) -> Any:
    return pruning.pruned["epoch"] if pruning.pruned else "?"

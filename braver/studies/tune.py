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

The search space is TOML over dotted recipe keys::

    "optim.lr" = { low = 1e-4, high = 0.05, log = true }     # float range (log scale)
    "optim.momentum_epochs" = { low = 1, high = 10 }        # integer range (an int key)
    "model.init" = ["paper", "he"]                           # choices
    [phantom]                                               # replaces keys on the phantoms
    "data.batch_size" = [8, 16, 32]

Every value a key can take is checked by the recipe schema (``braver.recipe``) before the
study starts, so an unknown key or a wrong type is one error naming the key and the file.
"""

from __future__ import annotations

import json
import math
import os
import socket
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from fastai.callback.core import Callback, CancelFitException
from rich.console import Console

from braver.atomic import atomic_path, write_json, write_text
from braver.errors import BraverError
from braver.recipe import PROFILES, Recipe, recipe_from_dict

PRUNED_FILE = "pruned.json"  # in a pruned trial's run folder
STUDY_DB = "study.db"
RANGE_KEYS = ("low", "high", "log", "step")
PRUNERS = ("median", "halving", "none")
# whole-volume metric optimised when none is named, by recipe kind
DEFAULT_METRIC = {"brain": "whole_tumor_dice", "liver": "tumor_dice"}
HEARTBEAT_SECONDS = 30  # a trial's process writes a heartbeat this often …
GRACE_SECONDS = 180  # … and one silent for this long is marked FAIL by the next process


# ---------------------------------------------------------------------------------------------
# the search space


@dataclass(frozen=True)
class SpaceParam:
    """One searched recipe key: a float or integer range, or a list of choices."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The trial's value for this key (Optuna's ``suggest_*``)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_categorical(self.key, list(self.choices))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this key can take (the base recipe's value, for trial 0)."""
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.step:
            steps = (value - self.low) / self.step
            if abs(steps - round(steps)) > 1e-9:
                return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"key": self.key, "choices": list(self.choices)}
        out = {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step:
            out["step"] = self.step
        return out

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        scale = " (log)" if self.log else ""
        return f"{self.key} in [{self.low:g}, {self.high:g}]{scale}"


@dataclass
class SearchSpace:
    """The searched keys of a study and the file they came from."""

    params: list[SpaceParam]
    source: str | None = None

    def suggest(self, trial) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}

    def to_dict(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.params]

    def without(self, keys: Sequence[str]) -> tuple[SearchSpace, list[str]]:
        """The space less ``keys``, and which of them it had."""
        dropped = [p.key for p in self.params if p.key in keys]
        kept = [p for p in self.params if p.key not in keys]
        return SearchSpace(kept, self.source), dropped

    def base_values(self, recipe: Recipe) -> dict[str, Any]:
        """The recipe's own values of the searched keys that lie inside the space."""
        values = {}
        for param in self.params:
            value = _get_dotted(recipe.to_dict(), param.key)
            if param.contains(value):
                values[param.key] = value
        return values


def default_space_path() -> Path:
    """The shipped search space (``recipes/tune_space.toml``)."""
    from importlib.resources import files

    return Path(str(files("braver.recipes").joinpath("tune_space.toml")))


def load_space(path: str | Path, recipe: Recipe, profile: str | None = None) -> SearchSpace:
    """Read a search-space file and check every value it can give against ``recipe``'s schema.

    ``profile`` (e.g. ``phantom``) merges that table of the file over its base keys.
    """
    path = Path(path)
    if not path.exists():
        raise BraverError("search space not found", path, "pass a .toml file with --space")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise BraverError(f"is not valid TOML ({error})", path, "fix the syntax") from None
    profiles = {name: data.pop(name) for name in PROFILES if name in data}
    specs = dict(_flatten(data))
    if profile is not None and profile in profiles:
        if not isinstance(profiles[profile], dict):
            raise BraverError(f"[{profile}] must be a table", path, "fix the search space")
        specs.update(_flatten(profiles[profile]))
    if not specs:
        raise BraverError(
            "defines no parameter to search",
            path,
            'add e.g. "optim.lr" = { low = 1e-4, high = 0.05, log = true }',
        )
    params = [_parse_param(key, spec, recipe, path) for key, spec in specs.items()]
    return SearchSpace(params, str(path))


def _flatten(table: dict, prefix: str = ""):
    """``{"optim": {"lr": {...}}}`` and ``{"optim.lr": {...}}`` alike → ``("optim.lr", {...})``."""
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and not any(k in value for k in RANGE_KEYS):
            yield from _flatten(value, f"{key}.")
        else:
            yield key, value


def _parse_param(key: str, spec: Any, recipe: Recipe, path: Path) -> SpaceParam:
    if isinstance(spec, list):
        if not spec:
            raise BraverError(f"{key} lists no choice", path, "give at least one value")
        for value in spec:
            if isinstance(value, list | dict):
                raise BraverError(
                    f"{key}: a choice must be a number, a string or a boolean, not {value!r}",
                    path,
                    "fix the search space",
                )
            apply_params(recipe, {key: value}, source=path)  # unknown key, type, range
        return SpaceParam(key, "choice", choices=tuple(spec))
    if not isinstance(spec, dict):
        raise BraverError(
            f"{key} = {spec!r} must be a range {{ low = …, high = … }} or a list of choices",
            path,
            "fix the search space (fixed values belong in the recipe or --set)",
        )
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown:
        raise BraverError(
            f"{key}: unknown range field {unknown[0]!r}",
            path,
            f"a range has {', '.join(RANGE_KEYS)}",
        )
    if "low" not in spec or "high" not in spec:
        raise BraverError(f"{key}: a range needs both low and high", path, "add the missing one")
    low, high = spec["low"], spec["high"]
    log, step = spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BraverError(f"{key}: {name} = {value!r} must be a number", path, "fix the range")
    if not isinstance(log, bool):
        raise BraverError(f"{key}: log = {log!r} must be true or false", path, "fix the range")
    if not low < high:
        raise BraverError(f"{key}: low = {low!r} must be below high = {high!r}", path, "fix it")
    if log and low <= 0:
        raise BraverError(f"{key}: a log range needs low > 0, not {low!r}", path, "fix it")
    if log and step is not None:
        raise BraverError(f"{key}: a log range takes no step", path, "drop log or step")
    if step is not None and step <= 0:
        raise BraverError(f"{key}: step = {step!r} must be positive", path, "fix it")
    try:
        current = _get_dotted(recipe.to_dict(), key)
    except (KeyError, TypeError):
        current = None  # an unknown key: the recipe schema names it just below
    if current is not None and (isinstance(current, bool) or not isinstance(current, int | float)):
        raise BraverError(
            f"{key} is not a number, so it takes a list of choices, not a range",
            path,
            f'write e.g. "{key}" = [{_literal(current)}]',
        )
    lowest = apply_params(recipe, {key: low}, source=path)  # unknown key, type, range
    apply_params(recipe, {key: high}, source=path)
    value = _get_dotted(lowest.to_dict(), key)
    kind = "int" if isinstance(value, int) else "float"
    if kind == "int" and step is not None and not isinstance(step, int):
        raise BraverError(f"{key}: step = {step!r} must be an integer", path, "fix the range")
    return SpaceParam(key, kind, low=low, high=high, log=log, step=step)


def apply_params(
    recipe: Recipe,
    params: dict[str, Any],
    *,
    source: str | Path | None = None,
    name: str | None = None,
) -> Recipe:
    """``recipe`` with dotted keys replaced (checked by the recipe schema; errors name
    ``source``), renamed to ``name`` when given."""
    data = recipe.to_dict()
    if name is not None:
        data["name"] = name
    overrides = [f"{key}={_literal(value)}" for key, value in params.items()]
    return recipe_from_dict(data, source, overrides=overrides)


def _literal(value: Any) -> str:
    """A value as TOML text (for ``recipe_from_dict``'s overrides)."""
    return json.dumps(value)


def _get_dotted(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


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


@dataclass
class TuneResult:
    folder: Path
    study: Any  # optuna.Study
    rows: list[dict] = field(default_factory=list)
    best: dict[str, Any] | None = None


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
    _say(
        console,
        f"[bold]Study[/] {study_name} ({_safe_url(url)}): {metric} ({direction}), "
        f"{done} of {trials} trials finished"
        + (f", {len(interrupted)} interrupted marked failed" if interrupted else ""),
    )
    for param in space.params:
        _say(console, f"  {param.describe()}")
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
            _say(console, "  ".join(f"{k} = {_show(v)}" for k, v in params.items()))
        pruning = OptunaPruning(trial, monitor, sign)
        try:
            run = train(trial_recipe, trials_folder, [pruning])
        except optuna.TrialPruned:
            run = _run_folder(trials_folder, name)
            if run is not None:
                trial.set_user_attr("run", str(run))
                write_json(run / PRUNED_FILE, {"trial": trial.number, **(pruning.pruned or {})})
            _say(console, f"[yellow]trial {trial.number} pruned[/] after epoch {_epoch(pruning)}")
            raise
        except BraverError as error:  # e.g. a diverged run: this trial fails, the study goes on
            run = _run_folder(trials_folder, name)
            if run is not None:
                trial.set_user_attr("run", str(run))
            trial.set_user_attr("error", str(error))
            _say(console, f"[yellow]trial {trial.number} failed[/]: {error}")
            raise
        trial.set_user_attr("run", str(run))
        value = _metric_value(run, metric)
        _say(console, f"[bold]trial {trial.number}[/] {metric} [bold]{value:.4f}[/]")
        return value

    def after_trial(study, trial) -> None:
        write_trials(study, folder, metric, console=None)

    remaining = trials - done
    if remaining > 0:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout,
            catch=(BraverError,),
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished_states), after_trial],
            gc_after_trial=True,
        )
    best = BestRecipe(recipe, space, best_tables or {}, best_command)
    return write_results(study, folder, best, metric, url=url, console=console)


def _open_study(url: str, name: str, direction: str, pruner, seed, trials: int):
    import optuna

    engine_kwargs = {}
    if url.startswith("sqlite"):
        # trials of several processes write to one file: wait for the lock instead of failing
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
            )
    except Exception as error:  # a bad URL, a missing driver, an unreachable server
        raise BraverError(
            f"cannot open the study storage {_safe_url(url)} ({type(error).__name__}: {error})",
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
            f"study {name!r} ({_safe_url(url)}) {study.direction.name.lower()}s its metric, "
            f"and --metric asks to {direction} it",
            None,
            "use the study's own --metric or a new --study name",
        )
    return study, storage, created


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
                f"study {name!r} ({_safe_url(url)}) was started with other settings ({what})",
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
    return f"{where.removeprefix('recipe.')}: {_show(old)} then, {_show(new)} now"


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


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _safe_url(url: str) -> str:
    """The storage URL with any password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


# ---------------------------------------------------------------------------------------------
# results


def trial_rows(study, metric: str) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, duration, parameters, run folder."""
    keys: list[str] = []
    for trial in study.trials:
        keys += [k for k in trial.params if k not in keys]
    rows = []
    for trial in study.trials:
        attrs = trial.user_attrs
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": trial.state.name.lower(),
            metric: trial.value,
            "seconds": round(duration, 1) if duration is not None else None,
        }
        row.update({k: trial.params.get(k) for k in keys})
        steps = trial.intermediate_values
        row["epochs"] = len(steps) if steps else None
        row["run"] = Path(attrs["run"]).name if attrs.get("run") else None
        if attrs.get("baseline"):
            row["note"] = "recipe's values"
        elif attrs.get("interrupted"):
            row["note"] = "interrupted"
        elif attrs.get("error"):
            row["note"] = attrs["error"]
        rows.append(row)
    return rows


def write_trials(study, folder: Path, metric: str, console: Console | None) -> list[dict]:
    """``trials.csv`` (full run paths) and, with a console, the table."""
    from braver.report import csv_text, rich_table

    rows = trial_rows(study, metric)
    full = []
    for row, trial in zip(rows, study.trials, strict=True):
        # the full path, and the machine it is on when several share the study
        full.append(
            {**row, "run": trial.user_attrs.get("run"), "host": trial.user_attrs.get("host")}
        )
    write_text(folder / "trials.csv", csv_text(full))
    if console is not None and rows:
        console.print(rich_table(rows, f"Study {study.study_name}: {metric}"))
    return rows


@dataclass
class BestRecipe:
    """What best.toml is made of: the base recipe and the space, tables written after the
    recipe's own, and the command that trains it."""

    recipe: Recipe
    space: SearchSpace
    tables: dict[str, dict] = field(default_factory=dict)
    command: str | None = None

    def write(self, path: Path, trial, metric: str, study_name: str) -> Path:
        """The base recipe with the trial's values, a header saying where it came from."""
        from braver.recipe import dump_toml

        recipe = apply_params(
            self.recipe, trial.params, source=self.space.source, name=f"{self.recipe.name}-tuned"
        )
        command = self.command or "braver train best.toml [--data DATA]"
        header = [
            f"# braver tune: the best trial of study {study_name!r} (trial {trial.number}),",
            f"# {metric} = {trial.value:.4f} on the validation cases of its run folder",
            f"# {trial.user_attrs.get('run', '')}",
            "# searched: " + ", ".join(f"{k} = {_show(v)}" for k, v in trial.params.items()),
            f"# train it with: {command}",
            "",
        ]
        data = recipe.to_dict()
        for name, table in self.tables.items():  # merged into the recipe's own, if it has one
            data[name] = {**(data.get(name) or {}), **table}
        return write_text(path, "\n".join(header) + dump_toml(data))


def write_results(
    study,
    folder: Path,
    best_recipe: BestRecipe,
    metric: str,
    *,
    url: str,
    console: Console | None = None,
) -> TuneResult:
    """The table, trials.csv, history.png, importances.png, best.toml and tune.json."""
    from optuna.trial import TrialState

    rows = write_trials(study, folder, metric, console)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    notes = []
    if complete:
        trial = study.best_trial
        best = {
            "trial": trial.number,
            metric: trial.value,
            "params": trial.params,
            "run": trial.user_attrs.get("run"),
        }
        best_recipe.write(folder / "best.toml", trial, metric, study.study_name)
        plot_history(study, metric, folder / "history.png")
        importances = param_importances(study)
        if importances:
            from braver.report import plot_bars

            plot_bars(
                [{"parameter": k, "importance": v} for k, v in importances.items()],
                ["importance"],
                folder / "importances.png",
                label_key="parameter",
                title=f"Parameter importances for {metric} (fANOVA, {len(complete)} trials)",
            )
        else:
            notes.append("importances.png needs two finished trials that differ")
        best["importances"] = importances
    else:
        notes.append("no trial finished: no best.toml and no plots")
    counts = {s.name.lower(): 0 for s in TrialState}
    for trial in study.trials:
        counts[trial.state.name.lower()] += 1
    write_json(
        folder / "tune.json",
        {
            "study": study.study_name,
            "storage": _safe_url(url),
            "metric": metric,
            "direction": study.direction.name.lower(),
            "space": best_recipe.space.to_dict(),
            "space_file": best_recipe.space.source,
            "trials": {k: v for k, v in counts.items() if v},
            "best": best,
        },
    )
    if console is not None:
        for note in notes:
            _say(console, f"[yellow]{note}[/]")
        if best is not None:
            _say(
                console,
                f"[bold green]Best[/] trial {best['trial']}: {metric} [bold]{best[metric]:.4f}[/]"
                f"  → {folder / 'best.toml'}",
            )
    return TuneResult(folder, study, rows, best)


def param_importances(study) -> dict[str, float]:
    """Optuna's fANOVA importances of the searched keys ({} with too few trials)."""
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError):
        return {}


def plot_history(study, metric: str, out_png: Path) -> Path:
    """Each complete trial's value by trial number, and the best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    numbers = [t.number for t in trials]
    values = [t.value for t in trials]
    pick = min if study.direction.name == "MINIMIZE" else max
    best = [pick(values[: i + 1]) for i in range(len(values))]
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.plot(numbers, values, "o", label=metric, alpha=0.8)
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if pruned:
        ax.plot([], [], " ", label=f"{len(pruned)} pruned (not shown)")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Study {study.study_name}: optimisation history", fontsize=10)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return out_png

"""What a ``braver tune`` study writes: the trials table, trials.csv, plots, best.toml, tune.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from braver.atomic import atomic_path, write_json, write_text
from braver.recipe import Recipe
from braver.studies.search_space import SearchSpace, apply_params


def show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def safe_url(url: str) -> str:
    """The storage URL with any password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


@dataclass
class TuneResult:
    folder: Path
    study: Any  # optuna.Study
    rows: list[dict] = field(default_factory=list)
    best: dict[str, Any] | None = None


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
            "# searched: " + ", ".join(f"{k} = {show_value(v)}" for k, v in trial.params.items()),
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
            "storage": safe_url(url),
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
            say(console, f"[yellow]{note}[/]")
        if best is not None:
            say(
                console,
                f"[bold green]Best[/] trial {best['trial']}: {metric} [bold]{best[metric]:.4f}[/]"
                f"  → {folder / 'best.toml'}",
            )
    return TuneResult(folder, study, rows, best)


def param_importances(study) -> dict[str, float]:
    """Optuna's fANOVA importances of the searched keys; {} below two finished trials with
    different values (Optuna would share the importance out equally: a figure that says
    nothing)."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len({t.value for t in complete}) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError):
        return {}


def history_figure(study, metric: str):
    """Each complete trial's value by trial number, and the best so far (a matplotlib Figure)."""
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
    return figure


def plot_history(study, metric: str, out_png: Path) -> Path:
    """``history_figure`` as a PNG."""
    figure = history_figure(study, metric)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return out_png

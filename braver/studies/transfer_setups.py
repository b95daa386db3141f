"""The setups of a transfer study: what each freezes, how its output layers start.

A setup is named by a freeze value (``--freeze`` or the recipe's ``transfer.setups``):
presets (``both``, ``none``), groups and layer names (:mod:`braver.models.naming`), a comma
list of them, or one of the seed study's four InputCascadeCNN setups (:data:`SEED_SETUPS`),
which train only output layers (or everything) and carry the seed's own figures. See
:mod:`braver.studies.transfer` for what each freeze value means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from braver.errors import BraverError
from braver.recipe import TransferSetupSpec

PRESETS = {"both": ["local", "global"], "none": []}
SetupSpec = TransferSetupSpec  # one setup as written in the recipe or on the command line


@dataclass(frozen=True)
class SeedSetup:
    """One row of the seed study's transfer table (an InputCascadeCNN, brain → liver CT).

    ``trains``: the output layers trained, every other layer frozen; ``None``: everything
    trains. The figures are the seed's, from its slides (rounded there).
    """

    seed_name: str
    trains: tuple[str, ...] | None
    trainable_parameters: int
    seconds_per_epoch: float
    train_accuracy: float
    valid_accuracy: float


#: the seed's four setups by the freeze value that runs them
SEED_SETUPS = {
    "seed-local-output": SeedSetup("local scale", ("second.output",), 600_000, 4.0, 0.52, 0.48),
    "seed-global-output": SeedSetup("global scale", ("first.output",), 600_000, 4.0, 0.66, 0.61),
    "seed-both-outputs": SeedSetup(
        "global & local scale", ("first.output", "second.output"), 1_200_000, 9.5, 0.87, 0.85
    ),
    "seed-e2e": SeedSetup("E2E", None, 2_200_000, 30.0, 0.89, 0.86),
}


@dataclass
class Setup:
    """A setup resolved against a model: the groups it freezes, how its outputs start."""

    name: str
    freeze: list[str]
    spec: str
    baseline: bool = False
    keep_outputs: list[str] = field(default_factory=list)  # kept from the brain, not new
    class_map: str | None = None  # None: the recipe's transfer.class_map
    seed: SeedSetup | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "setup"


def is_cascade(model) -> bool:
    return hasattr(model, "first") and hasattr(model, "second")


def resolve_freeze(model, value: str) -> list[str]:
    """The groups one ``--freeze`` value freezes (presets expanded, every name checked)."""
    from braver.models.naming import group_names, resolve_group, weight_layers

    groups: list[str] = []
    for name in (n.strip() for n in value.split(",")):
        if not name:
            continue
        for group in PRESETS.get(name, [name]):
            try:
                resolve_group(model, group)
            except BraverError as error:
                raise BraverError(
                    f"--freeze {name!r}: not a group or layer of this "
                    f"{model.config['name']} network",
                    hint=f"presets: both, none{_seed_hint(model)}; "
                    f"groups: {', '.join(group_names(model))}; "
                    f"layers: {', '.join(weight_layers(model))}"
                    + (f" ({error})" if "matches several" in str(error) else ""),
                ) from None
            if group not in groups:
                groups.append(group)
    return groups


def _seed_hint(model) -> str:
    return f", {', '.join(SEED_SETUPS)}" if is_cascade(model) else ""


def seed_setup(model, value: str, name: str | None = None) -> Setup:
    """The seed study's setup ``value`` (a key of :data:`SEED_SETUPS`) on a cascade: every
    feature layer of both networks frozen, and the output layers it does not train too."""
    seed = SEED_SETUPS[value]
    if not is_cascade(model):
        raise BraverError(
            f"--freeze {value!r} is a setup of the seed study's InputCascadeCNN, and this run's "
            f"network is a {model.config['name']}",
            hint="start from a cascade brain run (braver train brain --set "
            "model.name=input_cascade), or freeze local, global, both or none",
        )
    outputs = ["first.output", "second.output"]
    features = [f"{net}.{path}" for net in ("first", "second") for path in ("local", "global")]
    frozen_outputs = [] if seed.trains is None else [o for o in outputs if o not in seed.trains]
    return Setup(
        name or value,
        [] if seed.trains is None else [*features, *frozen_outputs],
        value,
        keep_outputs=frozen_outputs,
        class_map="keep",
        seed=seed,
    )


def plan_setups(
    model,
    freeze: list[str] | None,
    baseline: bool,
    settings,
) -> list[Setup]:
    """The setups to run: the ``--freeze`` values (or the recipe's defaults for this
    architecture), then the baseline when asked for. Every name is checked first."""
    if freeze:
        specs = [SetupSpec(v) for v in freeze]
    else:
        kind = "cascade" if is_cascade(model) else "twopath"
        specs = getattr(settings.transfer.setups, kind)
        baseline = baseline or settings.baseline
        if not specs and not baseline:
            raise BraverError(
                f"the recipe lists no default setups for a {kind} network",
                settings.source,
                "pass --freeze GROUP, or add transfer.setups." + kind,
            )
    setups = []
    for spec in specs:
        if spec.freeze.strip() in SEED_SETUPS:
            setups.append(seed_setup(model, spec.freeze.strip(), spec.name))
            continue
        groups = resolve_freeze(model, spec.freeze)
        name = spec.name or f"freeze {spec.freeze.replace(',', '+')}"
        setups.append(Setup(name, groups, spec.freeze))
    if baseline:
        setups.append(Setup("baseline (from scratch)", [], "none", baseline=True))
    names = [s.name for s in setups]
    for i, setup in enumerate(setups):  # repeated names get a number
        if names.count(setup.name) > 1:
            setup.name = f"{setup.name} #{names[: i + 1].count(setup.name)}"
    return setups


__all__ = [
    "PRESETS",
    "SEED_SETUPS",
    "SeedSetup",
    "Setup",
    "SetupSpec",
    "is_cascade",
    "plan_setups",
    "resolve_freeze",
    "seed_setup",
]

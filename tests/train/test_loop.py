import pytest
import torch

from braver.recipe import load_recipe, shipped_recipe
from braver.train import loop

TINY = [
    "data.mode=tile",
    "data.tile=4",
    "data.batch_size=2",
    "data.validation_fraction=0.25",
    "data.validation_patches=4",
    "stage1.epochs=1",
    "stage1.patches_per_epoch=4",
    "stage2.epochs=1",
    "stage2.patches_per_epoch=4",
    "cascade.first_epochs=1",
    "cascade.first_patches_per_epoch=4",
    "model.dropout=0.0",
]


@pytest.mark.slow
def test_cascade_trains_first_network_then_keeps_it_frozen(tiny_cache, tmp_path, monkeypatch):
    snapshots = {}
    save = loop.save_checkpoint

    def remember(folder, model, state):
        save(folder, model, state)
        key = ",".join(state["finished"])
        snapshots.setdefault(key, {k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(loop, "save_checkpoint", remember)
    recipe = load_recipe(shipped_recipe("brain"), [*TINY, "model.name=mf_cascade"])
    torch.manual_seed(0)
    folder = loop.train_from_recipe(recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False)
    after_first = snapshots["first"]
    final = snapshots["first,stage1,stage2"]
    for name, value in final.items():
        if name.startswith("first."):
            assert torch.equal(value, after_first[name]), name
    changed = [
        n for n in final if n.startswith("second.") and not torch.equal(final[n], after_first[n])
    ]
    assert changed
    history = (folder / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["first", "stage1", "stage2"]


def test_a_diverged_run_is_an_error_and_writes_no_weights(tiny_cache, tmp_path, monkeypatch):
    """A NaN loss stops the fit; the command says so instead of reporting Dice 0."""
    from braver.errors import BraverError
    from braver.runs import WEIGHTS_FILE
    from braver.train import learner

    original = learner.fit_stage

    def fit_then_poison(learn, *args, **kwargs):
        original(learn, *args, **kwargs)
        with torch.no_grad():
            next(learn.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(learner, "fit_stage", fit_then_poison)
    recipe = load_recipe(shipped_recipe("brain"), TINY)
    with pytest.raises(BraverError, match="diverged"):
        loop.train_from_recipe(recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False)
    assert not list(tmp_path.glob(f"*/{WEIGHTS_FILE}"))


@pytest.mark.slow
def test_flips_are_announced_off_for_an_even_input_size(tiny_cache, tmp_path):
    import io

    from rich.console import Console

    out = io.StringIO()
    recipe = load_recipe(
        shipped_recipe("brain"),
        [*TINY, "model.name=local_cascade", "data.flip=true", "cascade.first_epochs=0"],
    )
    loop.train_from_recipe(
        recipe,
        cache=tiny_cache.root,
        out=tmp_path,
        evaluate=False,
        console=Console(file=out, width=200),
        progress=False,
    )
    text = out.getvalue()
    assert "data.flip is off for inputs 33+56" in text and "even input size" in text

"""A braver Learner is a fastai Learner: the fastai calls a notebook user makes all work."""

import matplotlib
import numpy as np
import pytest
import torch

from braver import (
    DualStage,
    PaperSchedule,
    braver_learner,
    load_run,
    patch_datablock,
)
from braver.recipe import OptimSection

matplotlib.use("Agg")


@pytest.fixture
def learn(tiny_cache, tmp_path):
    torch.manual_seed(0)
    dls = patch_datablock("twopath", tile=4, valid_pct=0.25).dataloaders(
        tiny_cache, bs=4, patches_per_epoch=8, valid_patches=8
    )
    return braver_learner(dls, "twopath", dropout=0.0, path=tmp_path, progress=False)


def test_datablock_splits_by_case_and_batches_are_typed(learn):
    dls = learn.dls
    train = {c.case_id for c in dls.train.cases}
    valid = {c.case_id for c in dls.valid.cases}
    assert len(valid) == 1 and not train & valid and len(train | valid) == 4
    local, label = dls.one_batch()
    assert type(local).__name__ == "TensorPatch" and type(label).__name__ == "TensorPatchMask"
    assert local.shape == (4, 4, 36, 36) and label.shape == (4, 4, 4)
    assert dls.n_inp == 1


def test_datablock_cross_validation_folds_validate_every_case_once(tiny_cache):
    from braver.data.sampling import split_cases

    valids = []
    for fold in (0, 1):
        dls = patch_datablock("twopath", tile=4, fold=fold, folds=2).dataloaders(
            tiny_cache, bs=4, patches_per_epoch=8, valid_patches=8
        )
        valid = [c.case_id for c in dls.valid.cases]
        ids = sorted([c.case_id for c in dls.train.cases] + valid)
        assert valid == split_cases(ids, 0.25, 0, fold=fold, folds=2)[1]
        valids.append(valid)
    assert [len(v) for v in valids] == [2, 2]  # the fold, not valid_pct's single case
    assert sorted(valids[0] + valids[1]) == ids


def test_show_batch_draws_each_scale_with_its_labels(tiny_cache):
    dls = patch_datablock("input_cascade").dataloaders(
        tiny_cache, bs=4, patches_per_epoch=8, valid_patches=4
    )
    figure = dls.show_batch(max_n=3)
    # 3 rows; columns: 33x33, 65x65, the label, the labels around it
    assert len(figure.axes) == 3 * 4
    assert [a.get_title() for a in figure.axes[:4]] == [
        "33×33",
        "65×65",
        "label",
        "labels around it",
    ]


def test_show_results_draws_truth_beside_prediction(learn):
    learn.fit(1)
    figure = learn.show_results(max_n=2)
    figure = figure or matplotlib.pyplot.gcf()
    titles = [a.get_title() for a in figure.axes]
    assert "truth" in titles and "prediction" in titles


def test_freeze_trains_only_the_output_layer_and_unfreeze_everything(learn):
    from braver.models.naming import parameter_count, trainable_parameters

    model = learn.model
    learn.freeze()
    output = sum(p.numel() for n, p in model.named_parameters() if n.startswith("output."))
    assert trainable_parameters(model) == output
    learn.freeze_to(1)  # local frozen, global and output trained
    local = sum(p.numel() for n, p in model.named_parameters() if n.startswith("local."))
    assert trainable_parameters(model) == parameter_count(model) - local
    learn.unfreeze()
    assert trainable_parameters(model) == parameter_count(model)


def test_lr_find_and_fit_one_cycle(learn):
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    suggestion = learn.lr_find(start_lr=1e-5, end_lr=1, num_it=8, show_plot=False)
    assert 0.99e-5 <= suggestion.valley <= 1
    for name, value in learn.model.state_dict().items():  # lr_find puts the weights back
        assert torch.equal(value, before[name]), name
    learn.fit_one_cycle(1, 0.01)
    assert len(learn.recorder.values) == 1
    assert any(not torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())


def test_dual_stage_as_a_callback_on_a_plain_fit(learn):
    from fastai.callback.core import Callback

    from braver.models.naming import parameter_count, trainable_parameters

    seen = []

    class Spy(Callback):
        order = 90

        def before_train(self):
            model = self.learn.model
            seen.append((self.learn.stage, self.dls.train.sampling, trainable_parameters(model)))

    learn.fit(3, cbs=[DualStage(2, 1), PaperSchedule(learn.optim), Spy()])
    output = sum(p.numel() for n, p in learn.model.named_parameters() if n.startswith("output."))
    total = parameter_count(learn.model)
    assert seen == [
        ("stage1", "balanced", total),
        ("stage1", "balanced", total),
        ("stage2", "natural", output),
    ]
    assert trainable_parameters(learn.model) == total  # what stage 2 froze is given back


def test_test_dl_and_get_preds(learn, tiny_cache):
    dl = learn.dls.test_dl([tiny_cache.case("tiny00")])
    assert not dl.training and [c.case_id for c in dl.cases] == ["tiny00"]
    probs, truth = learn.get_preds(dl=dl)
    assert probs.shape == (8, 4, 4, 4) and truth.shape == (8, 4, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(8, 4, 4))


def test_save_run_and_load_run_give_the_same_learner(learn, tmp_path):
    learn.fit(1)
    folder = learn.save_run(tmp_path / "run", kind="brain")
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "run.json", "recipe.toml"} <= names
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pth"))
    again = load_run(folder, progress=False)
    for name, value in again.network.state_dict().items():
        assert torch.equal(value, learn.network.state_dict()[name]), name
    image = np.asarray(learn.dls.train.cache.case("tiny00").image)
    torch.testing.assert_close(
        torch.from_numpy(again.predict_volume(image)),
        torch.from_numpy(learn.predict_volume(image)),
    )
    assert again.run_info.validation_cases == [c.case_id for c in learn.dls.valid.cases]


def test_evaluate_volumes_scores_the_validation_cases(learn):
    learn.fit(1)
    result = learn.evaluate_volumes()
    assert [row["case"] for row in result["cases"]] == [c.case_id for c in learn.dls.valid.cases]
    assert 0 <= result["whole_tumor_dice"] <= 1


def test_optim_defaults_are_the_papers(learn):
    assert learn.optim == OptimSection()
    assert learn.opt_func.keywords["mom"] == 0.5

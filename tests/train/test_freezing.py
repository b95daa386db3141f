import pytest
import torch

from braver.data.blocks import patch_dataloaders, set_sampling
from braver.errors import BraverError
from braver.models import create_model
from braver.models.naming import parameter_count, resolve_group, trainable_parameters
from braver.recipe import OptimSection
from braver.train import FreezeGroups, braver_learner, freeze_groups, train_only
from braver.train.callbacks import DropFrozenGrads, unfreeze_groups


def _learner(cache, model, l2=1e-2):
    ids = cache.case_ids
    dls = patch_dataloaders(
        cache, ids[:3], ids[3:], model.input_sizes, tile=4, bs=2, train_patches=4, valid_patches=2
    )
    optim = OptimSection(lr=0.01, l2=l2, momentum_start=0.9, momentum_end=0.9)
    learn = braver_learner(dls, model, optim=optim, tile_mode=True, progress=False)
    return learn, optim


def fit_stage(learn, optim, epochs, cbs=()):
    learn.fit(epochs, lr=optim.lr, cbs=list(cbs), reset_opt=True)


def test_freeze_groups_by_name():
    model = create_model("twopath")
    total = parameter_count(model)
    local = sum(p.numel() for n, p in model.named_parameters() if n.startswith("local."))
    assert freeze_groups(model, ["local"]) == total - local
    assert unfreeze_groups(model, ["local"]) == total
    output = sum(p.numel() for n, p in model.named_parameters() if n.startswith("output."))
    assert train_only(model, ["output"]) == output == trainable_parameters(model)
    with pytest.raises(BraverError, match="no group or layer named 'locl'"):
        freeze_groups(model, ["locl"])


def test_frozen_parameters_are_bit_identical_after_stage_two(tiny_cache):
    torch.manual_seed(0)
    model = create_model("twopath", dropout=0.0)
    learn, optim = _learner(tiny_cache, model)
    fit_stage(learn, optim, 1)  # stage 1 leaves zero-filled grads and momentum behind
    assert all(p.grad is not None for p in model.parameters())
    train_only(model, ["output"])
    set_sampling(learn.dls, "natural")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit_stage(learn, optim, 1)
    output = set(resolve_group(model, "output"))
    for name, param in model.named_parameters():
        if name in output:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name


def test_without_dropping_grads_weight_decay_moves_frozen_weights(tiny_cache):
    """The fastai pitfall the callbacks guard against (a test that fails without the fix)."""
    torch.manual_seed(0)
    model = create_model("twopath", dropout=0.0)
    learn, optim = _learner(tiny_cache, model)
    learn.remove_cb(DropFrozenGrads)
    fit_stage(learn, optim, 1)
    for name, param in model.named_parameters():
        if not name.startswith("output."):
            param.requires_grad_(False)  # frozen the naive way: grads stay as zero tensors
    before = model.local.conv1.weight.detach().clone()
    fit_stage(learn, optim, 1)
    assert not torch.equal(model.local.conv1.weight, before)


def test_freeze_groups_callback_keeps_groups_fixed_for_one_fit(tiny_cache):
    torch.manual_seed(0)
    model = create_model("twopath", dropout=0.0)
    learn, optim = _learner(tiny_cache, model)
    fit_stage(learn, optim, 1)
    before = model.global_path.conv1.weight.detach().clone()
    fit_stage(learn, optim, 1, cbs=[FreezeGroups(["global"])])
    assert torch.equal(model.global_path.conv1.weight, before)
    assert trainable_parameters(model) == parameter_count(model)  # unfrozen after the fit

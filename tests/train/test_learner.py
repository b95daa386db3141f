import pytest
import torch
import torch.nn.functional as F

from braver.models import create_model
from braver.recipe import OptimSection, load_recipe, shipped_recipe
from braver.train import PixelCrossEntropy, epoch_schedules, plan_phases
from braver.train.learner import fast_conv_backward


def test_learning_rate_decays_per_epoch_and_momentum_rises():
    optim = OptimSection(lr_decay=0.1, momentum_start=0.5, momentum_end=0.9, momentum_epochs=4)
    scheds = epoch_schedules(optim, 0.005, epochs=4)
    # pct of the fit → epoch: 0 → 0, 0.3 → 1.2, 0.99 → 3.96
    assert scheds["lr"](0.0) == pytest.approx(0.005)
    assert scheds["lr"](0.3) == pytest.approx(0.0005)
    assert scheds["lr"](0.99) == pytest.approx(0.000005)
    assert scheds["mom"](0.0) == pytest.approx(0.5)
    assert scheds["mom"](0.5) == pytest.approx(0.7)
    assert scheds["mom"](1.0) == pytest.approx(0.9)
    # a resumed fit continues the schedule: epochs 2 and 3 of 4
    resumed = epoch_schedules(optim, 0.005, epochs=4, start_epoch=2)
    assert resumed["lr"](0.0) == pytest.approx(0.005 * 0.01)
    assert resumed["mom"](0.0) == pytest.approx(0.7)


def test_pixel_cross_entropy_flattens_tiles_and_patches():
    torch.manual_seed(0)
    loss = PixelCrossEntropy()
    logits = torch.randn(3, 4, 5, 5)
    target = torch.randint(0, 4, (3, 5, 5))
    want = F.cross_entropy(logits.permute(0, 2, 3, 1).reshape(-1, 4), target.reshape(-1))
    torch.testing.assert_close(loss(logits, target), want)
    # patch mode: (B, K, 1, 1) logits and (B, 1, 1) targets
    torch.testing.assert_close(
        loss(logits[:, :, :1, :1], target[:, :1, :1]),
        F.cross_entropy(logits[:, :, 0, 0], target[:, 0, 0]),
    )
    loss.weight = torch.tensor([0.1, 1.0, 2.0, 3.0])
    want = F.cross_entropy(
        logits.permute(0, 2, 3, 1).reshape(-1, 4), target.reshape(-1), weight=loss.weight
    )
    torch.testing.assert_close(loss(logits, target), want)


def test_fast_conv_backward_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = create_model("twopath", dropout=0.0)
    fast = create_model("twopath", dropout=0.0)
    fast.load_state_dict(plain.state_dict())
    assert "output" in fast_conv_backward(fast)
    x = torch.randn(2, 4, 40, 40)
    y = torch.randint(0, 4, (2, 8, 8))
    for model in (plain, fast):
        F.cross_entropy(model(x), y).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    # patch mode keeps the layer's own path
    patch = torch.randn(3, 4, 33, 33)
    torch.testing.assert_close(fast(patch), plain(patch))


def test_phases_of_a_cascade():
    recipe = load_recipe(shipped_recipe("brain"), ["model.name=input_cascade"])
    model = create_model("input_cascade")
    first, stage1, stage2 = plan_phases(recipe, model)
    assert first.name == "first" and first.first_network and first.sampling == "balanced"
    assert stage1.train == ["second"] and stage1.freeze == ["first"]
    assert stage2.train == ["second.output"] and stage2.sampling == "natural"


def test_phases_of_a_twopath():
    recipe = load_recipe(shipped_recipe("brain"))
    phases = plan_phases(recipe, create_model("twopath"))
    assert [p.name for p in phases] == ["stage1", "stage2"]
    assert phases[0].train == [] and phases[1].train == ["output"]

import pytest
import torch
import torch.nn.functional as F

from braver.models import create_model
from braver.recipe import OptimSection, load_recipe, shipped_recipe
from braver.speedups import TrainingConvolutions
from braver.train import PixelCrossEntropy, paper_lr, paper_momentum


def test_learning_rate_falls_linearly_to_the_decay_factor_then_stays():
    """Pylearn2's LinearDecayOverEpoch: 0.005 → 0.0005 at the saturation epoch, then flat."""
    optim = OptimSection(lr=0.005, lr_decay=0.1, lr_saturate=10)
    rates = [paper_lr(optim, optim.lr, e) for e in range(14)]
    assert rates[0] == pytest.approx(0.005)
    assert rates[1] == pytest.approx(0.005 * (1 - 0.9 / 10))
    assert rates[5] == pytest.approx(0.00275)
    assert rates[10] == pytest.approx(0.0005) and rates[13] == pytest.approx(0.0005)
    assert all(a > b for a, b in zip(rates[:10], rates[1:11], strict=True))  # never dead


def test_momentum_rises_over_its_epochs_and_the_effective_step_falls():
    optim = OptimSection(momentum_start=0.5, momentum_end=0.9, momentum_epochs=4, lr_saturate=4)
    assert [paper_momentum(optim, e) for e in (0, 2, 4, 9)] == pytest.approx([0.5, 0.7, 0.9, 0.9])
    # with matching ramps the step lr / (1 − momentum) never grows (no momentum-driven blow-up)
    steps = [paper_lr(optim, 1.0, e) / (1 - paper_momentum(optim, e)) for e in range(8)]
    assert all(a >= b - 1e-12 for a, b in zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize("name", ["brain", "liver"])
def test_shipped_recipes_keep_a_live_learning_rate(name):
    """No shipped schedule decays the rate below its floor (0.1 x lr for the paper's)."""
    import tomllib

    table = tomllib.loads(shipped_recipe(name).read_text())
    for optim_table, epochs in (
        (table["optim"], table["stage1"]["epochs"]),
        ({**table["optim"], **table["phantom"]["optim"]}, table["phantom"]["stage1"]["epochs"]),
    ):
        optim = OptimSection(**optim_table)
        rates = [paper_lr(optim, optim.lr, e) for e in range(epochs)]
        assert min(rates) >= optim.lr * optim.lr_decay * 0.999
        assert optim.lr_decay >= 0.1


def test_the_paper_recipe_starts_output_biases_at_the_log_label_frequencies():
    recipe = load_recipe(shipped_recipe("brain"))
    assert recipe.model.bias_from_frequencies and recipe.stage2.prior_shift == 1.0
    frequencies = [0.9, 0.05, 0.03, 0.02]
    from braver.train import recipe_model

    class FakeCache:
        channels = ["t1", "t1c", "t2", "flair"]

        class scheme:
            num_classes = 4

    model = recipe_model(recipe, FakeCache, frequencies)
    torch.testing.assert_close(
        model.output.bias, torch.log(torch.tensor(frequencies)), rtol=1e-6, atol=1e-6
    )


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


def test_training_convolutions_give_the_same_gradients_without_touching_the_model():
    torch.manual_seed(0)
    model = create_model("twopath", dropout=0.0)
    x = torch.randn(2, 4, 40, 40)
    y = torch.randint(0, 4, (2, 8, 8))
    grads, calls = [], []
    mode = TrainingConvolutions()
    original = mode._qualifies

    def counted(*args):
        calls.append(original(*args))
        return calls[-1]

    mode._qualifies = counted
    for context in (mode, None):
        model.zero_grad()
        if context is None:
            F.cross_entropy(model(x), y).backward()
        else:
            with context:
                F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert sum(calls) == 3  # local.conv1 (7x7), global.conv1 (13x13), output (21x21)
    for name, native in grads[1].items():
        torch.testing.assert_close(grads[0][name], native, rtol=1e-4, atol=1e-6, msg=name)
    assert type(model).forward is type(create_model("twopath")).forward
    assert all("forward" not in vars(m) for m in model.modules())  # nothing patched


def test_a_frozen_first_network_runs_without_dropout_in_training_mode():
    torch.manual_seed(0)
    model = create_model("input_cascade", dropout=0.5)
    wide = torch.randn(2, 4, 65, 65)
    model.train()
    a, b = model.first(wide), model.first(wide)
    assert not torch.equal(a, b)  # trainable: dropout is on
    model.first.requires_grad_(False)
    model.train()
    assert not model.first.training and model.second.training
    torch.testing.assert_close(model.first(wide), model.first(wide), rtol=0, atol=0)

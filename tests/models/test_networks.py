"""The four networks: the paper's parameter counts, shapes, dense equivalence, init."""

from __future__ import annotations

import json

import pytest
import torch

from braver.models import (
    InputCascadeCNN,
    LocalCascadeCNN,
    Maxout,
    MFCascadeCNN,
    TwoPathCNN,
    create_model,
    crop_inputs,
    input_padding,
    list_models,
)

ALL = list_models()


def test_four_models_are_registered():
    assert ALL == ["twopath", "input_cascade", "local_cascade", "mf_cascade"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("twopath", 651_488),
        ("input_cascade", 802_368),
        ("local_cascade", 654_368),
        ("mf_cascade", 662_513),
    ],
)
def test_weight_counts_match_the_paper(name, expected):
    """Havaei et al. count weights with K=1 and no biases; for cascades, the second CNN."""
    model = create_model(name, in_channels=4, num_classes=5, maxout_k=1, bias=False)
    network = model.second if name != "twopath" else model
    assert sum(p.numel() for p in network.parameters()) == expected
    if name != "twopath":
        assert sum(p.numel() for p in model.first.parameters()) == 651_488


def test_maxout_takes_the_max_over_each_group_of_pieces():
    layer = Maxout(1, 2, 1, pieces=2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, -1.0, 2.0, 3.0]).view(4, 1, 1, 1))
    x = torch.tensor([[-2.0, 0.5], [3.0, -1.0]]).view(1, 1, 2, 2)
    out = layer(x)
    assert out.shape == (1, 2, 2, 2)
    assert torch.equal(out[0, 0], x[0, 0].abs())
    assert torch.equal(out[0, 1], torch.maximum(2 * x[0, 0], 3 * x[0, 0]))


def test_maxout_k_multiplies_conv_maps():
    model = create_model("twopath", maxout_k=3)
    assert model.local.conv1.weight.shape == (64 * 3, 4, 7, 7)
    assert model.global_path.conv1.weight.shape == (160 * 3, 4, 13, 13)
    assert model.output.weight.shape == (4, 224, 21, 21)


@pytest.mark.parametrize("name", ALL)
def test_smoke_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).train()
    side = max(model.input_sizes)
    inputs = crop_inputs(model, torch.randn(3, 4, side, side))
    assert [i.shape[-1] for i in inputs] == list(model.input_sizes)
    logits = model(*inputs)
    assert logits.shape == (3, 5, 1, 1)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits.flatten(1), torch.tensor([0, 1, 4])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ALL)
def test_config_round_trips(name):
    model = create_model(
        "TwoPathCNN" if name == "twopath" else name,
        in_channels=2,
        num_classes=3,
        maxout_k=3,
        dropout=0.1,
        class_frequencies=[0.7, 0.2, 0.1],
    )
    config = json.loads(json.dumps(model.config))
    assert config["name"] == name
    rebuilt = create_model(**config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    assert type(rebuilt) is type(model)


@pytest.mark.parametrize("name", ALL)
def test_dense_tile_equals_patch_by_patch(name, randomise):
    """A (max + 5)-side tile gives a 6×6 map equal to the 36 per-patch outputs."""
    model = randomise(create_model(name, num_classes=5), seed=1).eval()
    k = 6
    side = max(model.input_sizes)
    big = torch.randn(2, 4, side + k - 1, side + k - 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = model(*crop_inputs(model, big))
        assert dense.shape == (2, 5, k, k)
        windows = torch.stack(
            [big[:, :, i : i + side, j : j + side] for i in range(k) for j in range(k)], dim=1
        ).flatten(0, 1)
        patches = model(*crop_inputs(model, windows)).view(2, k, k, 5).permute(0, 3, 1, 2)
    assert dense.abs().max() > 0.1  # the comparison is not between near-zero numbers
    assert (dense - patches).abs().max() < 1e-4


def test_rectangular_tiles_and_single_input(randomise):
    model = randomise(create_model("local_cascade")).eval()
    big = torch.randn(1, 4, 56 + 3, 56 + 7)
    with torch.no_grad():
        out = model(*crop_inputs(model, big))
        assert out.shape == (1, 4, 4, 8)
        assert torch.equal(model(big), out)  # one big tensor is cropped for you


def test_inputs_of_inconsistent_size_are_refused():
    model = create_model("input_cascade")
    with pytest.raises(ValueError, match="not"):
        model(torch.zeros(1, 4, 33, 33), torch.zeros(1, 4, 66, 66))
    with pytest.raises(ValueError, match="2 inputs"):
        model(torch.zeros(1, 4, 33, 33), torch.zeros(1, 4, 65, 65), torch.zeros(1))


def test_crop_offsets_follow_the_patch_convention():
    """A patch of side s centred on c covers [c - s//2, c - s//2 + s): the marked centre pixel
    of the largest patch is the centre pixel (index 16) of the 33×33 crop, even for 56."""
    for model in (TwoPathCNN(), InputCascadeCNN(), LocalCascadeCNN(), MFCascadeCNN()):
        side = max(model.input_sizes)
        big = torch.zeros(1, 1, side, side)
        big[..., side // 2, side // 2] = 1
        local = crop_inputs(model, big)[0]
        assert local.shape[-1] == 33
        assert local[0, 0, 16, 16] == 1
    assert input_padding(TwoPathCNN()) == (16, 16)
    assert input_padding(LocalCascadeCNN()) == (28, 27)
    assert input_padding(InputCascadeCNN()) == (32, 32)


def test_padding_gives_one_prediction_per_pixel():
    model = create_model("mf_cascade").eval()
    before, after = input_padding(model)
    image = torch.randn(1, 4, 10, 12)
    padded = torch.nn.functional.pad(image, (before, after, before, after))
    with torch.no_grad():
        assert model(padded).shape == (1, 4, 10, 12)


def test_paper_initialisation_and_class_prior_biases():
    model = create_model("input_cascade", num_classes=3, class_frequencies=[6, 3, 1])
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            assert p.abs().max() <= 0.005, name
        elif not name.endswith("output.bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
    for output in (model.first.output, model.second.output):
        assert torch.allclose(output.bias.softmax(0), torch.tensor([0.6, 0.3, 0.1]))
    plain = create_model("twopath")
    assert torch.equal(plain.output.bias, torch.zeros(4))


def test_dropout_acts_in_training_only(randomise):
    model = randomise(create_model("twopath", dropout=0.5))
    x = torch.randn(4, 4, 33, 33)
    with torch.no_grad():
        model.train()
        a, b = model(x), model(x)
        model.eval()
        c, d = model(x), model(x)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)
    assert type(create_model("twopath", dropout=0).local.dropout1) is torch.nn.Identity


def test_pooling_is_the_same_with_and_without_autograd(randomise):
    model = randomise(create_model("twopath")).eval()
    x = torch.randn(2, 4, 40, 40)
    with torch.no_grad():
        fast = model(x)
    slow = model(x.requires_grad_(True))
    assert torch.equal(fast, slow.detach())


def test_receptive_field_is_the_input_size():
    for name in ALL:
        model = create_model(name)
        fields = model.receptive_fields()
        last = "output" if name == "twopath" else "second.output"
        assert fields[last] == max(model.input_sizes)
    assert TwoPathCNN().receptive_fields()["local.conv1"] == 7
    assert InputCascadeCNN().receptive_fields()["second.local.conv1"] == 39


def test_wide_kernel_backward_matches_native_autograd():
    from braver.speedups import TrainingConvolutions

    torch.manual_seed(0)
    layer = Maxout(4, 8, 13, pieces=2)
    x = torch.randn(3, 4, 24, 20)
    grads = []
    for mode in (TrainingConvolutions(), TrainingConvolutions(wide=10**9)):
        layer.zero_grad()  # convolution-only backward, then torch's own
        with mode:
            layer(x).square().sum().backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
    for ours, native in zip(*grads, strict=True):
        assert (ours - native).abs().max() <= 1e-5 * native.abs().max()

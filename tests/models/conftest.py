"""Helpers for the model tests: weights large enough that outputs are far from zero."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Kaiming-scaled normal kernels and small biases, so logits are O(1) (the paper's
    U(−0.005, 0.005) makes every output nearly equal and comparisons meaningless)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in)
                )
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


@pytest.fixture
def randomise():
    """The :func:`randomise_` helper, as a fixture."""
    return randomise_


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share 2 cores with other test processes; keep each to one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

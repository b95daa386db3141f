"""Seeded weights for tests that compare network outputs.

The paper's U(−0.005, 0.005) makes every logit nearly equal, so comparisons between a
network and a modified copy would pass trivially; these weights give O(1) logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from braver.models import create_model


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Kernels N(0, 1/fan_in) and biases N(0, 0.01), in place, from a seeded generator."""
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


def randomised(name: str, seed: int = 0, **kw) -> nn.Module:
    """A registry model with seeded O(1) weights, in eval mode."""
    return randomise_(create_model(name, **kw), seed).eval()

"""The GPU-resident volumes gather exactly what the memory-mapped ones gather (needs CUDA)."""

import numpy as np
import pytest
import torch

from braver.data.patches import DeviceVolumes, MappedVolumes, PatchGeometry

DEVICE = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("tile", [1, 4])
def test_device_volumes_gather_bit_for_bit_what_mapped_volumes_gather(cache, tile):
    geometry = PatchGeometry((5, 9), tile)
    rng = np.random.default_rng(tile)
    centres = []
    for case, (depth, height, width) in enumerate([(3, 30, 26), (2, 12, 40)]):
        for _ in range(40):  # borders included: the padding must agree too
            centres.append((case, rng.integers(depth), rng.integers(height), rng.integers(width)))
    centres = torch.tensor(centres)  # grouped by case, the order MappedVolumes returns
    tiles, labels = MappedVolumes(cache, ["c0", "c1"]).gather(centres, geometry)
    volumes = DeviceVolumes(cache, ["c0", "c1"], pad=geometry.side, device=DEVICE)
    on_device, device_labels = volumes.gather(centres, geometry)
    assert on_device.device.type == device_labels.device.type == torch.device(DEVICE).type
    assert torch.equal(on_device.cpu(), tiles)
    assert torch.equal(device_labels.cpu(), labels)

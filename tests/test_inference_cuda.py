"""Dense prediction on CUDA: the same probabilities as on the CPU; bf16 autocast close to fp32."""

import numpy as np
import pytest
import torch

from braver.inference import predict_volume
from braver.models import create_model

DEVICE = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def exact(monkeypatch):
    """No TF32 in convolutions and matmuls: the GPU computes in float32 like the CPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _image(rng, shape=(4, 3, 22, 19)):
    image = np.zeros(shape, np.float32)
    image[:, 0, 3:19, 2:16] = rng.standard_normal((shape[0], 16, 14))
    image[:, 1, 8:22, 5:19] = rng.standard_normal((shape[0], 14, 14))  # another box
    image[:, 2, 0:9, 0:12] = rng.standard_normal((shape[0], 9, 12))
    return image


@pytest.mark.parametrize("name", ["twopath", "mf_cascade"])
def test_predict_volume_on_cuda_equals_the_cpu(name, rng, exact):
    torch.manual_seed(0)
    model = create_model(name, in_channels=4, num_classes=4, init_range=0.1)
    image = _image(rng)
    cpu = predict_volume(model, image, device="cpu", batch_size=2, tta=True)
    gpu = predict_volume(model.to(DEVICE), image, device=DEVICE, batch_size=2, tta=True)
    assert gpu.shape == cpu.shape and gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_bf16_autocast_forward_is_close_to_fp32(rng, exact):
    torch.manual_seed(0)
    model = create_model("twopath", in_channels=4, num_classes=4, init_range=0.1).to(DEVICE)
    dtypes = []
    hook = model.output.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    image = _image(rng)
    fp32 = predict_volume(model, image, device=DEVICE, fft=False)
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    bf16 = predict_volume(model, image, device=DEVICE, fft=False, bf16=True)
    hook.remove()
    assert set(dtypes) == {torch.bfloat16}  # the autocast ran
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16.sum(axis=0), 1.0, atol=1e-3)
    difference = np.abs(bf16 - fp32)
    assert difference.max() < 0.05 and difference.mean() < 0.01

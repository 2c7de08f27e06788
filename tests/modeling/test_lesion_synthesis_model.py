"""The lesion refiner: its residual stays inside the blending weight and within the bound; it round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pasta_testing import tiny_config

from modeling_pasta import PastaForLesionSynthesis
from modeling_pasta.modeling_pasta import piecewise_linear_hu


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ct = -100 + 300 * torch.rand(2, 1, 16, 16, 16, generator=generator)
    weight = torch.zeros_like(ct)
    weight[:, :, 4:11, 5:12, 3:9] = 1.0
    weight[:, :, 3, 5:12, 3:9] = 0.4  # a ramp voxel layer
    host = torch.zeros_like(ct)
    host[:, :, 2:14, 2:14, 2:14] = 1.0
    return ct, host, weight, torch.tensor([1, 7])


def _randomised(bound: float = 80.0) -> PastaForLesionSynthesis:
    model = PastaForLesionSynthesis(tiny_config(synthesis_residual_bound_hu=bound)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.residual_head.weight.normal_(std=50.0)  # saturate tanh: the bound must still hold
        model.residual_head.bias.fill_(3.0)
    return model


def test_untrained_refiner_returns_its_input():
    model = PastaForLesionSynthesis(tiny_config()).eval()
    ct, host, weight, types = _inputs()
    out = model(ct, host, weight, types)
    assert torch.equal(out.residual_hu, torch.zeros_like(ct))
    assert torch.equal(out.refined_hu, ct)


def test_residual_is_zero_outside_the_weight_and_within_the_bound():
    model = _randomised(bound=80.0)
    ct, host, weight, types = _inputs()
    with torch.no_grad():
        out = model(ct, host, weight, types)
    residual = out.residual_hu
    assert torch.all(residual[weight == 0] == 0)
    assert residual.abs().max() <= 80.0 + 1e-4
    assert residual[weight == 1].abs().max() > 40.0  # it does change the lesion
    # on the ramp the change is scaled by the weight
    assert residual[weight == 0.4].abs().max() <= 0.4 * 80.0 + 1e-4
    torch.testing.assert_close(out.refined_hu, ct + residual)


def test_lesion_type_conditions_the_residual():
    model = _randomised()
    with torch.no_grad():
        model.lesion_type_embeddings.weight.normal_(std=5.0)
        ct, host, weight, _ = _inputs()
        a = model(ct[:1], host[:1], weight[:1], torch.tensor([1])).residual_hu
        b = model(ct[:1], host[:1], weight[:1], torch.tensor([9])).residual_hu
    assert not torch.allclose(a, b)
    assert model.lesion_types[0] == "none" and "liver_cancer" in model.lesion_types


def test_save_and_load_round_trip(tmp_path):
    model = _randomised()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = PastaForLesionSynthesis.from_pretrained(tmp_path).eval()
    ct, host, weight, types = _inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ct, host, weight, types).residual_hu, model(ct, host, weight, types).residual_hu)
    assert loaded.config.synthesis_residual_bound_hu == 80.0


def test_bad_inputs_are_named():
    model = PastaForLesionSynthesis(tiny_config())
    ct, host, weight, types = _inputs()
    with pytest.raises(ValueError, match="blend_weight must have the shape"):
        model(ct, host, weight[:, :, :8], types)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(ct[..., :15], host[..., :15], weight[..., :15], types)
    with pytest.raises(ValueError, match="in HU"):
        model(ct[0], host[0], weight[0], types)
    with pytest.raises(Exception, match="synthesis_residual_bound_hu must be positive"):
        tiny_config(synthesis_residual_bound_hu=0.0)
    with pytest.raises(Exception, match="odd width"):
        tiny_config(synthesis_residual_smoothing=2)


def test_smoothing_removes_a_one_voxel_checkerboard():
    """The fixed box filter: a head that alternates sign voxel by voxel gives an (almost) flat residual."""
    sharp = PastaForLesionSynthesis(tiny_config(synthesis_residual_smoothing=1)).eval()
    smooth = PastaForLesionSynthesis(tiny_config(synthesis_residual_smoothing=3)).eval()
    grid = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij")).sum(0) % 2
    checkerboard = (2.0 * grid - 1.0)[None, None]
    ct, host, weight, types = _inputs()
    for model in (sharp, smooth):
        model.residual_head.forward = lambda features: checkerboard.expand(features.shape[0], 1, 16, 16, 16)
    with torch.no_grad():
        inside = weight == 1
        assert sharp(ct, host, weight, types).residual_hu[inside].abs().min() > 100.0
        assert smooth(ct, host, weight, types).residual_hu[inside].abs().max() < 0.1 * 150.0


def test_piecewise_linear_hu_matches_numpy_interp():
    hu = torch.linspace(-1500, 2000, 301)
    points, targets = [-1000.0, -200.0, 200.0, 1000.0], [0.0, 0.2, 0.9, 1.0]
    expected = np.interp(hu.numpy(), points, targets)
    np.testing.assert_allclose(piecewise_linear_hu(hu, points, targets).numpy(), expected, atol=1e-6)

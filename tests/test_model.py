import dataclasses

import pytest
import torch

from peptrm import masses
from peptrm.config import load_config
from peptrm.model import PepTRM, SinusoidalEncoding

V = len(masses.VOCAB)


@pytest.fixture
def tiny():
    cfg = load_config(overrides={
        "model": {"dim": 32, "n_heads": 4, "max_length": 12},
        "recursion": {"n_latent_steps": 2, "n_cycles": 2, "n_supervision": 2},
    })
    torch.manual_seed(0)
    return PepTRM(cfg.model, cfg.recursion, V).eval(), cfg


def _batch(n_peaks=20, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    mz = torch.sort(torch.rand(batch, n_peaks, generator=g) * 1500 + 100).values
    intensity = torch.rand(batch, n_peaks, generator=g)
    return mz, intensity, torch.tensor([1200.5, 900.25, 2000.0]), torch.tensor([2, 3, 2])


def test_shapes(tiny):
    model, cfg = tiny
    x, padding = model.encode(*_batch())
    assert x.shape == (3, 21, 32) and padding.shape == (3, 21)
    y, z = model.initial_state(x)
    y, z, halt = model(x, padding, y, z)
    assert y.shape == (3, 12, V) and z.shape == (3, 12, 32) and halt.shape == (3,)


def test_padded_peaks_change_nothing(tiny):
    """Zero-intensity padding must be masked out of every attention."""
    model, _ = tiny
    mz, intensity, mass, charge = _batch()
    y1, _, h1 = model(*model.encode(mz, intensity, mass, charge), *model.initial_state(
        model.encode(mz, intensity, mass, charge)[0]))
    mz_pad = torch.cat([mz, torch.full((3, 7), 555.5)], 1)
    intensity_pad = torch.cat([intensity, torch.zeros(3, 7)], 1)
    x, padding = model.encode(mz_pad, intensity_pad, mass, charge)
    y2, _, h2 = model(x, padding, *model.initial_state(x))
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)


def test_one_cycle_equals_one_improvement(tiny):
    model, cfg = tiny
    one = PepTRM(cfg.model, dataclasses.replace(cfg.recursion, n_cycles=1), V).eval()
    one.load_state_dict(model.state_dict())
    x, padding = one.encode(*_batch())
    y0, z0 = one.initial_state(x)
    y_forward, z_forward, _ = one(x, padding, y0, z0, supervision_step=0)
    y_improve, z_improve = one.improve(x, padding, y0, z0, step=0)
    torch.testing.assert_close(y_forward, y_improve)
    torch.testing.assert_close(z_forward, z_improve)


def test_no_gradient_reaches_the_first_cycles(tiny):
    """With T=2, gradients come only from the last cycle: the first is in no_grad."""
    model, _ = tiny
    x, padding = model.encode(*_batch())
    y, z = model.initial_state(x)
    seen = []
    original = model.improve

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    model.improve = spy
    y, z, _ = model(x, padding, y, z)
    assert seen == [False, True]
    assert y.requires_grad


def test_gate_starts_small(tiny):
    """Initial revision gate is sigmoid(gate_bias): the first draft moves ~12 %."""
    model, cfg = tiny
    assert torch.sigmoid(model.heads.gate.bias).item() == pytest.approx(
        torch.sigmoid(torch.tensor(cfg.model.gate_bias)).item())


def test_sinusoidal_encoding_separates_close_peaks():
    encode = SinusoidalEncoding(256, 0.001, 10000.0)
    a, b, far = encode(torch.tensor([500.00, 500.01, 900.0]))
    near_distance = (a - b).norm()
    assert near_distance > 0.5  # 0.01 Th apart is clearly distinct
    assert (a - far).norm() > near_distance


def test_same_seed_same_output():
    cfg = load_config(overrides={"model": {"dim": 32, "n_heads": 4, "max_length": 12}})
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = PepTRM(cfg.model, cfg.recursion, V).eval()
        x, padding = model.encode(*_batch())
        outputs.append(model(x, padding, *model.initial_state(x))[0])
    torch.testing.assert_close(outputs[0], outputs[1])

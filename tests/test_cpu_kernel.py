"""The compiled CPU kernel (afcore.cpu_kernel) against the reference definitions of afcore.signal.

Float64 comparisons use atol 1e-10 (both sides are exact formulas summed in another order; differences are ~1e-15);
float32 ones 2e-5 (the kernel's vectorised exp has ~2e-7 relative error, the sums of 13 taps a few float32 ulps).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from afcore import backend, cpu_kernel, fastops, signal as S

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="no C++ compiler: the PyTorch path is used")

TOL64 = dict(rtol=0, atol=1e-10)
FILTERS = {
    "kaiser13_circ": dict(numtaps=13, beta=8.0, radial=False, padding="circular"),
    "sinc7_zeros": dict(numtaps=7, beta=2.0, radial=False, padding="zeros"),
    "jinc3_zeros": dict(numtaps=3, beta=1.0, radial=True, padding="zeros"),  # Config B-D
    "jinc5_circ": dict(numtaps=5, beta=2.0, radial=True, padding="circular"),
}
ACTS = {"silu": nn.SiLU(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU(),
        "leaky": nn.LeakyReLU(0.2), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "identity": nn.Identity()}


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _spec_pad(name, factor):
    kw = dict(FILTERS[name])
    padding = kw.pop("padding")
    return S.fir_spec(factor, kw["numtaps"], kw["beta"], kw["radial"], True), padding, dict(kw, padding=padding)


def _ref_up(x, factor, kw):
    return S.upsample(x, factor, method="kaiser", impl="ref", **kw)


def _ref_down(x, factor, kw):
    return S.downsample(x, factor, method="kaiser", impl="ref", **kw)


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 6, 12), (1, 1, 3, 3), (1, 2, 1, 5)])
def test_kernel_resamplers_equal_the_reference(name, factor, shape):
    spec, padding, kw = _spec_pad(name, factor)
    x = rand(*shape)
    torch.testing.assert_close(cpu_kernel.run("up", x, spec, padding), _ref_up(x, factor, kw), **TOL64)
    xd = rand(*shape[:-2], shape[-2] * factor, shape[-1] * factor, seed=1)
    torch.testing.assert_close(cpu_kernel.run("down", xd, spec, padding), _ref_down(xd, factor, kw), **TOL64)


@pytest.mark.parametrize("act_name", list(ACTS))
@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("factor", [2, 3])
def test_fused_forward_and_input_gradient_equal_autograd_through_the_reference(name, act_name, factor):
    spec, padding, kw = _spec_pad(name, factor)
    act = ACTS[act_name]
    x = rand(2, 2, 5, 8).requires_grad_(True)
    y_ref = _ref_down(act(_ref_up(x, factor, kw)), factor, kw)
    g = rand(*y_ref.shape, seed=2)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(cpu_kernel.run("fused", x, spec, padding, act), y_ref.detach(), **TOL64)
    torch.testing.assert_close(cpu_kernel.run("fused_grad", x, spec, padding, act, grad=g), gx_ref, **TOL64)


@pytest.mark.parametrize("act_name", ["silu", "gelu", "sigmoid"])
def test_float32_kernel_agrees_with_the_float64_reference(act_name):
    """float32 runs the vectorised exp / sigmoid / erf approximations: forward and input gradient still agree."""
    act = ACTS[act_name]
    spec, padding, kw = _spec_pad("kaiser13_circ", 2)
    x = rand(2, 4, 16, 16, dtype=torch.float32) * 3  # spans the exp's reduced range many times
    leaf = x.double().requires_grad_(True)
    ref = _ref_down(act(_ref_up(leaf, 2, kw)), 2, kw)
    got = cpu_kernel.run("fused", x, spec, padding, act)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref.detach(), rtol=0, atol=2e-5)
    g = rand(*ref.shape, seed=6)
    (gx,) = torch.autograd.grad(ref, leaf, g)
    got = cpu_kernel.run("fused_grad", x, spec, padding, act, grad=g.float())
    torch.testing.assert_close(got.double(), gx, rtol=0, atol=5e-5)


def test_models_path_uses_the_kernel_and_passes_gradcheck(monkeypatch):
    """Through ``fastops.filtered_activation`` (what the layers call): the kernel is taken for a separable Kaiser
    filter, and float64 gradcheck holds for the custom backward."""
    monkeypatch.setattr(backend, "KERNEL_MIN_SIDE", 0)
    calls = []
    real = cpu_kernel.run
    monkeypatch.setattr(cpu_kernel, "run", lambda mode, *a, **k: calls.append(mode) or real(mode, *a, **k))
    spec, padding, _ = _spec_pad("kaiser13_circ", 2)
    x = rand(1, 2, 4, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: fastops.filtered_activation(t, nn.SiLU(), 2, "kaiser", spec, padding),
                                    (x,), eps=1e-6, atol=1e-7)
    assert "fused" in calls and "fused_grad" in calls


def test_lone_resamplers_take_the_kernel_and_pass_gradcheck(monkeypatch):
    """fastops.fir_up / fir_down (what AliasFreeUpsample / Downsample call) run in the kernel, forward equal to the
    reference and backward through the adjoint filters (float64 gradcheck), with circular and zero padding; radial
    filters stay on the PyTorch path."""
    monkeypatch.setattr(backend, "KERNEL_MIN_SIDE", 0)
    monkeypatch.setattr(backend, "KERNEL_MIN_SIDE_RESAMPLER", {"up": 0, "down": 0})
    calls = []
    real = cpu_kernel.run
    monkeypatch.setattr(cpu_kernel, "run", lambda mode, *a, **k: calls.append((mode, k.get("adjoint", False)))
                        or real(mode, *a, **k))
    jinc, _, _ = _spec_pad("jinc3_zeros", 2)
    assert not backend.use_kernel_resampler(torch.zeros(1, 1, 64, 64), jinc, "up")
    for name in ("kaiser13_circ", "sinc7_zeros"):
        spec, padding, kw = _spec_pad(name, 2)
        x = rand(1, 2, 4, 6).requires_grad_(True)
        torch.testing.assert_close(fastops.fir_up(x, spec, padding), _ref_up(x, 2, kw), **TOL64)
        xd = rand(1, 2, 8, 12, seed=1).requires_grad_(True)
        torch.testing.assert_close(fastops.fir_down(xd, spec, padding), _ref_down(xd, 2, kw), **TOL64)
        assert torch.autograd.gradcheck(lambda t: fastops.fir_up(t, spec, padding), (x,), eps=1e-6, atol=1e-7)
        assert torch.autograd.gradcheck(lambda t: fastops.fir_down(t, spec, padding), (xd,), eps=1e-6, atol=1e-7)
    assert {("up", False), ("down", False), ("down", True), ("up", True)} <= set(calls)


def test_adjoint_modes_are_the_gradients_of_the_reference():
    for name in FILTERS:
        spec, padding, kw = _spec_pad(name, 3)
        x = rand(2, 1, 4, 5).requires_grad_(True)
        up = _ref_up(x, 3, kw)
        g = rand(*up.shape, seed=3)
        torch.testing.assert_close(cpu_kernel.run("down", g, spec, padding, adjoint=True),
                                   torch.autograd.grad(up, x, g)[0], **TOL64)
        down = _ref_down(up.detach().requires_grad_(True), 3, kw)
        gd = rand(*down.shape, seed=4)
        leaf = up.detach().requires_grad_(True)
        torch.testing.assert_close(cpu_kernel.run("up", gd, spec, padding, adjoint=True),
                                   torch.autograd.grad(_ref_down(leaf, 3, kw), leaf, gd)[0], **TOL64)
    with pytest.raises(ValueError, match="adjoint"):
        cpu_kernel.run("fused", x.detach(), spec, padding, nn.SiLU(), adjoint=True)


@pytest.mark.parametrize("isa", [("-mno-avx512f",), ("-mno-avx2",)])
def test_kernel_built_for_older_vector_units_gives_the_same_results(monkeypatch, tmp_path, isa):
    """The vectorised sigmoid family has AVX-512, AVX2 and plain versions, chosen at build time by the CPU: build
    the kernel without the wider units and compare with the reference again (float32 and float64)."""
    monkeypatch.setattr(cpu_kernel, "FLAGS", cpu_kernel.FLAGS + isa)
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("AFCORE_KERNEL_CACHE", str(tmp_path))
    assert cpu_kernel.available()
    for act in (nn.SiLU(), nn.Sigmoid(), nn.GELU()):
        spec, padding, kw = _spec_pad("kaiser13_circ", 2)
        x = rand(2, 3, 8, 24) * 3
        ref = _ref_down(act(_ref_up(x, 2, kw)), 2, kw)
        torch.testing.assert_close(cpu_kernel.run("fused", x, spec, padding, act), ref, **TOL64)
        got = cpu_kernel.run("fused", x.float(), spec, padding, act).double()
        torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
        g = rand(*ref.shape, seed=5)
        leaf = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(_ref_down(act(_ref_up(leaf, 2, kw)), 2, kw), leaf, g)
        got = cpu_kernel.run("fused_grad", x.float(), spec, padding, act, grad=g.float()).double()
        torch.testing.assert_close(got, gx, rtol=0, atol=5e-5)


def test_kernel_is_not_taken_for_ideal_small_or_unknown_cases(monkeypatch):
    spec, _, _ = _spec_pad("kaiser13_circ", 2)
    jinc, _, _ = _spec_pad("jinc3_zeros", 2)
    big = torch.zeros(1, 1, 64, 64)
    assert backend.use_kernel(big, nn.SiLU(), spec)
    assert backend.use_kernel(big, nn.SiLU(), jinc)
    assert backend.use_kernel_resampler(big, spec, "up") and backend.use_kernel_resampler(big, spec, "down")
    assert not backend.use_kernel_resampler(big[..., :32, :32], spec, "down")  # low-rate side 16 < 32
    assert not backend.use_kernel(big, nn.SiLU(), None)  # ideal filters: matrix products / FFT
    assert not backend.use_kernel(torch.zeros(1, 1, 8, 8), nn.SiLU(), spec)
    assert not backend.use_kernel(big, nn.PReLU(), spec)
    with backend.no_cpu_kernel():
        assert not backend.use_kernel(big, nn.SiLU(), spec)
    with pytest.raises(ValueError, match="activation"):
        cpu_kernel.run("fused", big, spec, "circular", nn.PReLU())
    with pytest.raises(ValueError, match="mode must be one of"):
        cpu_kernel.run("sideways", big, spec, "circular")
    with pytest.raises(ValueError, match="divisible by factor"):
        cpu_kernel.run("down", torch.zeros(1, 1, 5, 6), spec, "circular")


def test_without_a_compiler_one_warning_and_the_pytorch_path(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: None)
    monkeypatch.setenv("AFCORE_KERNEL_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert cpu_kernel.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        assert not cpu_kernel.available()
    spec, padding, kw = _spec_pad("kaiser13_circ", 2)
    x = rand(1, 2, 64, 64)
    ref = _ref_down(nn.functional.silu(_ref_up(x, 2, kw)), 2, kw)
    torch.testing.assert_close(fastops.filtered_activation(x, nn.SiLU(), 2, "kaiser", spec, padding), ref, **TOL64)
    assert list(tmp_path.iterdir()) == []


def test_build_writes_one_library_and_no_leftovers(tmp_path):
    lib = cpu_kernel.build(tmp_path)
    assert lib.exists() and [p.name for p in tmp_path.iterdir()] == [lib.name]
    assert cpu_kernel.build(tmp_path) == lib  # cached: not rebuilt


def test_threads_split_planes_without_changing_results():
    spec, padding, _ = _spec_pad("jinc5_circ", 2)
    x = rand(3, 5, 16, 16)
    one = cpu_kernel.run("fused", x, spec, padding, nn.SiLU(), threads=1)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # each plane is the same computation whichever thread runs it; float64 leaves no room for more than rounding
        torch.testing.assert_close(cpu_kernel.run("fused", x, spec, padding, nn.SiLU(), threads=2), one,
                                   rtol=0, atol=1e-12)
    finally:
        torch.set_num_threads(old)


def test_a_failed_build_against_pytorch_falls_back_to_own_threads(monkeypatch, tmp_path):
    """Linking against PyTorch's thread pool can fail (headers or libraries missing): the kernel is then built with
    threads of its own, with one warning, and gives the same results."""
    monkeypatch.setattr(cpu_kernel, "_aten_flags", lambda: ("-lno_such_library_afcore",))
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("AFCORE_KERNEL_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="without PyTorch's thread pool"):
        assert cpu_kernel.available()
    spec, padding, kw = _spec_pad("kaiser13_circ", 2)
    x = rand(2, 3, 8, 8)
    torch.testing.assert_close(cpu_kernel.run("fused", x, spec, padding, nn.SiLU(), threads=2),
                               _ref_down(nn.functional.silu(_ref_up(x, 2, kw)), 2, kw), **TOL64)

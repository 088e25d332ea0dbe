"""The fast paths (afcore.fastops) against the reference definitions: values, gradients, saved memory, bf16, switches.

Float64 comparisons use atol 1e-10: both sides are exact formulas evaluated in a different order (FFT vs matrix,
polyphase vs zero insertion), whose rounding differences are ~1e-15 relative on inputs of order 1.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from afcore import backend, fastops, layers as L, signal as S

TOL64 = dict(rtol=0, atol=1e-10)
FILTERS = {
    "ideal": dict(method="ideal"),
    "kaiser13": dict(method="kaiser", numtaps=13, beta=8.0),
    "jinc3_zeros": dict(method="kaiser", numtaps=3, beta=1.0, radial=True, padding="zeros"),  # Config B-D
    "jinc5_circ": dict(method="kaiser", numtaps=5, beta=2.0, radial=True),
    "sinc7_zeros": dict(method="kaiser", numtaps=7, beta=2.0, padding="zeros"),
}


@pytest.fixture(params=["matmul", "fft_conv"])
def path(request, monkeypatch):
    """Run a test through the matrix-product path (the default at these sizes) and through the FFT / convolution
    path that long axes take."""
    if request.param == "fft_conv":
        monkeypatch.setattr(fastops, "MATMUL_MAX", 0)
    return request.param


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 12, 6), (1, 1, 6, 18), (1, 2, 3, 3)])
def test_fast_resamplers_equal_the_reference_definition(name, factor, shape, path):
    kw = FILTERS[name]
    x = rand(*shape)
    torch.testing.assert_close(S.upsample(x, factor, **kw), S.upsample(x, factor, impl="ref", **kw), **TOL64)
    if shape[-1] % factor == 0 and shape[-2] % factor == 0:
        for nyquist in ("zero", "half"):
            torch.testing.assert_close(S.downsample(x, factor, nyquist=nyquist, **kw),
                                       S.downsample(x, factor, impl="ref", nyquist=nyquist, **kw), **TOL64)


@pytest.mark.parametrize("edge", ["zero", "half"])
@pytest.mark.parametrize("cutoff", [0.5, 0.3, 1.0])
def test_rfft_ideal_lowpass_equals_the_circulant_reference(edge, cutoff):
    x = rand(2, 12, 10)
    torch.testing.assert_close(S.ideal_lowpass(x, cutoff, edge=edge), S.ideal_lowpass(x, cutoff, impl="ref", edge=edge),
                               **TOL64)


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(), nn.LeakyReLU(0.2)], ids=["silu", "gelu", "lrelu"])
def test_layers_fast_equal_ref_in_values_and_gradients(name, act, path):
    kw = FILTERS[name]
    x = rand(2, 3, 8, 12, seed=1)
    g = rand(2, 3, 8, 12, seed=2)
    for module in (lambda impl: L.FilteredActivation(act, impl=impl, **kw),
                   lambda impl: L.FilteredActivation(act, impl=impl, fused=True, **kw),
                   lambda impl: L.AliasFreeDownsample(2, impl=impl, **kw),
                   lambda impl: L.AliasFreeUpsample(2, impl=impl, **kw)):
        outs, grads = [], []
        for impl in ("fast", "ref"):
            xi = x.clone().requires_grad_(True)
            y = module(impl)(xi)
            (gx,) = torch.autograd.grad(y, xi, g if y.shape == g.shape else torch.ones_like(y))
            outs.append(y)
            grads.append(gx)
        torch.testing.assert_close(outs[0], outs[1], **TOL64)
        torch.testing.assert_close(grads[0], grads[1], **TOL64)


@pytest.mark.parametrize("name", list(FILTERS))
def test_gradcheck_of_the_fast_ops(name, path):
    kw = FILTERS[name]
    x = rand(1, 2, 6, 6, seed=3).requires_grad_(True)
    spec = S.fir_spec(2, kw.get("numtaps"), kw.get("beta", 8.0), kw.get("radial", False)) \
        if kw["method"] == "kaiser" else None
    pad = kw.get("padding", "circular")
    if spec is None:
        fns = [lambda t: fastops.ideal_up(t, 2), lambda t: fastops.ideal_down(t, 2, "zero"),
               lambda t: fastops.ideal_down(t, 2, "half")]
    else:
        fns = [lambda t: fastops.fir_up(t, spec, pad), lambda t: fastops.fir_down(t, spec, pad)]
    fns.append(lambda t: fastops.filtered_activation(t, nn.SiLU(), 2, kw["method"], spec, pad, "zero"))
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8)


def _saved_numel(fn, x):
    """Total number of elements autograd keeps for the backward pass of fn(x)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(sizes)


@pytest.mark.parametrize("name", ["ideal", "kaiser13", "jinc3_zeros"])
def test_fused_filtered_activation_saves_only_its_input(name):
    x = rand(2, 4, 16, 16, dtype=torch.float32).requires_grad_(True)
    fast = _saved_numel(L.FilteredActivation(nn.SiLU(), impl="fast", fused=True, **FILTERS[name]), x)
    ref = _saved_numel(L.FilteredActivation(nn.SiLU(), impl="ref", **FILTERS[name]), x)
    assert fast == x.numel()  # the input, nothing else
    assert ref >= 4 * x.numel()  # the composed layers keep at least the x2 up-sampled activation input
    unfused = _saved_numel(L.FilteredActivation(nn.SiLU(), impl="fast", fused=False, **FILTERS[name]), x)
    assert unfused >= 4 * x.numel()
    # the default: fused, except a radial kernel where the compiled CPU kernel is not taken
    layer = L.FilteredActivation(nn.SiLU(), **FILTERS[name])
    assert layer.uses_fused(x) == (name != "jinc3_zeros" or backend.use_kernel(x, nn.SiLU(), layer.down_layer.spec))
    with backend.no_cpu_kernel():
        assert layer.uses_fused(x) == (name != "jinc3_zeros")
        assert layer.uses_fused(x[..., :8, :8]) == (name != "jinc3_zeros")


@pytest.mark.parametrize("name", ["ideal", "kaiser13", "jinc3_zeros"])
def test_bf16_inputs_run_with_fp32_filters(name):
    x32 = rand(2, 3, 16, 16, dtype=torch.float32, seed=4)
    x16 = x32.to(torch.bfloat16)
    layer = L.FilteredActivation(nn.SiLU(), **FILTERS[name])
    ref = layer(x16.float())  # the same bf16 input, filtered in fp32
    xg = x16.clone().requires_grad_(True)
    out = layer(xg)
    assert out.dtype == torch.bfloat16
    # only the final rounding to bf16 (8 bits of mantissa) separates them
    torch.testing.assert_close(out.float(), ref, rtol=2 ** -7, atol=1e-3)
    out.float().square().sum().backward()
    assert xg.grad.dtype == torch.bfloat16 and torch.isfinite(xg.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = L.FilteredActivation(nn.SiLU(), **FILTERS[name])(x32)
    torch.testing.assert_close(auto.float(), layer(x32), rtol=1e-5, atol=1e-6)  # filters stay fp32 under autocast
    for mod in (L.AliasFreeUpsample(2, **FILTERS[name]), L.AliasFreeDownsample(2, **FILTERS[name])):
        y = mod(x16)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), mod(x16.float()), rtol=2 ** -7, atol=1e-3)


def test_activation_with_parameters_takes_the_unfused_path_and_gets_gradients():
    act = nn.PReLU(init=0.1).double()
    layer = L.FilteredActivation(act)
    layer(rand(1, 2, 8, 8)).sum().backward()
    assert act.weight.grad is not None and act.weight.grad.abs().item() > 0


def test_switches_default_context_and_set_impl():
    from afcore.config_unet import ConfigUNet

    assert L.get_default_impl() == "fast"
    torch.manual_seed(0)
    model = ConfigUNet("D-1N", base=8, levels=2, attention=False).eval()
    af = [m for m in model.modules() if hasattr(m, "af_impl")]
    assert af and all(m.impl == "fast" for m in af)  # models get the fast path without asking
    x, t = rand(2, 1, 16, 16, seed=5, dtype=torch.float32), torch.tensor([3, 500])
    with torch.no_grad():
        fast = model(x, t)
        with L.default_impl("ref"):
            assert all(m.impl == "ref" for m in af)
            ref = model(x, t)
        assert L.get_default_impl() == "fast"
        L.set_impl(model, "ref")
        again = model(x, t)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)  # float32 model, different summation orders
    assert torch.equal(ref, again)
    with pytest.raises(ValueError, match="impl must be one of"):
        L.set_default_impl("cuda")
    with pytest.raises(ValueError, match="nyquist must be one of"):
        L.AliasFreeDownsample(2, "ideal", nyquist="third")


def test_compiled_path_falls_back_with_one_warning_when_compilation_fails(monkeypatch):
    def broken(*args):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(backend, "_COMPILE_FAILED", [])
    call = fastops._guarded(broken)
    x = rand(1, 2, 8, 8)
    args = (x, nn.SiLU(), 2, "ideal", None, "circular", "zero")
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = call(*args)
    torch.testing.assert_close(out, fastops._filtered_eager(*args), **TOL64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(*args)  # falls back silently after the first failure


def test_compiled_path_is_only_considered_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "compiled", lambda fn: calls.append(1) or None)
    fastops.filtered_activation(rand(1, 1, 4, 4), nn.SiLU())
    assert not calls  # CPU tensors never reach the compiler


def test_the_backend_choice_lives_in_afcore_backend_and_reads_its_switches_at_every_call(monkeypatch):
    """fastops computes, afcore.backend decides: no environment variable is read in fastops, and the switches
    (AFCORE_TRITON, AFCORE_COMPILE) take effect per call, without re-importing anything."""
    import inspect

    source = inspect.getsource(fastops)
    assert "os.environ" not in source and "getenv" not in source and "\nimport os\n" not in source
    spec = fastops.FirSpec(factor=2, numtaps=13, beta=8.0, radial=False, normalize=True)
    x = rand(1, 1, 32, 32)
    monkeypatch.delenv("AFCORE_TRITON", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend.use_triton(x, nn.SiLU(), spec) is None
    monkeypatch.setenv("AFCORE_TRITON", "1")
    assert backend.use_triton(x, nn.SiLU(), spec) is None  # a CPU tensor outside Triton's interpreter
    assert backend.use_triton(x, nn.SiLU(), None) is None  # ideal filters: no Triton kernel
    monkeypatch.setattr(backend, "_COMPILED", {})
    monkeypatch.setattr(backend, "_COMPILE_FAILED", [])
    monkeypatch.delenv("AFCORE_COMPILE", raising=False)
    assert backend.compiled(fastops._filtered_eager) is None
    monkeypatch.setenv("AFCORE_COMPILE", "0")
    assert backend.compiled(fastops._filtered_eager) is None
    # the kernel switch of a block, and the plane size it starts from
    big = rand(1, 2, backend.KERNEL_MIN_SIDE, backend.KERNEL_MIN_SIDE)
    taken = backend.use_kernel(big, nn.SiLU(), spec)
    with backend.no_cpu_kernel():
        assert not backend.use_kernel(big, nn.SiLU(), spec)
    assert backend.use_kernel(big, nn.SiLU(), spec) == taken
    assert not backend.use_kernel(big[..., :-1, :-1], nn.SiLU(), spec)

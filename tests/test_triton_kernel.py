"""The Triton filtered-activation kernel (afcore.triton_kernel) against the reference, in Triton's CPU interpreter.

No GPU is needed: ``TRITON_INTERPRET=1`` makes ``triton.jit`` run the kernel's programs with NumPy, same indexing,
masks and arithmetic (float32). Triton reads that variable when the kernel is decorated, i.e. when the module is
imported, so the checks run in a fresh interpreter (this file executed as a script). Tolerance: float32 against the
float64 reference, 2e-6 (13-tap sums of O(1) values; measured errors ~3e-7).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def test_triton_kernel_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", AFCORE_TRITON="1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "all checks passed" in proc.stdout


def _checks() -> None:
    import warnings

    import torch
    from torch import nn

    from afcore import fastops, filters, signal as S, triton_kernel as TK

    assert TK.available()
    acts = {0: nn.Identity(), 1: nn.ReLU(), 2: nn.LeakyReLU(0.2), 3: nn.SiLU(), 5: nn.GELU(approximate="tanh"),
            6: nn.Tanh(), 7: nn.Sigmoid()}
    gen = torch.Generator().manual_seed(0)
    for numtaps in (13, 7):
        spec = filters.fir_spec(2, numtaps, 8.0)
        for padding in ("circular", "zeros"):
            kw = dict(method="kaiser", numtaps=numtaps, beta=8.0, padding=padding, impl="ref")
            # partial tiles of a non-square plane, and a plane smaller than the filter's reach
            for shape in ((1, 2, 20, 37), (1, 1, 5, 3)):
                x = torch.randn(*shape, dtype=torch.float64, generator=gen) * 2
                for code, act in acts.items():
                    if numtaps != 13 and code != 3:
                        continue  # the other filter length with one activation
                    param = 0.2 if code == 2 else 0.0
                    ref = S.downsample(act(S.upsample(x, 2, **kw)), 2, **kw)
                    got = TK.filtered_activation(x.float(), spec, padding, code, param)
                    assert got.dtype == torch.float32 and got.shape == x.shape
                    err = float((got.double() - ref).abs().max())
                    assert err < 2e-6, (numtaps, padding, shape, code, err)
    # more tiles than programs: the persistent loop visits every tile once
    spec = filters.fir_spec(2, 13, 8.0)
    kw = dict(method="kaiser", numtaps=13, beta=8.0, padding="circular", impl="ref")
    x = torch.randn(3, 1, 40, 24, dtype=torch.float64, generator=gen)
    ref = S.downsample(torch.sigmoid(S.upsample(x, 2, **kw)), 2, **kw)
    got = TK.filtered_activation(x.float(), spec, "circular", 7, programs=2)
    assert float((got.double() - ref).abs().max()) < 2e-6
    # what it does not take, it says
    for bad in (filters.fir_spec(2, 3, 1.0, radial=True), filters.fir_spec(3, 13, 8.0)):
        try:
            TK.filtered_activation(x.float(), bad, "circular", 3)
        except ValueError as err:
            assert "separable factor-2" in str(err)
        else:
            raise AssertionError(f"{bad} was taken")
    # through fastops (what the layers call) with AFCORE_TRITON=1: forward in Triton, gradient on the eager path
    calls = []
    real = TK.filtered_activation
    TK.filtered_activation = lambda *a, **k: calls.append(1) or real(*a, **k)
    xg = torch.randn(2, 3, 16, 16, generator=gen, requires_grad=True)
    y = fastops.filtered_activation(xg, nn.SiLU(), 2, "kaiser", spec, "circular")
    assert calls, "the Triton kernel was not taken"
    kw = dict(method="kaiser", numtaps=13, beta=8.0, padding="circular", impl="ref")
    leaf = xg.detach().double().requires_grad_(True)
    ref = S.downsample(nn.functional.silu(S.upsample(leaf, 2, **kw)), 2, **kw)
    assert float((y.double() - ref).abs().max()) < 2e-6
    g = torch.randn(*y.shape, generator=gen)
    (gx,) = torch.autograd.grad(y, xg, g)
    (gx_ref,) = torch.autograd.grad(ref, leaf, g.double())
    assert float((gx.double() - gx_ref).abs().max()) < 5e-5
    # a failing kernel: one warning, the eager path's result, and the kernel is not tried again
    TK.filtered_activation = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no GPU compiler"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fastops.filtered_activation(xg.detach(), nn.SiLU(), 2, "kaiser", spec, "circular")
        again = fastops.filtered_activation(xg.detach(), nn.SiLU(), 2, "kaiser", spec, "circular")
    assert sum("Triton kernel failed" in str(w.message) for w in caught) == 1
    assert float((out.double() - ref).abs().max()) < 2e-6 and torch.equal(out, again)
    print("all checks passed")


if __name__ == "__main__":
    _checks()

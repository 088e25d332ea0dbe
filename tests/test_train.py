"""The shared training loop: resume is exact, EMA follows the weights, checkpoints are atomic."""
from __future__ import annotations

import torch
from torch import nn

from afcore.train import train_loop


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    target = torch.randn(4, 1, generator=torch.Generator().manual_seed(7))

    def get_batch(step):
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(16, 4, generator=g)
        return x, x @ target

    def loss_fn(m, batch, step):
        x, y = batch
        loss = ((m(x) - y) ** 2).mean()
        return loss, {"mse": loss.item()}

    return model, loss_fn, get_batch


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    model, loss_fn, get_batch = _problem()
    full, ema_full, hist_full = train_loop(model, loss_fn, get_batch, steps=12, lr=1e-2, ckpt_dir=tmp_path / "a",
                                           ckpt_every=4, ema_decay=0.9, desc="full")
    model, loss_fn, get_batch = _problem()
    train_loop(model, loss_fn, get_batch, steps=12, lr=1e-2, ckpt_dir=tmp_path / "b", ckpt_every=4,
               ema_decay=0.9, stop_after=7, desc="interrupted")
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["step"] == 7
    model, loss_fn, get_batch = _problem(seed=123)  # different init: the checkpoint must override it
    resumed, ema_resumed, hist_resumed = train_loop(model, loss_fn, get_batch, steps=12, lr=1e-2,
                                                    ckpt_dir=tmp_path / "b", ckpt_every=4, ema_decay=0.9,
                                                    desc="resumed")
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(ema_full.parameters(), ema_resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert [r["step"] for r in hist_resumed] == list(range(1, 13))
    assert [round(r["loss"], 6) for r in hist_full] == [round(r["loss"], 6) for r in hist_resumed]
    losses = [r["loss"] for r in hist_full]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert not list((tmp_path / "b").glob("*.tmp"))


def test_ema_lags_behind_the_weights(tmp_path):
    model, loss_fn, get_batch = _problem()
    start = [p.detach().clone() for p in model.parameters()]
    trained, ema, _ = train_loop(model, loss_fn, get_batch, steps=5, lr=1e-2, ckpt_dir=tmp_path, ema_decay=0.5)
    flat = [torch.cat([t.detach().flatten() for t in ts]) for ts in (start, trained.parameters(), ema.parameters())]
    s, p, e = flat
    assert not torch.equal(e, p) and not torch.equal(e, s)
    # the average mostly sits between the start and the current weights, coordinate by coordinate
    assert ((e - s) * (p - e) >= 0).float().mean() > 0.6


def test_seeded_ddpm_runs_repeat_exactly_and_amp_runs_in_bf16(tmp_path):
    """Two runs with the same seed (batches and noise from per-step generators on the device) end with identical
    weights; an amp run computes its forward pass in bf16 (so it must differ a little) and still learns."""
    from afcore import config_unet, ddpm
    from afcore.train import batch_sampler
    from afcore.device import make_generator

    images = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(0), device="cpu") * 2 - 1
    scheduler = ddpm.make_scheduler()

    def run(name, amp=False):
        torch.manual_seed(0)
        model = config_unet.ConfigUNet("B-1N", in_channels=1, base=8, levels=1, attention="none")
        get_batch = batch_sampler(images, batch_size=8, seed=3, device="cpu")

        def loss_fn(m, b, step):
            x0, s = b
            return ddpm.ddpm_loss(m, x0, scheduler, make_generator(s, x0.device)), {}

        model, _, hist = train_loop(model, loss_fn, get_batch, steps=4, lr=1e-3, ckpt_dir=tmp_path / name, amp=amp)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), hist

    a, hist_a = run("a")
    b, _ = run("b")
    assert torch.equal(a, b)
    c, hist_c = run("c", amp=True)
    assert not torch.equal(a, c)
    assert abs(hist_c[0]["loss"] - hist_a[0]["loss"]) < 0.05 * hist_a[0]["loss"]  # same batch, bf16 rounding only


def test_ema_update_matches_a_per_parameter_reference():
    """The fused (foreach) EMA update equals the plain per-parameter lerp, warm-up included, buffers copied."""
    from afcore.train import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, 0.9)
    reference = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape))
            model[1].running_mean.add_(1.0)
        ema.update(model, step)
        decay = min(0.9, (1 + step) / (10 + step))
        reference = [r + (1 - decay) * (p.detach() - r) for r, p in zip(reference, model.parameters())]
    for e, r in zip(ema.model.parameters(), reference):
        torch.testing.assert_close(e, r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ema.model[1].running_mean, model[1].running_mean, rtol=0, atol=0)


def test_history_logs_every_step_with_the_loss_and_logs_of_that_step(tmp_path):
    """Losses are read back in blocks (log_every) but every step's row holds that step's own values."""
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(0.25)

    def loss_fn(m, batch, step):
        loss = (m(batch) ** 2).mean()
        return loss, {"step_times_ten": torch.tensor(10.0 * step), "plain": float(step)}

    _, _, history = train_loop(model, loss_fn, lambda step: torch.full((4, 2), float(step + 1)), steps=7, lr=1e-3,
                               ckpt_dir=tmp_path / "c", ema_decay=None, log_every=3, resume=False)
    assert [r["step"] for r in history] == list(range(1, 8))
    assert [r["step_times_ten"] for r in history] == [10.0 * s for s in range(7)]
    assert [r["plain"] for r in history] == [float(s) for s in range(7)]
    assert all(r["loss"] > 0 for r in history)
    # step 0 sees the batch of ones through the initial weights: (0.5 + 0.5 + 0.25)^2
    assert history[0]["loss"] == 1.25 ** 2

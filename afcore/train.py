"""The one training loop the workbook uses (Config A-D DDPM, AF-VAE, AF-LDM): accelerate, EMA, resume, progress.

Determinism and resume: batches come from ``get_batch(step)``, a function of the step alone (seed a generator with
``seed + step`` inside it), so a run interrupted at step k and resumed from its checkpoint sees exactly the batches
an uninterrupted run would. Under ``accelerate launch`` every process builds the same global batch and keeps its own
slice, so processes stay in sync without a distributed sampler.

A loss function returns ``(loss, logs)``; anything with several players (a GAN discriminator, say) is one module
whose loss function routes gradients itself (e.g. a hinge loss on detached fakes), so one optimizer suffices.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from afcore.utils import save_csv, save_torch


class EMA:
    """Exponential moving average of a model's parameters (buffers copied).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a short run's average is not dominated
    by its random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # one fused multi-tensor kernel per update instead of one small kernel per parameter (a GPU launches each)
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params, params = list(self.model.parameters()), [p.detach() for p in model.parameters()]
        if ema_params:
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        ema_buffers, buffers = list(self.model.buffers()), list(model.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, buffers)


def _same_keys(pending) -> bool:
    keys = [tuple(logs) for _, _, logs, _ in pending]
    return all(k == keys[0] for k in keys)


def _slice_batch(batch, rank: int, world: int):
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.shape[0] % world:
            raise ValueError(f"batch size {batch.shape[0]} is not divisible by the {world} processes")
        return batch.chunk(world)[rank]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice_batch(b, rank, world) for b in batch)
    if isinstance(batch, dict):
        return {k: _slice_batch(v, rank, world) for k, v in batch.items()}
    return batch


# AdamW's decoupled weight decay: torch's default, which both reference codes (AF-LDM's trainers and Anjum's
# alias-free DDPM) train with; stages record it in their checkpoint fingerprints
WEIGHT_DECAY = 0.01


def train_loop(
    model: nn.Module,
    loss_fn: Callable,
    get_batch: Callable[[int], object],
    *,
    steps: int,
    lr: float,
    ckpt_dir: str | Path,
    ckpt_every: int = 0,
    ema_decay: float | None = None,
    weight_decay: float = WEIGHT_DECAY,
    grad_clip: float | None = 1.0,
    device: str = "cpu",
    resume: bool = True,
    log_csv: str | Path | None = None,
    desc: str = "train",
    stop_after: int | None = None,
    amp: bool = False,
    compile: bool = False,
    log_every: int = 25,
):
    """Train ``model`` for ``steps`` optimizer steps; returns ``(model, ema_model_or_None, history)``.

    ``loss_fn(model, batch, step) -> (loss, logs: dict of floats)``. Checkpoints go to ``ckpt_dir/last.pt`` every
    ``ckpt_every`` steps and at the end; with ``resume`` a run continues from there. ``stop_after`` ends the run
    early at that step (tests use it to simulate an interruption). The optimizer is AdamW with ``weight_decay``
    (default ``WEIGHT_DECAY`` = 0.01, torch's default and the references'; 0 turns it off); a resumed run keeps the
    checkpoint's optimizer hyper-parameters, so record ``weight_decay`` in the run's fingerprint.

    ``device``: 'cpu', 'cuda' or 'cuda:N' (resolve 'auto' with ``afcore.device_mod.pick_device`` first). ``amp``: the
    forward pass and loss run under bf16 autocast (weights, optimizer and EMA stay fp32). ``compile``: the forward
    pass goes through ``torch.compile`` (the first steps pay the compilation; checkpoints hold the plain module's
    weights either way). ``workbook.bench_train`` measures both. ``log_every``: losses stay on the device and are
    read back (one synchronisation) every that many steps, at checkpoints and at the end.
    """
    from accelerate import Accelerator

    if steps < 0 or lr <= 0:
        raise ValueError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} but torch sees no CUDA device; use 'cpu'")
        if device.index is not None and "LOCAL_RANK" not in os.environ:
            torch.cuda.set_device(device.index)  # accelerate takes the current CUDA device in a single process
    elif device.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    accelerator = Accelerator(cpu=device.type == "cpu")
    # where our tensors go: accelerate's device, except on the CPU, where ``device`` may be afcore.devcheck's
    # simulated accelerator (cpu:0), which accelerate does not know
    run_device = device if device.type == "cpu" else accelerator.device
    ckpt_dir = Path(ckpt_dir)
    ckpt_path = ckpt_dir / "last.pt"
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = EMA(model, ema_decay) if ema_decay else None
    start, history = 0, []
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.model.load_state_dict(state["ema"])
        start, history = state["step"], state["history"]
        accelerator.print(f"[{desc}] resumed from {ckpt_path} at step {start}")
    model, optimizer = accelerator.prepare(model, optimizer)
    if ema is not None:
        ema.model.to(run_device)
    forward_model = torch.compile(model) if compile else model  # shares parameters with ``model``
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bool(amp))

    def checkpoint(step):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_torch({
                "model": accelerator.unwrap_model(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema.model.state_dict() if ema is not None else None,
                "step": step,
                "history": history,
            }, ckpt_path)

    model.train()
    end = steps if stop_after is None else min(steps, stop_after)
    bar = tqdm(range(start, end), desc=desc, initial=start, total=steps,
               disable=not accelerator.is_main_process, mininterval=2.0)
    pending: list[tuple[int, torch.Tensor, dict, float]] = []  # steps whose loss still sits on the device

    def flush():
        # one device-to-host copy for many steps: reading a CUDA loss every step (.item()) stalls the queue
        if not pending:
            return
        values = torch.stack([torch.stack([loss, *logs.values()]) if logs else loss.reshape(1)
                              for _, loss, logs, _ in pending]).tolist() if _same_keys(pending) else None
        for i, (step_no, loss, logs, seconds) in enumerate(pending):
            row_values = values[i] if values is not None else [float(loss), *(float(v) for v in logs.values())]
            history.append({"step": step_no, "loss": row_values[0], **dict(zip(logs, row_values[1:])),
                            "seconds": seconds})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        pending.clear()

    for step in bar:
        t0 = time.perf_counter()
        batch = _slice_batch(get_batch(step), accelerator.process_index, accelerator.num_processes)
        batch = _to_device(batch, run_device)
        with autocast:
            loss, logs = loss_fn(forward_model, batch, step)
        loss = loss.float()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(model), step)
        loss_value = accelerator.reduce(loss.detach(), reduction="mean")
        # float64 so that the history holds exactly what float(v) would have read
        logs = {k: (v.detach().reshape(()).double() if isinstance(v, torch.Tensor)
                    else torch.tensor(float(v), dtype=torch.float64, device=loss_value.device))
                for k, v in (logs or {}).items()}
        pending.append((step + 1, loss_value.reshape(()).double(), logs, time.perf_counter() - t0))
        if len(pending) >= log_every or step + 1 == end:
            flush()
        if ckpt_every and (step + 1) % ckpt_every == 0 and step + 1 < end:
            flush()
            checkpoint(step + 1)
    flush()
    checkpoint(end)
    if log_csv and history and accelerator.is_main_process:
        save_csv(history, log_csv)
    model = accelerator.unwrap_model(model).eval()
    return model, (ema.model if ema is not None else None), history


def batch_sampler(*tensors: torch.Tensor, batch_size: int, seed: int, device="cpu") -> Callable[[int], tuple]:
    """``get_batch(step)`` for ``train_loop``: a random batch (with replacement) from tensors moved to ``device``
    once; the indices come from a generator on ``device`` seeded by ``(seed, step)``, so a resumed run sees the same
    batches and nothing is drawn on the CPU and copied each step. Returns ``(*batch_tensors, batch_seed)``."""
    from afcore.device import make_generator

    device = torch.device(device)
    if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
        raise ValueError("batch_sampler needs one or more tensors of equal length")
    on_device = [t.to(device) for t in tensors]
    n = len(on_device[0])

    def get_batch(step: int):
        batch_seed = seed * 100003 + step
        idx = torch.randint(0, n, (batch_size,), generator=make_generator(batch_seed, device), device=device)
        return (*(t[idx] for t in on_device), batch_seed)

    return get_batch


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def prepare_run_dir(run_dir: str | Path, fingerprint: dict) -> Path:
    """Create ``run_dir`` for a resumable run stamped with ``fingerprint`` (the settings that shape the run).

    A checkpoint left by different settings is deleted first: resuming it would silently mix two experiments.
    """
    import json
    import shutil

    run_dir = Path(run_dir)
    stamp = run_dir / "fingerprint.json"
    wanted = json.loads(json.dumps(fingerprint))  # normalise tuples/ints as they will read back
    if run_dir.exists() and (not stamp.exists() or json.loads(stamp.read_text()) != wanted):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(wanted, indent=1))
    return run_dir

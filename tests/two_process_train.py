"""Run by tests/test_ddpm.py under `accelerate launch --num_processes 2 --cpu`: train a tiny Config U-Net a few
steps and write each process's final parameters, so the test can check the processes stayed in sync."""
import sys
from pathlib import Path

import torch

from afcore import config_unet, ddpm
from afcore.train import train_loop

out = Path(sys.argv[1])
torch.manual_seed(0)
model = config_unet.ConfigUNet("D-1N", in_channels=1, base=8, levels=1, attention=False)
scheduler = ddpm.make_scheduler()
data = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def get_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return data[torch.randint(0, 16, (8,), generator=g)]


def loss_fn(m, x0, step):
    rank_gen = torch.Generator().manual_seed(step)
    return ddpm.ddpm_loss(m, x0, scheduler, rank_gen), {}


trained, _, history = train_loop(model, loss_fn, get_batch, steps=3, lr=1e-3, ckpt_dir=out / "ckpt",
                                 resume=False, desc="two-process")
from accelerate import PartialState

state = PartialState()
flat = torch.cat([p.detach().flatten() for p in trained.parameters()])
torch.save({"params": flat, "world": state.num_processes}, out / f"rank{state.process_index}.pt")

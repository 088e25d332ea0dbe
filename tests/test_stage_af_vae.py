"""Stage af_vae (afcore.stages.af_vae): the smoke run writes every declared output with finite, plausible values;
comparisons are paired differences of the table's rows; a second training pass resumes with 0 extra steps; bad
config values raise ConfigError naming the key."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from afcore import vae as V
from workbook import params
from afcore.stages import af_vae
from afcore.stages.common import ConfigError, pick_device

# af_vae has no upstream stage (it crops scikit-image's photographs itself): it runs in an empty folder, so its
# training really runs (a workspace with checkpoints/vae would resume them).


def test_config_defaults_are_the_cpu_profile_and_bad_values_name_the_key(smoke_params):
    assert af_vae.Config.from_params(params.build("cpu")) == af_vae.Config()
    cfg = af_vae.Config.from_params(smoke_params)
    assert cfg.profile == "smoke" and cfg.vae_channels == tuple(smoke_params["vae"]["vae_channels"])
    for key, bad in (("n_test", 1), ("vae_posterior", "mode"), ("vae_kl_norm", "latent"), ("vae_dataset", "mnist"),
                     ("vae_channels", [12, 16]), ("vae_finetune_steps", 0), ("vae_ema_decay", 1.0),
                     ("gan_weight", -0.1), ("disc_channels", []), ("vae_lr", 0.0)):
        with pytest.raises(ConfigError, match=key):
            cfg.replace(**{key: bad})
    with pytest.raises(ConfigError, match="vae_batch"):
        af_vae.Config.from_params(smoke_params, vae_batch="4")  # wrong type
    with pytest.raises(ConfigError, match="unknown"):
        af_vae.Config.from_params(smoke_params, vae_steps=3)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_smoke_run_writes_outputs_compares_pairs_and_resumes(stage_device, device_checks, smoke_params, tmp_path):
    cfg = af_vae.Config.from_params(smoke_params)
    with device_checks(stage_device):
        summary = af_vae.run(cfg, stage_device, tmp_path)

    # every declared output is there
    for rel in (af_vae.METRICS_JSON, af_vae.LOSS_CSV, af_vae.SPSNR_CSV, "checkpoints/vae/vanilla/config.json",
                "checkpoints/vae/af_vae/config.json", "checkpoints/vae/af_vae/alias_free.json",
                *(f"{af_vae.FIGURES}/{s}.png" for s in ("loss", "spectrum_and_spsnr", "faces_pan"))):
        assert (tmp_path / rel).is_file(), rel
    on_disk = json.loads((tmp_path / af_vae.METRICS_JSON).read_text())
    assert on_disk["by_row"] == json.loads(json.dumps(summary["by_row"]))
    assert on_disk["device"].startswith(stage_device) and on_disk["profile"] == "smoke"

    # Table 2: every row, finite values in plausible ranges
    assert list(summary["by_row"]) == list(af_vae.KEY.values())
    for key, row in summary["by_row"].items():
        for m in af_vae.PER_IMAGE:
            assert _finite(row[f"{m}_db"]) and 0 < row[f"{m}_db"] < 120, (key, m, row[f"{m}_db"])
            assert _finite(row[f"{m}_se_db"]) and row[f"{m}_se_db"] >= 0, (key, m)
        assert _finite(row["rFID[rand-natural]"]) and row["rFID[rand-natural]"] > -1e-6
        assert _finite(row["rFID_boot_se"]) and row["rFID_boot_se"] >= 0
    # a comparison is paired: its mean difference is the difference of the two rows' means over the same images
    assert list(summary["comparisons"]) == list(af_vae.COMPARISONS)
    for key, c in summary["comparisons"].items():
        a, b = (summary["by_row"][af_vae.KEY[r]] for r in af_vae.COMPARISONS[key])
        for m in af_vae.PER_IMAGE:
            assert abs(c[f"{m}_delta_db"] - (a[f"{m}_db"] - b[f"{m}_db"])) < 1e-6, (key, m)
            assert _finite(c[f"{m}_delta_se_db"]) and c[f"{m}_delta_se_db"] >= 0
        assert c["rFID_delta"] == a["rFID[rand-natural]"] - b["rFID[rand-natural]"]
    # seed level: the base seed's comparisons are the first per-seed value; every further seed fine-tuned its own
    # rows from the one pre-trained VAE and saved them for af_ldm's matching seed
    assert summary["training_seeds"] == cfg.seeds and len(cfg.seeds) >= 2
    for key in af_vae.COMPARISONS:
        for m in af_vae.PER_IMAGE:
            c = summary["seed_contrasts"][f"{key}: {m}"]
            assert c["per_seed"][0] == pytest.approx(summary["comparisons"][key][f"{m}_delta_db"], abs=1e-12)
            assert c["n_seeds"] == len(cfg.seeds) and c["primary"] == (f"{key}: {m}" in af_vae.PRIMARY)
            assert c["mean"] == pytest.approx(sum(c["per_seed"]) / len(cfg.seeds))
            # mean of the per-seed differences = difference of the rows' seed means (same seeds, same crops)
            a, b = (summary["seed_by_row"][af_vae.KEY[r]] for r in af_vae.COMPARISONS[key])
            assert c["mean"] == pytest.approx(a[f"{m}_db"] - b[f"{m}_db"], abs=1e-6)
    assert sum(c["primary"] for c in summary["seed_contrasts"].values()) == len(af_vae.PRIMARY)
    for seed in cfg.seeds[1:]:
        assert (tmp_path / f"checkpoints/vae/seed{seed}/af_vae/alias_free.json").is_file()
    # another seed draws other batches and noise (its weights may still agree after two Adam steps, whose updates
    # are close to lr * sign(gradient) from the same pre-trained start)
    runs_dir = tmp_path / "checkpoints/vae/runs"
    base_loss = (runs_dir / "equivariance_loss_af_vae/loss.csv").read_text().split()[1]
    other_loss = (runs_dir / f"equivariance_loss_af_vae/seed{cfg.seeds[1]}/loss.csv").read_text().split()[1]
    assert base_loss.split(",")[1] != other_loss.split(",")[1]
    text = af_vae.verdict_markdown(summary["comparisons"])
    assert text.count("\n") == len(af_vae.COMPARISONS) - 1 and "nan" not in text

    # the loss CSV: every training step of every run; the SPSNR curve: latent shifts k/f, k = 1..2f, two rows
    with open(tmp_path / af_vae.LOSS_CSV) as fh:
        losses = list(csv.DictReader(fh))
    runs = ["pre-training"] + [n for n, spec in af_vae.ROWS.items() if spec[3]]
    assert [r["run"] for r in losses] == [n for n in runs for _ in range(
        cfg.vae_pretrain_steps if n == "pre-training" else cfg.vae_finetune_steps)]
    assert all(math.isfinite(float(r["mse"])) and float(r["mse"]) > 0 for r in losses)
    with open(tmp_path / af_vae.SPSNR_CSV) as fh:
        curve = list(csv.DictReader(fh))
    f = 2 ** (len(cfg.vae_channels) - 1)
    assert [float(r["latent_shift"]) for r in curve] == [k / f for _ in af_vae.COMPARE for k in range(1, 2 * f + 1)]
    assert set(summary["train_step_seconds"]) == set(runs)
    assert all(v > 0 for v in summary["train_step_seconds"].values())
    assert all(v > 0 for v in summary["timing"]["af_vae_relative"].values())

    # training again in the same folder resumes every run at its end: 0 extra steps, the same weights
    dev = pick_device(stage_device)
    with device_checks(stage_device):
        again = af_vae.train_rows(cfg, dev, af_vae.load_inputs(cfg, dev), tmp_path)
    for name in runs:
        steps = cfg.vae_pretrain_steps if name == "pre-training" else cfg.vae_finetune_steps
        assert [h["step"] for h in again.histories[name]] == list(range(1, steps + 1)), name
    saved = V.load_pretrained_vae(str(tmp_path / "checkpoints/vae/af_vae"))
    resumed = again.models["+ equivariance loss (AF-VAE)"]
    assert saved._alias_free_patch == resumed._alias_free_patch
    for (k, a), b in zip(saved.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b.cpu()), k

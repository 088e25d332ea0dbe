# %% [markdown]
# # 14 · Config A–E: the results in one place
#
# Notebooks 12 and 13 run once per (data set, config) and once per data set; this one gathers their metrics into the
# paper-format table, the loss curves, the cost of the alias-free layers and the Config E summary, and writes
# `metrics/14_configs_report.json`, the file README quotes.
#
# **Reading the table.** IS / FID / KID x100 use classifier features (`clf-<dataset>`, notebook 11), so only rows of
# the same data set are comparable, and never with the paper's Inception-based columns, which are shown for
# orientation. Every ± is the standard error over training seeds (notebook 12 trains each config once per seed). A
# difference between two configs is read from the contrast table below it: computed within each seed, paired over
# the same evaluation noises, and summarised over seeds with a t test; the primary contrasts (each alias-free
# config's sample SPSNR gain over A) are Holm-adjusted together, and the verdict says how many seeds agree.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
config_datasets = ["mnist"]
configs = ["A", "B-1N", "D-1N"]
config_seeds = 5
base_channels = 16
levels = 2
attention = "below_full"
filter_method = "kaiser"
train_steps = 250
batch_size = 16
lr = 0.001
ema_decay = 0.995
ckpt_every = 100
amp = False
compile = False
n_samples = 200
quality_sampler = "ddim"
sample_steps = 25
spsnr_shifts = [0.125, 0.25, 0.5]
spsnr_images = 16
rotation_protocol = "ddim"
rotation_angles = [-90.0, 0.0, 90.0]
rotation_seeds = 4
rotation_boundary = "zeros"

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from afcore.stages import configs_report as stage

cfg = stage.Config.from_mapping(globals())
train, evals = stage.load_inputs(cfg, ".")
rows = stage.table_rows(cfg, train, evals)
contrasts = stage.gather_contrasts(cfg, evals)  # each config minus A, paired within each training seed


def f(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


display(Markdown("| data set | config | IS | FID | KID x100 | denoiser SPSNR | sample SPSNR | step time vs A | paper IS / FID / KID x100 |\n"
                 "|---|---|---|---|---|---|---|---|---|\n" + "".join(
                     f"| {r['dataset']} | {r['config']} | {f(r['IS'])} | {f(r['FID'], 1)} ± {f(r['FID_se'], 1)} | "
                     f"{f(r['KIDx100'])} ± {f(r['KIDx100_se'])} | {f(r['denoiser_spsnr_db'], 1)} ± "
                     f"{f(r['denoiser_spsnr_db_se'], 1)} | {f(r['sample_spsnr_db'], 1)} ± {f(r['sample_spsnr_db_se'], 1)} | "
                     f"{f(r['train_step_relative_to_A'])}x | {f(r.get('paper_IS'))} / {f(r.get('paper_FID'))} / "
                     f"{f(r.get('paper_KIDx100'))} |\n" for r in rows)
                 + f"\n\nEvery value: mean ± standard error over {len(cfg.seeds)} training seeds (seeds {cfg.seeds}).\n\n"
                 "| contrast | mean ± SE over seeds | p (Holm for primary) | verdict |\n|---|---|---|---|\n"
                 + "".join(f"| {k}{' (primary)' if c['primary'] else ''} | {c['mean']:+.2f} ± {f(c['se'])} | "
                           f"{f(c['p_holm'] if c['primary'] else c['p'], 3)} | {c['verdict']} |\n"
                           for k, c in contrasts.items())))

# %%
figures = {"loss": stage.figure_loss(cfg, "."), "spsnr": stage.figure_spsnr(cfg, rows)}
plt.show()

# %%
figures["rotation_consistency"] = stage.figure_rotation(cfg, evals)
plt.show()

# %%
report = stage.summarise(cfg, evals, rows, contrasts, stage.rotation_summary(cfg, evals))
stage.write_outputs(report, ".", figures)
{k: c["verdict"] for k, c in contrasts.items() if c["primary"]}

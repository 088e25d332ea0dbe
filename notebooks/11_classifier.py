# %% [markdown]
# # 11 · A feature extractor for IS, FID and KID
#
# FID and KID compare feature statistics of generated and real images; IS looks at a classifier's confidence. The
# standard features come from Inception-v3, whose weights this machine cannot download. So we train a small digit
# classifier on each labelled data set (MNIST, MNIST-M) and use its penultimate layer as features and its logits for
# IS. Every metric computed with it is named `FID[clf-<dataset>]` etc.: comparable between our configs, **not**
# comparable with the paper's Inception-based numbers. The test accuracy below tells how good the features are.
#
# The natural32 stand-in has no labels, so no classifier can be trained on it honestly. Its features come from a
# frozen, seeded *random* CNN of the same architecture (`rand-natural32`): random convolutional features still
# separate image statistics (FID of a set with itself is 0 and grows with a distribution shift, as the sanity table
# below shows), but its IS is meaningless and is not reported. When torch-fidelity and the Inception weights are
# present locally, `afcore.evaluation.fid_kid_is(..., features="inception")` gives the standard numbers instead.
#
# **How to read the sanity table.** For each data set we split its held-out test images into two halves and compare
# the first half with (a) the second half — the floor a perfect generator would reach at this sample size (training
# images would not do: the classifier has seen them, so their features are more confident) — and with the second
# half (b) plus Gaussian noise of std 0.2 and (c) blurred with a 3x3 box filter, two typical generator defects, and
# (d) with pure noise images, what an untrained generator produces. KID is x100 like the paper and unbiased, so it can be
# slightly negative when two sets come from one distribution; its ± is the standard deviation over KID's subsets.
#
# **Units.** FID is a squared distance in feature space and KID a cubic-kernel MMD, so both scale with the features'
# size: FID with its square, KID with up to its sixth power. Our features are the classifier's last pooled ReLU layer
# divided by one number, chosen so the training images' features have unit RMS per dimension (Inception's pool
# features have an RMS of a fraction of one, so our values run somewhat larger than Inception ones for the same
# defect). One scale for all dimensions keeps the feature geometry. An earlier version standardised each dimension
# on its own (a BatchNorm without affine parameters): dimensions that barely vary on real digits were then divided by a
# tiny standard deviation, any sample that activates them moved by hundreds of units, and undertrained samples scored
# FID in the thousands and KID x100 in the millions.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
classifier_datasets = ["mnist", "mnist_m"]
classifier_steps = 600
classifier_batch = 64
classifier_lr = 0.002
random_feature_datasets = ["natural32"]
sanity_images = 500

# %%
import shutil
from pathlib import Path

import pandas as pd

import matplotlib.pyplot as plt
import torch

from afcore import data, evaluation
from afcore.train import batch_sampler, train_loop
from afcore.utils import make_generator, pick_device, save_figure, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device, deterministic)
if dev.type == "cpu":
    torch.set_num_threads(1)  # a small CNN: one thread is as fast and immune to core contention
results = {"profile": profile, "steps": classifier_steps, "batch": classifier_batch}
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in classifier_datasets:
    prepared = data.load_prepared(name)
    if prepared["train_labels"] is None:
        raise ValueError(f"classifier_datasets: {name!r} has no labels; allowed: labelled sets (mnist, mnist_m)")
    train_x, train_y = prepared["train"], prepared["train_labels"]

    sampler = batch_sampler(train_x, train_y, batch_size=classifier_batch, seed=seed, device=dev)

    def get_batch(step):
        images, labels, _ = sampler(step)
        return images, labels

    ckpt_dir = f"checkpoints/classifier/{name}_run"
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # a stage run trains from scratch; resume is for interruptions
    model, _, history = train_loop(evaluation.DigitClassifier(train_x.shape[1]), evaluation.classifier_loss,
                                   get_batch, steps=classifier_steps, lr=classifier_lr, ckpt_dir=ckpt_dir,
                                   device=str(dev), desc=f"classifier {name}")
    # a short run's momentum-averaged BatchNorm statistics lag behind the weights: recompute them exactly
    model = evaluation.calibrate_batchnorm(model, train_x.to(dev))
    evaluation.save_classifier(model.cpu(), f"checkpoints/classifier/{name}.pt")
    acc = evaluation.accuracy(model.to(dev), prepared["test"].to(dev), prepared["test_labels"].to(dev))
    results[name] = {"test_accuracy": acc, "test_images": int(len(prepared["test"]))}
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label=f"{name} (test acc {acc:.3f})")
for name in random_feature_datasets:
    if not Path(f"data/{name}.pt").exists():
        raise ValueError(f"random_feature_datasets: data/{name}.pt missing; run the data stage with {name!r}")
    prepared = data.load_prepared(name)
    evaluation.save_classifier(evaluation.random_features(prepared["train"].shape[1], seed,
                                                          calibrate=prepared["train"].to(dev)).cpu(),
                               f"checkpoints/classifier/{name}.pt")
    results[name] = {"features": f"rand-{name}", "note": "frozen seeded random CNN (no labels)"}
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy")
ax.legend()
save_figure(fig, "figures/11_classifier/loss.png")
plt.show()

# %% [markdown]
# ## Sanity check of the metrics with each feature extractor
# Numbers are in each extractor's own feature space: compare rows within one data set, never across data sets.

# %%
rows = []
for name in list(classifier_datasets) + list(random_feature_datasets):
    prepared = data.load_prepared(name)
    feats = evaluation.load_classifier(f"checkpoints/classifier/{name}.pt")
    n = min(sanity_images, len(prepared["test"]), len(prepared["train"]))
    half = min(n, len(prepared["test"]) // 2)
    test, other = prepared["test"][:half], prepared["test"][half:2 * half]
    test, other = test.to(dev), other.to(dev)
    noisy = (other + 0.2 * torch.randn(other.shape, generator=make_generator(seed, dev), device=dev)).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(other, 3, stride=1, padding=1, count_include_pad=False)
    pure_noise = torch.randn(other.shape, generator=make_generator(seed + 1, dev), device=dev).clamp(-1, 1)
    for label, fake in (("other test images", other), ("other + noise 0.2", noisy), ("other blurred 3x3", blurred),
                        ("pure noise images", pure_noise)):
        m = evaluation.fid_kid_is(test, fake, feats, tag=name, kid_subset=min(100, n), device=dev)
        key = f"{feats.feature_kind}-{name}"
        rows.append({"dataset": name, "features": key, "compared": label, "images": half,
                     "FID": m[f"FID[{key}]"], "KIDx100": m[f"KIDx100[{key}]"], "KIDx100_std": m[f"KIDx100_std[{key}]"],
                     "IS": m[f"IS[{key}]"] if feats.feature_kind == "clf" else float("nan")})
results["sanity"] = rows
table = pd.DataFrame(rows)
save_json(results, "metrics/11_classifier.json")
table

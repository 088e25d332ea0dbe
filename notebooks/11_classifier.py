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
import matplotlib.pyplot as plt
import pandas as pd

from afcore.stages import classifier as stage

cfg = stage.Config.from_mapping(globals())
dev = stage.setup(cfg, cfg.device)  # seeds; one CPU thread on the CPU

# %% [markdown]
# ## Training the classifiers
# Each labelled set trains from scratch (`classifier_steps` AdamW steps of `classifier_batch` images drawn on the
# device from seeded generators, through `afcore.train.train_loop`); afterwards its BatchNorm statistics are
# recomputed exactly on the training images, and the model goes to `checkpoints/classifier/<name>.pt`. Each
# unlabelled set gets its frozen random CNN.

# %%
results = {"profile": cfg.profile, "steps": cfg.classifier_steps, "batch": cfg.classifier_batch}
histories = {}
for name in cfg.classifier_datasets:
    results[name], history = stage.train_classifier(cfg, name, dev, ".")
    histories[name] = (history, results[name]["test_accuracy"])
for name in cfg.random_feature_datasets:
    results[name] = stage.random_extractor(cfg, name, dev, ".")
fig = stage.figure_loss(histories)
plt.show()

# %% [markdown]
# ## Sanity check of the metrics with each feature extractor
# Numbers are in each extractor's own feature space: compare rows within one data set, never across data sets.

# %%
results["sanity"] = stage.sanity_rows(cfg, dev, ".")
stage.write_outputs(results, ".", fig)
pd.DataFrame(results["sanity"])

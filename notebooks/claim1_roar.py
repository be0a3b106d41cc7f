# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Appendix C — remove and retrain (ROAR)
#
# **Claim (paper Appendix C).** Label-free feature importance finds the pixels an autoencoder needs: if the pixels
# that label-free GradientSHAP and Integrated Gradients rank most important are removed from every training
# image and the autoencoder is retrained on what is left, its reconstruction loss on the (intact) test set is worse
# than after removing as many *random* pixels. The paper shows a figure only (no numbers).
#
# **Procedure** (experiments.md §4). Train a reconstruction autoencoder (identity pretext, latent dimension 4 on
# MNIST, 16 on CIFAR) for 10 epochs, batch 300, shuffled; its test MSE is the 0 % point. Explain every training
# image with the trained encoder (label-free GradientSHAP and IG with a black baseline, and seeded random scores);
# for p ∈ {10, 20, 50, 70, 100} % set the top-k pixels of each image to 0 (k = ⌊p·D/100⌋, D pixels, channels
# summed) and retrain the autoencoder **from the same initial weights** (and the same data order) on the masked
# images; report its MSE on the unmasked test set.
#
# **Two bugs of the authors' code are fixed here.** (1) They computed the attributions on a *shuffled* loader but
# looked the masks up by dataset position, so every training image got another image's mask; we attribute in
# dataset order. (2) Their loop rebound `encoder` to each retrained model, so Integrated Gradients explained the
# model retrained on 100 %-masked (all-black) GradientSHAP images; here every method explains the original trained
# encoder. The random scores are seeded. As everywhere in this book, the models validate on a held-out 10 % of their
# own (masked) training images, not on the test set.
#
# **Seeds.** The paper (and ORIG) retrained once per setting. Here every (method, level) is retrained with
# `n_seeds` seeds: seed 0 starts from the base model's own initial weights (as ORIG), seed *s* from the initial
# weights and data order of seed `seed + s`, the same for every method and level, so that the methods are compared
# **paired by seed**, with error bars.
#
# **Degenerate levels.** With a black baseline, label-free GradientSHAP and IG give black pixels zero importance,
# so once p % exceeds an image's share of non-zero pixels their masks remove *everything*: the retraining inputs
# are then identical to those at 100 %, and "losing more than Random" there tests nothing. Such levels (and levels
# whose masked images equal a lower level's) are detected from the masks, marked `*` below, and left out of the
# verdict.

# %% tags=["parameters"]
dataset = "mnist"         # mnist | cifar10 | cifar100
model = None              # only the autoencoder
methods = ["gradient_shap", "integrated_gradients", "random"]  # attribution methods ranking the removed pixels
percents = [10, 20, 50, 70, 100]                               # % of pixels removed from every training image
n_seeds = 3               # retraining seeds per (method, level) (the paper: 1)
batch_size = 256          # explanation batch size
n_show = 3                # training images shown per method
mode = "inference"        # "inference": load the shipped checkpoints | "train": train every model the page needs
smoke = False             # True: a seconds-long run on generated data with tiny models (proves the code runs, not the claim)
seed = 1
device = "auto"           # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
data_dir = None           # default: $LFXAI_DATA_DIR, then <repo>/data
output_dir = None         # default: results/<notebook>/<dataset>
checkpoint_dir = None     # default: <repo>/checkpoints
reuse_checkpoints = False # train mode: reuse matching checkpoints instead of retraining them
n_epochs = None           # train mode: None keeps the paper's epochs; an int caps every model's training

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from lfxai_utils import plotting, report
from lfxai_utils.experiments import common, roar as X

exp = common.setup_notebook(X, globals())   # checks every parameter's type and range, then creates the folders
methods, percents = X.validate(methods, percents)
n_seeds = X.validate_seeds(n_seeds)
percents = exp.size(percents, X.smoke_levels(percents))

# %% [markdown]
# ## Data

# %%
splits = X.load_data(exp)
x_train = X.train_images(splits)
baseline = common.baseline_for(dataset, splits)
nonzero = X.nonzero_pixels(x_train).sum(1).double()
n_pixels = x_train.shape[-2] * x_train.shape[-1]
print(f"{len(splits.train):,} training images (all masked for retraining) and {len(splits.test):,} test images "
      f"(never masked); {n_pixels} pixels per image")
print(f"non-zero pixels per training image: mean {nonzero.mean():.1f} ({100 * nonzero.mean() / n_pixels:.1f} %), "
      f"min {nonzero.min():.0f}, max {nonzero.max():.0f} — removing a pixel that is already 0 changes nothing")

# %% [markdown]
# ## Model
#
# The base autoencoder, trained on the unmasked training images (the 0 % point).

# %%
base, base_manifest = X.get_base_model(exp, splits)
report.manifest_table({X.checkpoint(dataset): base_manifest})

# %% [markdown]
# ## Explanations
#
# Label-free attributions of the training images, **in dataset order**, by the base model's encoder; then the
# masked training images the retrained models see. Train mode explains every training image (each is masked); the
# book's inference run explains the first 1,000, enough to check that its masks are those every shipped model
# was trained on (the manifests record the masks' sha256 over all images and over those 1,000). Each row is one
# training image under one method; columns remove more and more of its most important pixels (black = removed,
# or black already).

# %%
x_explain = X.images_to_explain(exp, x_train, X.required_checkpoints(dataset, None, methods, percents, n_seeds)[1:])
scores = X.train_attributions(exp, base.encoder, x_explain, methods, baseline, batch_size=batch_size)
images, rows, cols = X.example_grid(x_explain, scores, percents, n=n_show)
fig = plotting.image_grid(images, row_labels=rows, col_labels=cols, title=f"Masked training images — {exp.label}")
exp.save_figure(fig, "masked_examples")
plt.show()

# %% [markdown]
# ## Metric: test loss after remove-and-retrain
#
# One autoencoder per method, removal level and seed (paired across methods by seed); each is evaluated on the
# full, unmasked test set. `nonzero_removed` is the mean fraction of a training image's non-zero pixels that the
# mask removed, `black_images` the fraction of training images left entirely black. The table gives the mean ±
# sd of the test MSE over seeds; `*` marks a degenerate level.

# %%
models = X.retrain(exp, splits, scores, percents, base_manifest, runs=range(n_seeds))
display(report.manifest_table({X.checkpoint(dataset, m, p, r): rt.manifest for (m, p, r), rt in models.items()}))
same = X.mask_reproduction(models)
print(f"masks computed in this run from the base model (over {same.images.min():,} training images) are the "
      f"ones the retrained models were trained on: {int(same.identical.sum())} of {len(same)}")
df = X.retrained_losses(exp, splits, base, models)
exp.save_csv(df, "roar.csv")
degenerate = df[df.degenerate != ""].drop_duplicates(["method", "percent"])[["method", "percent", "degenerate"]]
if len(degenerate):
    display(Markdown("**Degenerate levels** (excluded from the verdict):"), degenerate.reset_index(drop=True))
X.loss_table(df)

# %% [markdown]
# ## Figure
#
# Left: the paper's plot, test MSE against the share of pixels removed (mean over seeds, band: 95 % CI over
# seeds). Right: the same models against the share of each training image's *non-zero* pixels that were removed
# (removing a black pixel changes nothing, and the attribution methods give black pixels zero importance with a
# black baseline, while random scores do not).

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
plotting.line_ci(df, "percent", "test_loss", "method", ax=ax1, xlabel="% of pixels removed from each training image",
                 ylabel="test MSE (unmasked test set)", title=f"ROAR — {exp.label}")
plotting.line_ci(df.assign(nonzero_pct=100 * df.nonzero_removed), "nonzero_pct", "test_loss", "method", ax=ax2,
                 xlabel="mean % of an image's non-zero pixels removed", ylabel="test MSE (unmasked test set)",
                 title="the same models, by non-zero pixels removed")
exp.save_figure(fig, "roar")
plt.show()
plotting.show_plotly(plotting.plotly_line_ci(df, "percent", "test_loss", "method",
                                             xlabel="% of pixels removed from each training image",
                                             ylabel="test MSE (unmasked test set)",
                                             title=f"ROAR — {exp.label} (interactive)"))

# %% [markdown]
# ## Verdict
#
# Criterion: for GradientSHAP and for Integrated Gradients, at **every informative** removal level 0 < p < 100 %
# (degenerate levels excluded; at 100 % every method removes every pixel), the retrained model's test MSE is above
# the Random-mask model's **for every retraining seed** (paired by seed). "Does not hold" if the mean over seeds is
# below Random's at some informative level; "inconclusive" otherwise, with a single seed, or with no informative
# level left.

# %%
verdicts = X.verdicts(df, dataset, mean_nonzero=float(nonzero.mean()), n_features=n_pixels)
exp.write_summary(verdicts)
report.verdict_table(verdicts)

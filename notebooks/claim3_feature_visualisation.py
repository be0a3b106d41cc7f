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
# # Extension of Claim 3 — what do the VAEs' latent units respond to?
#
# **Context (FACT's "Lucid" extension, experiments.md §7a).** Claim 3 measures how much the saliency maps of a
# VAE's latent units overlap. Feature visualisation asks the complementary question: which input drives a unit
# most? FACT drew, for the β-VAEs of Claim 3, one activation-maximising picture per latent mean unit and β, and
# presented the grid as a qualitative extension of Claim 3; it states no testable claim about it.
#
# **Procedure.** For the β-VAEs with β ∈ {1, 5, 10} (run 0 of the Claim 3 grid, the same checkpoints), optimise one
# picture per latent unit j to maximise μ_j: the picture is parameterised in the Fourier domain (lucent's spectral
# parameterisation, no colour decorrelation) and squashed into [0, 1] by a sigmoid; Adam with learning rate 0.05
# for 1,000 steps; no jitter or other transforms. As FACT did, the encoder's ReLUs are replaced by LeakyReLU(0.1)
# **at visualisation time only** (a copy of the encoder with the same weights), so that gradients do not die. We
# use our own tested loop (`lfxai_utils.visualisation`) instead of `torch-lucent`, which FACT had to patch. Every β
# starts from the same initial pictures.
#
# **What we measure.** FACT published no number. We report how strongly each picture drives its unit through the
# *trained* (ReLU) encoder compared with the test images (ratio to the test-set maximum), and how similar the
# pictures of different units are (mean pairwise Pearson correlation) at each β.

# %% tags=["parameters"]
dataset = "mnist"         # mnist | cifar10 | cifar100
model = None              # only one model family here (Burgess β-VAEs)
betas = [1, 5, 10]        # the β-VAEs drawn (run 0 of the Claim 3 grid, unless it is being retrained)
units = None              # latent units drawn (None: all d of them; 0-based indices)
n_steps = 1000            # Adam steps (FACT: 1000)
lr = 0.05                 # Adam learning rate (lucent's default)
parameterisation = "fft"  # "fft" (lucent's spectral parameterisation) | "pixel"
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
from lfxai_utils.experiments import common, feature_visualisation as X

exp = common.setup_notebook(X, globals())   # checks every parameter's type and range, then creates the folders

d = X.D.VAE_SETTINGS[dataset].latent_dim
draw_units = X.validate(n_steps, lr, parameterisation, units, d)
steps = exp.size(int(n_steps), 5)

# %% [markdown]
# ## Data
#
# The test set only serves to compare the pictures' activations with those of real images.

# %%
splits = exp.load_data(**X.D.load_kwargs(dataset))
test_x, _ = splits.test.tensors()
print(f"{len(splits.train):,} training and {len(test_x):,} test images of shape {tuple(test_x.shape[1:])}")

# %% [markdown]
# ## Models
#
# The β-VAEs of Claim 3 (run 0); in train mode they are trained exactly as that notebook does. While the Claim 3
# grid is being retrained, run 0 is drawn only once all its β-VAEs are trained as `make checkpoints` trains them
# now: the pictures of one figure never come from VAEs trained differently (the note below says which run is drawn).

# %%
run = X.select_run(exp, splits, betas)
if run.note:
    display(Markdown(run.note))
vis_points = X.points(betas, run.runs[0])
print(f"{len(vis_points)} β-VAEs (run {run.runs[0]}) × {len(draw_units)} units, {steps} Adam steps each")
vaes = X.D.get_vaes(exp, splits, vis_points)
report.manifest_table({m["name"]: m for _, m in vaes.values()})

# %% [markdown]
# ## Explanation: one picture per latent unit
#
# Rows: β; columns: the latent mean units (FACT's `lucid.pdf` layout).

# %%
results = X.visualise(exp, vaes, draw_units, n_steps=steps, lr=lr, parameterisation=parameterisation)
fig = X.grid_figure(results, title=f"Activation-maximising pictures of the β-VAE units — {exp.label}")
exp.save_figure(fig, "feature_visualisation")
plt.show()

# %% [markdown]
# ## Metric: how strongly the pictures drive their units
#
# For each unit: μ_j of its picture through the trained (ReLU) encoder, beside μ_j over the test images. A unit
# whose μ_j hardly varies over the test images (variance ≤ 0.01, `in_use` false) has collapsed onto the prior
# (larger β encourages this): it encodes nothing, and its picture only nudges a near-constant output, so the
# summary uses the units in use.

# %%
table = X.activation_table(exp, vaes, results, test_x)
similarity = X.unit_similarity(results)
exp.save_csv(table, "activations.csv")
exp.save_csv(similarity, "unit_similarity.csv")
exp.save_csv(X.history_long(results), "optimisation_history.csv")
display(table[["beta", "unit", "in_use", "mu_vis", "mu_vis_leaky", "test_max", "test_q99", "ratio_to_test_max",
               "z_vs_test"]].round(3))
similarity.round(3)

# %% [markdown]
# ## Figure: the objective along the optimisation

# %%
fig = X.history_figure(results, title=f"Optimisation — {exp.label}")
exp.save_figure(fig, "optimisation_history")
plt.show()
plotting.show_plotly(X.history_plotly(results, title=f"Optimisation — {exp.label} (interactive)"))

# %% [markdown]
# ## Verdict
#
# There is no claim to test: FACT presents these pictures as a qualitative extension of Claim 3. The record below
# states what the pictures show numerically and is marked inconclusive by construction.

# %%
verdicts = X.verdicts(exp, table, similarity)
exp.write_summary(verdicts)   # the summary.csv as written (a smoke run never claims a verdict)

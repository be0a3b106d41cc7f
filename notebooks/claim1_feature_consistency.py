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
# # Claim 1.1 — label-free feature importance is consistent
#
# **Claim (paper §4.1, Fig. 2).** Label-free feature importance picks out the features the representation depends on:
# masking the *k* most important features of an input (replacing them with a baseline) moves its representation
# f(x) further, ‖f(x) − f(x̃)‖², than masking *k* random features. GradientSHAP and Integrated Gradients should
# move it most; all curves meet at 100 % masked.
#
# **Procedure** (experiments.md §2): explain every test example with label-free GradientSHAP, Integrated
# Gradients, Saliency and random scores; for p ∈ {5, 10, 20, 50, 80, 100} % mask the top-p % of features
# (channels summed) and record the shift per example. Bands are 95 % confidence intervals over examples
# (the authors used batches). We also run GradientSHAP with the authors' mis-paired wrapper, to show what the
# fix changes.

# %% tags=["parameters"]
dataset = "mnist"         # mnist | ecg5000 | cifar10 | cifar100
model = None              # None: the autoencoder; "simclr": the paper's SimCLR ResNet-18 (cifar10 only)
n_explain = None          # test examples explained (None: the whole test set, as the paper)
batch_size = 256          # explanation batch size
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
from lfxai_utils.experiments import common, feature_consistency as X

exp = common.setup_notebook(X, globals())   # checks every parameter's type and range, then creates the folders
X.validate(dataset, model)
if model == "simclr":   # the SimCLR path's silent deviations (also on the methods page)
    display(Markdown(X.simclr_deviations_markdown()))

# %% [markdown]
# ## Data

# %%
splits = exp.load_data(**X.load_kwargs(dataset))
x = X.explained_set(splits, exp.size(n_explain, 32), seed)
baseline = common.baseline_for(dataset, splits, model)
print(f"{len(splits.train):,} training and {len(splits.test):,} test examples; explaining {len(x):,}")

# %% [markdown]
# ## Model

# %%
net, manifest = X.get_model(exp, splits)
encoder = net.encoder
report.manifest_table({X.checkpoint(dataset, model): manifest})

# %% [markdown]
# ## Explanations
#
# Label-free attributions of a few test examples (brighter = more important).

# %%
attrs = X.attributions(exp, encoder, x, baseline, batch_size=batch_size)
fig = plotting.attribution_examples(x, attrs, X.METHOD_LABELS, n=6)
plt.show()
agreement = X.pairing_agreement(attrs)
print(f"GradientSHAP, correct vs authors' pairing: mean per-example Pearson correlation {agreement:.3f} "
      "(1 would mean the upstream bug changes nothing)")

# %% [markdown]
# ## Metric: representation shift

# %%
df = X.shifts(exp, encoder, x, attrs, baseline, batch_size=batch_size)
exp.save_csv(df, "representation_shift.csv")
X.summarise(df).pivot(index="percent", columns="method", values="mean").round(4)

# %% [markdown]
# ## Figure

# %%
unit = "time steps" if dataset == "ecg5000" else "pixels"
ax = plotting.line_ci(df, "percent", "shift", "method", xlabel=f"% perturbed {unit}",
                      ylabel="representation shift", title=f"Claim 1.1 — {exp.label}")
exp.save_figure(ax.figure, "representation_shift")
plt.show()
plotting.show_plotly(plotting.plotly_line_ci(df, "percent", "shift", "method", xlabel=f"% perturbed {unit}",
                                             ylabel="representation shift", title=f"Claim 1.1 — {exp.label} (interactive)"))

# %% [markdown]
# ## Verdict
#
# Criterion: a method's mean shift is above random masking's at every masked fraction 0 < p < 100 %.

# %%
verdicts = X.verdicts(exp, df)
exp.write_summary(verdicts)
report.verdict_table(verdicts)

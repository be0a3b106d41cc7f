from nbwrite import COMMON_PARAMS, code, md, params, setup_cell, write

write("notebooks/claim1_feature_consistency.ipynb", [
    md("""
    # Claim 1.1 — label-free feature importance is consistent

    **Claim (paper §4.1, Fig. 2).** Label-free feature importance picks out the features the representation depends on:
    masking the *k* most important features of an input (replacing them with a baseline) moves its representation
    f(x) further, ‖f(x) − f(x̃)‖², than masking *k* random features. GradientSHAP and Integrated Gradients should
    move it most; all curves meet at 100 % masked.

    **Procedure** (experiments.md §2): explain every test example with label-free GradientSHAP, Integrated
    Gradients, Saliency and random scores; for p ∈ {5, 10, 20, 50, 80, 100} % mask the top-p % of features
    (channels summed) and record the shift per example. Bands are 95 % confidence intervals over examples
    (the authors used batches). We also run GradientSHAP with the authors' mis-paired wrapper, to show what the
    fix changes.
    """),
    params('''
    dataset = "mnist"         # mnist | ecg5000 | cifar10 | cifar100
    model = None              # None: the autoencoder; "simclr": the paper's SimCLR ResNet-18 (cifar10 only)
    n_explain = None          # test examples explained (None: the whole test set, as the paper)
    batch_size = 256          # explanation batch size
    ''', COMMON_PARAMS),
    code(setup_cell("feature_consistency") + '''X.validate(dataset, model)
if model == "simclr":   # the SimCLR path's silent deviations (also on the methods page)
    display(Markdown(X.simclr_deviations_markdown()))'''),
    md("## Data"),
    code('''
    splits = exp.load_data(**X.load_kwargs(dataset))
    x = X.explained_set(splits, exp.size(n_explain, 32), seed)
    baseline = common.baseline_for(dataset, splits, model)
    print(f"{len(splits.train):,} training and {len(splits.test):,} test examples; explaining {len(x):,}")
    '''),
    md("## Model"),
    code('''
    net, manifest = X.get_model(exp, splits)
    encoder = net.encoder
    report.manifest_table({X.checkpoint(dataset, model): manifest})
    '''),
    md("## Explanations\n\nLabel-free attributions of a few test examples (brighter = more important)."),
    code('''
    attrs = X.attributions(exp, encoder, x, baseline, batch_size=batch_size)
    fig = plotting.attribution_examples(x, attrs, X.METHOD_LABELS, n=6)
    plt.show()
    agreement = X.pairing_agreement(attrs)
    print(f"GradientSHAP, correct vs authors' pairing: mean per-example Pearson correlation {agreement:.3f} "
          "(1 would mean the upstream bug changes nothing)")
    '''),
    md("## Metric: representation shift"),
    code('''
    df = X.shifts(exp, encoder, x, attrs, baseline, batch_size=batch_size)
    exp.save_csv(df, "representation_shift.csv")
    X.summarise(df).pivot(index="percent", columns="method", values="mean").round(4)
    '''),
    md("## Figure"),
    code('''
    unit = "time steps" if dataset == "ecg5000" else "pixels"
    ax = plotting.line_ci(df, "percent", "shift", "method", xlabel=f"% perturbed {unit}",
                          ylabel="representation shift", title=f"Claim 1.1 — {exp.label}")
    exp.save_figure(ax.figure, "representation_shift")
    plt.show()
    plotting.show_plotly(plotting.plotly_line_ci(df, "percent", "shift", "method", xlabel=f"% perturbed {unit}",
                                                 ylabel="representation shift", title=f"Claim 1.1 — {exp.label} (interactive)"))
    '''),
    md("## Verdict\n\nCriterion: a method's mean shift is above random masking's at every masked fraction 0 < p < 100 %."),
    code('''
    verdicts = X.verdicts(exp, df)
    exp.write_summary(verdicts)
    report.verdict_table(verdicts)
    '''),
])

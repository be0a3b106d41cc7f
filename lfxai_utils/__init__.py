"""lfxai_utils: a tested, fast reproduction toolkit for
"Label-Free Explainability for Unsupervised Models" (Crabbé & van der Schaar, ICML 2022).

Submodules (imported lazily so that ``import lfxai_utils`` stays cheap):

- :mod:`lfxai_utils.data`       datasets (MNIST, CIFAR-10/100, ECG5000, dSprites), checksums, splits
- :mod:`lfxai_utils.fixtures`   tiny generated datasets in the real file formats (tests, smoke runs)
- :mod:`lfxai_utils.features`   label-free feature importance (captum wrappers)
- :mod:`lfxai_utils.examples`   label-free example importance (influence functions, TracIn, SimplEx, DKNN, cosine)
- :mod:`lfxai_utils.metrics`    masks, representation shift, similarity rates, correlations, saliency metrics
- :mod:`lfxai_utils.models`     every architecture of the paper and its reproductions
- :mod:`lfxai_utils.training`   one training loop for all models
- :mod:`lfxai_utils.checkpoints` checkpoint format with JSON manifests, verified loading
- :mod:`lfxai_utils.experiments` one module per claim, each with its :class:`~lfxai_utils.experiments.spec.ClaimSpec`
- :mod:`lfxai_utils.book`        the book builder (``python -m lfxai_utils.book``) and ``make checkpoints``
"""
__version__ = "0.1.0"

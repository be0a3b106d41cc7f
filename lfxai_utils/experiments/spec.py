"""The interface between a claim module and what runs it without its notebook (the book, ``make checkpoints``).

Every claim module ends with one :class:`ClaimSpec`, ``SPEC``: its notebook, the datasets and models it accepts, the
data a page needs, the checkpoints a page loads given the page's parameters, and the training jobs that produce them.
:func:`lfxai_utils.experiments.spec_for` returns it by notebook name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from .common import Experiment
    from .jobs import TrainJob


@dataclass(frozen=True)
class ClaimSpec:
    """What one claim notebook needs, for the book's readiness checks and for ``make checkpoints``.

    ``data(dataset, model)`` gives the ``(dataset name, load_dataset kwargs)`` pairs a page loads;
    ``checkpoints(dataset, model, **kw)`` the names it loads in inference mode, where ``kw`` are the page parameters
    named in ``checkpoint_params`` (e.g. ``n_runs``, ``betas``); ``jobs(dataset, model, **kw)`` the
    :class:`~lfxai_utils.experiments.jobs.TrainJob` s that train them, with the page parameters named in
    ``job_params``. ``train(exp, **selector)`` trains one job whose ``notebook`` is this one (a page that loads
    another notebook's models, e.g. the encoder-vs-full-model page, has none). ``optional(dataset, model, **kw)``
    names the checkpoints a page may load besides the required ones when they are present (the book fingerprints
    them).
    """

    notebook: str
    datasets: tuple[str, ...]
    models: tuple[str | None, ...]
    data: Callable[[str, "str | None"], Sequence[tuple[str, Mapping[str, Any]]]]
    checkpoints: Callable[..., Sequence[str]]
    checkpoint_params: tuple[str, ...] = ()
    jobs: "Callable[..., Sequence[TrainJob]] | None" = None
    job_params: tuple[str, ...] = ()
    train: "Callable[..., None] | None" = None
    optional: Callable[..., Sequence[str]] | None = None

    def data_requirements(self, dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The ``(dataset name, load_dataset kwargs)`` pairs a page on ``dataset`` (and ``model``) loads."""
        return [(name, dict(kwargs)) for name, kwargs in self.data(dataset, model)]

    def required_checkpoints(self, dataset: str, model: str | None = None,
                             params: Mapping[str, Any] | None = None) -> list[str]:
        """The checkpoint names a page loads in inference mode; ``params`` are the page's papermill parameters (only
        those named in ``checkpoint_params`` are used, the others keep the notebook's defaults)."""
        return list(self.checkpoints(dataset, model, **self._pick(params, self.checkpoint_params)))

    def optional_checkpoints(self, dataset: str, model: str | None = None,
                             params: Mapping[str, Any] | None = None) -> list[str]:
        """The checkpoints a page may load besides the required ones, when present (``optional``, called like
        ``checkpoints``; e.g. the runs a page picks from: see ``Experiment.select_runs``)."""
        if self.optional is None:
            return []
        return list(self.optional(dataset, model, **self._pick(params, self.checkpoint_params)))

    def training_jobs(self, dataset: str, model: str | None = None,
                      params: Mapping[str, Any] | None = None) -> list[TrainJob]:
        """The jobs that train every checkpoint of a page (``params``: its train-mode parameters, as above)."""
        if self.jobs is None:
            return []
        return list(self.jobs(dataset, model, **self._pick(params, self.job_params)))

    def train_job(self, exp: Experiment, **selector: Any) -> None:
        """Train one of this notebook's jobs (``selector``: the job's ``selector``)."""
        if self.train is None:
            raise ValueError(f"{self.notebook} trains no job of its own (its pages load other notebooks' models)")
        self.train(exp, **selector)

    @staticmethod
    def _pick(params: Mapping[str, Any] | None, names: tuple[str, ...]) -> dict[str, Any]:
        return {k: v for k, v in (params or {}).items() if k in names}

"""Every notebook parameter's type and valid range, checked in one place before a notebook does any work.

Each notebook's set-up cell calls :func:`lfxai_utils.experiments.common.setup_notebook`, which calls :func:`check`
with the notebook's namespace right after papermill's injected parameters and before
:func:`lfxai_utils.experiments.common.setup` creates a folder or loads a byte of data. A bad value raises
``ValueError`` naming the parameter, the value and what is allowed (every bad parameter at once, one line each)::

    ValueError: bad parameter(s) of claim1_feature_consistency:
      n_explain = -5 is not allowed (out of range): must be None or an integer >= 1 (test examples explained; None:
      the whole test set)

The schema is one table per notebook (:func:`schema`): the shared entries of the parameters every notebook has
(``COMMON_NAMES``, which close every notebook's parameters cell: mode, smoke, seed, device, folders, ...) plus
the notebook's own. ``tests/test_params.py`` fails when a notebook's ``parameters`` cell has a parameter without an
entry here, so a parameter added later cannot skip the check. The claim modules' own ``validate`` functions still run
afterwards (for checks that need the data, e.g. a unit index below the model's latent dimension).
"""
from __future__ import annotations

import ast
import json
import math
import numbers
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["Spec", "Int", "Real", "Bool", "Choice", "Names", "Numbers", "Folder", "Device", "fraction", "schema",
           "notebooks", "check", "check_values", "check_common", "COMMON_NAMES", "papermill_command"]


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _num(x: float) -> str:
    return str(x) if _is_int(x) else f"{x:g}"


def _bound(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return ""


@dataclass(frozen=True)
class Spec:
    """One parameter's rule: ``allowed`` says it in words; ``problem(value)`` returns None or why a value is bad."""

    doc: str = ""
    none: bool = False          # None is a valid value (e.g. "the whole test set")

    @property
    def allowed(self) -> str:
        text = self._allowed()
        return (f"None or {text}" if self.none else text) + (f" ({self.doc})" if self.doc else "")

    def _allowed(self) -> str:  # pragma: no cover - every subclass has one
        raise NotImplementedError

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.none else "None is not accepted here"
        return self._problem(value)

    def _problem(self, value: Any) -> str | None:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Spec):
    """An integer (not a bool, not a float such as 5.0) with ``min <= value <= max``."""

    min: int | None = 1
    max: int | None = None

    def _allowed(self) -> str:
        b = _bound(self.min, self.max, False, False)
        return f"an integer {b}".rstrip()

    def _problem(self, v: Any) -> str | None:
        if not _is_int(v):
            return f"not an integer ({type(v).__name__})"
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            return "out of range"
        return None


@dataclass(frozen=True)
class Real(Spec):
    """A finite real number (an int is fine) in a range whose ends may be open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = True
    high_open: bool = False

    def _allowed(self) -> str:
        return f"a finite number {_bound(self.low, self.high, self.low_open, self.high_open)}".rstrip()

    def _problem(self, v: Any) -> str | None:
        if not _is_real(v):
            return f"not a number ({type(v).__name__})"
        x = float(v)
        if not math.isfinite(x):
            return "not finite"
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return "out of range"
        if self.high is not None and (x >= self.high if self.high_open else x > self.high):
            return "out of range"
        return None


def fraction(doc: str = "", none: bool = False) -> Real:
    """A fraction in (0, 1]."""
    return Real(doc=doc, none=none, low=0.0, high=1.0, low_open=True, high_open=False)


@dataclass(frozen=True)
class Bool(Spec):
    def _allowed(self) -> str:
        return "True or False"

    def _problem(self, v: Any) -> str | None:
        return None if isinstance(v, bool) else f"not a bool ({type(v).__name__})"


@dataclass(frozen=True)
class Choice(Spec):
    """One of ``values`` (``None`` among them when it is a valid choice)."""

    values: tuple = ()

    @property
    def allowed(self) -> str:
        text = "one of " + ", ".join(map(repr, self.values))
        return text + (f" ({self.doc})" if self.doc else "")

    def problem(self, value: Any) -> str | None:
        return None if any(value is c or (type(value) is type(c) and value == c) for c in self.values) \
            else "unknown value"


def _as_items(value: Any) -> list | None:
    """A list from a list/tuple or a string as papermill's ``-p`` passes it (``"a,b"`` or ``"[1, 5]"``); else None."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "(")):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return None
        else:
            return [v.strip() for v in text.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


@dataclass(frozen=True)
class Names(Spec):
    """A non-empty list of distinct names from ``values`` (a list, a tuple or a comma-separated string)."""

    values: tuple = ()

    def _allowed(self) -> str:
        return ("a non-empty list (or comma-separated string) of distinct names from "
                + ", ".join(map(repr, self.values)))

    def _problem(self, v: Any) -> str | None:
        items = _as_items(v)
        if items is None:
            return f"not a list of names ({type(v).__name__})"
        if not items:
            return "empty"
        bad = [x for x in items if not isinstance(x, str) or x not in self.values]
        if bad:
            return "unknown name(s) " + ", ".join(map(repr, bad))
        if len(set(items)) != len(items):
            return "a name is listed twice"
        return None


@dataclass(frozen=True)
class Numbers(Spec):
    """A non-empty list of distinct numbers, each valid for ``item`` (a list, a tuple or a string of them)."""

    item: Spec = Int()

    def _allowed(self) -> str:
        return f"a non-empty list of distinct numbers, each {self.item._allowed()}"

    def _problem(self, v: Any) -> str | None:
        items = _as_items(v)
        if items is None:
            return f"not a list ({type(v).__name__})"
        if isinstance(v, str):   # "10,20": papermill -p passes a string; its items are numbers written out
            try:
                items = [ast.literal_eval(x) if isinstance(x, str) else x for x in items]
            except (ValueError, SyntaxError):
                return "not a list of numbers"
        if not items:
            return "empty"
        bad = [x for x in items if self.item.problem(x) is not None or x is None]
        if bad:
            return "bad item(s) " + ", ".join(map(repr, bad))
        if len({float(x) for x in items}) != len(items):
            return "a number is listed twice"
        return None


@dataclass(frozen=True)
class Folder(Spec):
    """A folder: a non-empty string or path (None: the documented default)."""

    none: bool = True

    def _allowed(self) -> str:
        return "a non-empty path (str)"

    def _problem(self, v: Any) -> str | None:
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if not isinstance(v, str):
            return f"not a path ({type(v).__name__})"
        return None if v.strip() else "empty"


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Device(Spec):
    def _allowed(self) -> str:
        return "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"

    def _problem(self, v: Any) -> str | None:
        if type(v).__name__ == "device" and type(v).__module__.startswith("torch"):   # a torch.device
            return None
        return None if isinstance(v, str) and _DEVICE.match(v) else "not a device name"


# ------------------------------------------------------------------------------------------------ the tables
#: The parameters every notebook has (the last lines of each ``parameters`` cell of ``notebooks/*.py``; a test
#: keeps them in step).
def _common() -> dict[str, Spec]:
    from .labels import MODES

    return {
        "mode": Choice(values=tuple(MODES), doc="inference: the shipped checkpoints; train: train every model"),
        "smoke": Bool(doc="a seconds-long run on generated data"),
        "seed": Int(min=0, max=2 ** 32 - 1),
        "device": Device(),
        "data_dir": Folder(doc="None: $LFXAI_DATA_DIR, then <repo>/data"),
        "output_dir": Folder(doc="None: results/<notebook>/<dataset>"),
        "checkpoint_dir": Folder(doc="None: <repo>/checkpoints"),
        "reuse_checkpoints": Bool(),
        "n_epochs": Int(min=1, none=True, doc="train mode: None keeps the paper's epochs"),
    }


#: The parameters every notebook has, in the order of its parameters cell.
COMMON_NAMES = ("mode", "smoke", "seed", "device", "data_dir", "output_dir", "checkpoint_dir", "reuse_checkpoints",
                "n_epochs")


def _own(notebook: str) -> dict[str, Spec]:
    """The notebook's own parameters (those before the common ones in its parameters cell)."""
    import importlib

    from .experiments import _MODULES

    if notebook not in _MODULES:
        raise ValueError(f"unknown notebook {notebook!r}; valid values: {', '.join(map(repr, sorted(_MODULES)))}")
    X = importlib.import_module(f"lfxai_utils.experiments.{_MODULES[notebook]}")
    base = {"dataset": Choice(values=tuple(X.DATASETS)), "model": Choice(values=tuple(X.MODELS))}
    batch = Int(min=1, doc="examples per batch")
    if notebook == "claim1_feature_consistency":
        return {**base, "n_explain": Int(min=1, none=True, doc="test examples explained; None: the whole test set"),
                "batch_size": batch}
    if notebook == "claim1_example_consistency":
        return {**base,
                "explainers": Names(values=tuple(X.EXPLAINERS), none=True, doc="None: the model's defaults"),
                "n_train": Int(min=2, doc="training examples ranked"),
                "n_test": Int(min=2, doc="test examples explained"),
                "if_recursion_depth": Int(min=1, doc="LiSSA recursions"),
                "if_batch_size": Int(min=1, none=True, doc="None: the model's training batch"),
                "if_damp": Real(low=0.0, high=1.0, low_open=False, high_open=True, doc="LiSSA damping"),
                "if_scale": Real(low=0.0, doc="LiSSA scale"),
                "if_n_train": Int(min=2, none=True, doc="influence functions: first subtrain examples; None: all"),
                "if_n_test": Int(min=1, none=True, doc="influence functions: first test examples; None: all"),
                "tracin_n_checkpoints": Int(min=1, none=True, doc="TracIn: evenly spaced saved checkpoints; None: all"),
                "batch_size": batch}
    if notebook == "claim1_roar":
        return {**base, "methods": Names(values=tuple(X.METHODS)),
                "percents": Numbers(item=Int(min=1, max=100), doc="% of pixels removed"),
                "n_seeds": Int(min=1, doc="retraining seeds per level"),
                "batch_size": batch,
                "n_show": Int(min=1, doc="training images shown per method")}
    if notebook == "claim2_pretext":
        return {**base, "n_runs": Int(min=1, none=True, doc="runs of 4 models; None: 5 when training, the shipped runs in inference"),
                "feature_method": Choice(values=tuple(X.FEATURE_METHODS)),
                "example_method": Choice(values=tuple(X.EXAMPLE_METHODS)),
                "n_explain": Int(min=2, none=True, doc="test images explained; None: the whole test set"),
                "n_train": Int(min=2, doc="class-balanced training subset"),
                "batch_size": batch,
                "method_sweep": Bool(none=True, doc="None: on MNIST only")}
    if notebook == "claim3_disentanglement":
        return {**base, "betas": Numbers(item=Real(low=0.0), doc="the β grid"),
                "losses": Names(values=tuple(X.LOSSES)),
                "n_runs": Int(min=1, none=True, doc="runs per (loss, β); None: 5 when training, the shipped runs in inference"),
                "n_explain": Int(min=1, none=True, doc="test images explained per model; None: the whole test set"),
                "n_plot": Int(min=1, doc="test images drawn"),
                "batch_size": batch}
    if notebook == "claim3_feature_visualisation":
        from .visualisation import PARAMETERISATIONS

        return {**base, "betas": Numbers(item=Real(low=0.0), doc="the β-VAEs drawn"),
                "units": Numbers(item=Int(min=0), none=True, doc="0-based latent units; None: all of them"),
                "n_steps": Int(min=1, doc="Adam steps"),
                "lr": Real(low=0.0, doc="Adam learning rate"),
                "parameterisation": Choice(values=tuple(PARAMETERISATIONS))}
    if notebook == "encoder_vs_decoder":
        return {**base, "n_runs": Int(min=1, none=True, doc="runs of the pretext page; None: 5 when training, the shipped runs in inference"),
                "ae_tasks": Names(values=tuple(X.AE_TASKS)),
                "n_explain": Int(min=1, none=True, doc="test images; None: the whole test set"),
                "batch_size": batch}
    raise ValueError(f"no parameter schema for notebook {notebook!r}: add its table to lfxai_utils/params.py")


def schema(notebook: str) -> dict[str, Spec]:
    """``{parameter: Spec}`` of ``notebook`` (its own parameters, then the common ones)."""
    return {**_own(notebook), **_common()}


def notebooks() -> list[str]:
    """Every notebook stem the schema knows (those of ``lfxai_utils.experiments._MODULES``)."""
    from .experiments import _MODULES

    return sorted(_MODULES)


def check_values(specs: Mapping[str, Spec], values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check ``values`` against ``specs`` (every name of ``specs`` must be in ``values``); return them.

    Raises ``ValueError`` listing every bad parameter: ``name = value: must be <allowed> (<why not>)``.
    """
    errors = []
    for name, spec in specs.items():
        if name not in values:
            errors.append(f"  {name}: not defined (the notebook's parameters cell must set it)")
            continue
        why = spec.problem(values[name])
        if why is not None:
            errors.append(f"  {name} = {values[name]!r} is not allowed ({why}): must be {spec.allowed}")
    if errors:
        raise ValueError(f"bad parameter(s){' of ' + where if where else ''}:\n" + "\n".join(errors))
    return {name: values[name] for name in specs}


def check_common(**values: Any) -> dict[str, Any]:
    """Check some of the common parameters (``seed=..., n_epochs=...``) by their shared schema entries.

    :func:`lfxai_utils.experiments.common.setup` calls it, so that a script or a training job calling ``setup``
    directly gets the same errors as a notebook.
    """
    common = _common()
    unknown = sorted(set(values) - set(common))
    if unknown:
        raise TypeError(f"not common parameters: {', '.join(unknown)}")
    return check_values({k: common[k] for k in values}, values)


def check(notebook: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Check every parameter of ``notebook`` as set in ``namespace`` (the notebook's ``globals()``).

    Returns ``{parameter: value}``; raises ``ValueError`` naming each bad parameter, its value and what is allowed.
    """
    return check_values(schema(notebook), namespace, notebook)


# ------------------------------------------------------------------------------------------ command lines
def _papermill_arg(name: str, value: Any) -> str:
    """One papermill command-line parameter that round-trips ``value`` with its type (shell-quoted)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return f"-p {name} {value}"
    if isinstance(value, str):
        try:   # papermill would turn "10", "True" or "None" into a number/bool/None: pass it raw
            json.loads(value.lower() if value in ("True", "False") else value)
            retyped = True
        except ValueError:
            retyped = value == "None"
        return f"{'-r' if retyped else '-p'} {name} {shlex.quote(value)}"
    return f"-y {shlex.quote(f'{name}: {json.dumps(value)}')}"


def papermill_command(notebook: str, parameters: Mapping[str, Any], out: str = "out.ipynb") -> str:
    """The shell command that runs ``notebooks/<notebook>.ipynb`` with ``parameters`` (in their order).

    Numbers, booleans and ``None`` go as ``-p``; a string as ``-p``, shell-quoted, or as ``-r`` (raw) where papermill
    would otherwise read it as a number, boolean or ``None``; lists and dicts as ``-y`` YAML. The notebook receives
    every value with its type. The book's pages and every error message that says how to run or train a page use it.
    """
    args = " ".join(_papermill_arg(k, v) for k, v in parameters.items())
    return f"papermill notebooks/{notebook}.ipynb {out} {args}"

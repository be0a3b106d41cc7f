"""Sphinx extension of the book (``_config.yml`` → ``sphinx.extra_extensions``): every script is served locally.

* **plotly.js** is copied from the installed ``plotly`` package into ``book/_static/plotly.min.js`` and loaded once
  by each page that shows a plotly figure (``html_js_files``, dropped from the other pages); the notebooks emit their
  figures without it when ``LFXAI_BOOK=1`` (:func:`lfxai_utils.plotting.show_plotly`).
* **MathJax 3** is copied from the ``sphinx-mathjax-offline`` package (MathJax 3.2.2) into ``book/_static/mathjax``
  and ``mathjax_path`` points at it, instead of Sphinx's default CDN URL.
* ipywidgets' JavaScript (require.js and the widget manager, loaded from a CDN by myst-nb) is switched off: the book's
  notebooks emit no widgets (``LFXAI_NO_PROGRESS=1`` during the book's execution).
* The API page (Sphinx autodoc, napoleon): a data, attribute or property docstring (e.g. a ``#:`` comment) is
  read as prose, not as napoleon's ``type: description`` (ours say ``What it is: ...``).
* Two JavaScript errors of Jupyter Book 1's stock pages are removed: sphinx-thebe's configuration script is included
  twice on notebook pages (``Identifier 'THEBE_JS_URL' has already been declared``; the book has no Thebe/Binder
  buttons, so its scripts are dropped), and pydata-sphinx-theme logs ``Got invalid theme mode`` unless a default
  colour mode is set (light: the figures have white backgrounds).

Both copies are git-ignored and refreshed when the installed package changes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

#: the MathJax files a page can load: the combined TeX→CHTML component, its fonts, the TeX extensions that
#: ``autoload`` may pull in, the context menu and its accessibility/speech modules
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml", "input/tex/extensions", "ui", "a11y", "sre", "adaptors")
MATHJAX_DIST = "sphinx-mathjax-offline"


class OfflineAssetError(RuntimeError):
    pass


def plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise OfflineAssetError(f"plotly.min.js not found at {path}; is the plotly package complete?")
    return path


def mathjax_dir() -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(MATHJAX_DIST)
    except PackageNotFoundError as err:
        raise OfflineAssetError(
            f"the book serves MathJax locally from the {MATHJAX_DIST!r} package, which is not installed: "
            "pip install -r requirements.txt -c requirements-lock.txt") from err
    path = Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))
    if not (path / "tex-chtml.js").is_file():
        raise OfflineAssetError(f"{MATHJAX_DIST} is installed but {path / 'tex-chtml.js'} is missing")
    return path


def _same(src: Path, dst: Path) -> bool:
    return dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime


def _copy_file(src: Path, dst: Path) -> None:
    if not _same(src, dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def vendor_assets(static_dir: Path) -> list[Path]:
    """Copy plotly.js and the MathJax subset into ``static_dir``; return the files now there."""
    out = [static_dir / "plotly.min.js"]
    _copy_file(plotly_js(), out[0])
    src = mathjax_dir()
    for part in MATHJAX_PARTS:
        p = src / part
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            dst = static_dir / "mathjax" / f.relative_to(src)
            _copy_file(f, dst)
            out.append(dst)
    return out


def _config_inited(app, config) -> None:
    static = Path(app.srcdir) / "book" / "_static"
    vendor_assets(static)
    config.mathjax_path = "mathjax/tex-chtml.js"
    config.nb_ipywidgets_js = {}
    config.html_context = {**(config.html_context or {}), "default_mode": "light"}
    if "book/_static" not in config.html_static_path:
        config.html_static_path = list(config.html_static_path) + ["book/_static"]
    if "plotly.min.js" not in [f if isinstance(f, str) else f[0] for f in config.html_js_files]:
        config.html_js_files = list(config.html_js_files) + ["plotly.min.js"]


def _is_thebe(js) -> bool:
    name = getattr(js, "filename", js)
    body = (getattr(js, "attributes", None) or {}).get("body", "")
    return (isinstance(name, str) and "thebe" in name) or "THEBE_JS_URL" in str(body)


def _is_plotly(js) -> bool:
    return str(getattr(js, "filename", js) or "").endswith("plotly.min.js")


def _page_context(app, pagename, templatename, context, doctree) -> None:
    files = context.get("script_files")
    if files:
        # plotly.js (4.6 MB) only where a figure needs it; no Thebe scripts anywhere
        has_plotly = "plotly-graph-div" in (context.get("body") or "")
        context["script_files"] = [f for f in files if not _is_thebe(f) and (has_plotly or not _is_plotly(f))]


_DATA_DOCS: dict[str, list[str]] = {}


def _keep_data_docstring(app, what, name, obj, options, lines) -> None:
    """Before napoleon: remember a data, attribute or property docstring as written."""
    if what in ("data", "attribute", "property"):
        _DATA_DOCS[name] = list(lines)


def _restore_data_docstring(app, what, name, obj, options, lines) -> None:
    """After napoleon: put it back (napoleon reads its first line as ``type: description``)."""
    if what in ("data", "attribute", "property") and name in _DATA_DOCS:
        lines[:] = _DATA_DOCS.pop(name)


def setup(app):
    app.connect("config-inited", _config_inited)
    app.setup_extension("sphinx.ext.autodoc")      # (listed after this extension in _config.yml)
    app.connect("autodoc-process-docstring", _keep_data_docstring, priority=400)      # napoleon's runs at 500
    app.connect("autodoc-process-docstring", _restore_data_docstring, priority=600)
    app.connect("html-page-context", _page_context, priority=900)   # after sphinx-thebe/myst-nb added theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}

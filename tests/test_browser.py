"""Open every page of the built book in headless Chromium and check what a reader would see.

For each HTML page of ``_build/html`` (built by ``make book``; ``.ci/run`` builds it before the tests) the test
loads the page from disk in Debian's ``chromium``, driven through the Chrome DevTools Protocol over a pipe
(``--remote-debugging-pipe``: no driver, no extra package), waits for plotly and MathJax to render, saves a
screenshot to ``_build/screenshots/`` and fails on

* a JavaScript error (uncaught exception, ``console.error``, or an error logged by the browser);
* a request that leaves the machine (anything but ``file:``/``data:``/``blob:``: the book must work offline) or a
  resource that fails to load;
* a missing image (``<img>`` that did not decode);
* a plotly figure that did not render (a ``.plotly-graph-div`` without its ``.main-svg``);
* math that MathJax did not typeset, or typeset as an error;
* a broken internal link (a link to a file of the book that does not exist, or to an anchor that is not on the
  target page);
* a stderr output block (a warning or anything else a library printed to stderr while the page executed).

Without a built book the test is skipped locally (run ``make book`` first) and fails under CI (``CI=true``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import pytest


ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("LFXAI_BOOK_HTML", ROOT / "_build" / "html"))
SHOTS = BUILD.parent / "screenshots"
WIDTH, MAX_SHOT_HEIGHT = 1280, 8000
LOCAL_SCHEMES = ("file", "data", "blob", "about")


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


_REFRESH = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.I)


def redirect_target(path: Path) -> str | None:
    """The URL a redirect-only page (Jupyter Book's top-level ``index.html``: a bare meta refresh) points at."""
    text = path.read_text(errors="replace")
    m = _REFRESH.search(text)
    return m.group(1) if m and len(text) < 1000 else None


def built_pages() -> list[str]:
    """Every HTML page of the build, relative to ``_build/html`` (assets, sources and redirect-only pages excluded:
    a page that navigates away at once cannot be inspected; :func:`test_redirects_lead_to_built_pages` checks those)."""
    if not (BUILD / "index.html").exists():
        return []
    skip = ("_static/", "_sources/", "_images/", "_downloads/")
    return sorted(p.relative_to(BUILD).as_posix() for p in BUILD.rglob("*.html")
                  if not p.relative_to(BUILD).as_posix().startswith(skip) and redirect_target(p) is None)


# -------------------------------------------------------------------------------------------- CDP client
class Chromium:
    """Headless Chromium driven over the DevTools protocol on fds 3/4 (NUL-separated JSON messages)."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="lfxai-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def child_fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--allow-file-access-from-files", "--hide-scrollbars",
             f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=child_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._id = 0
        self._lock = threading.Condition()
        self._responses: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._lock:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._responses[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        with self._lock:
            self._id += 1
            mid = self._id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while mid not in self._responses:
                if self._closed:
                    raise RuntimeError(f"chromium exited while waiting for {method}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {method} within {timeout} s")
                self._lock.wait(left)
            resp = self._responses.pop(mid)
        if "error" in resp:
            raise RuntimeError(f"{method}: {resp['error']}")
        return resp.get("result", {})

    def wait_event(self, method: str, session: str, since: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for ev in self.events[since:]:
                    if ev.get("method") == method and ev.get("sessionId") == session:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise TimeoutError(f"no {method} within {timeout} s")
                self._lock.wait(left)

    def new_tab(self) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return session

    def evaluate(self, session: str, expression: str, timeout: float = 60):
        res = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True,
                                             "timeout": int(timeout * 1000)}, session=session, timeout=timeout + 5)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- checks
#: a notebook's stderr output as myst-nb renders it (``<div class="output stderr ...">``): a warning or a progress
#: bar that a library printed, which has no place on a page of the book
STDERR_SELECTOR = ".output.stderr"

#: waits (bounded) until the page is fully rendered, then reports what a reader would miss
RENDERED = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  const plotlyPending = () => [...document.querySelectorAll('.plotly-graph-div')]
      .filter(d => !d.querySelector('.main-svg'));
  while (document.readyState !== 'complete' && Date.now() - t0 < 20000) await sleep(50);
  while (plotlyPending().length && Date.now() - t0 < 20000) await sleep(100);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await Promise.race([MathJax.startup.promise, sleep(20000)]);
  }
  if (document.fonts) await Promise.race([document.fonts.ready, sleep(5000)]);
  const mathNodes = [...document.querySelectorAll('.math')];
  return {
    brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
        .map(i => i.getAttribute('src')),
    plotlyFigures: document.querySelectorAll('.plotly-graph-div').length,
    emptyPlotly: plotlyPending().map(d => d.id || '(no id)'),
    math: mathNodes.length,
    untypesetMath: mathNodes.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60)),
    mathErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    stderr: [...document.querySelectorAll(STDERR_SELECTOR)].map(e => e.textContent.trim().slice(0, 300)),
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()
""".replace("STDERR_SELECTOR", repr(STDERR_SELECTOR))

_ids_cache: dict[Path, set[str]] = {}


def _ids(path: Path) -> set[str]:
    if path not in _ids_cache:
        text = path.read_text(errors="replace")
        _ids_cache[path] = set(re.findall(r'\bid="([^"]+)"', text)) | set(re.findall(r'\bname="([^"]+)"', text))
    return _ids_cache[path]


def broken_internal_links(links: list[str]) -> list[str]:
    """Links into the book whose file, or whose ``#anchor`` on that page, does not exist."""
    bad = []
    for href in dict.fromkeys(links):
        url = urlsplit(href)
        if url.scheme != "file":
            continue
        target = Path(unquote(url.path))
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            bad.append(f"{href} (no such file)")
        elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in _ids(target):
            bad.append(f"{href} (no anchor #{url.fragment} on that page)")
    return bad


def js_error(method: str | None, params: Mapping[str, Any]) -> str | None:
    """The JavaScript error an event reports (uncaught exception, console.error/assert, browser log error), or
    None when the event is not one."""
    if method == "Runtime.exceptionThrown":
        d = params.get("exceptionDetails", {})
        return f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return "console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        e = params["entry"]
        return f"browser: {e.get('text')} {e.get('url', '')}".strip()
    return None


def _event_problems(events: list[dict], session: str) -> tuple[list[str], list[str]]:
    """(JavaScript errors, network problems) among the events of one page load."""
    js, net, urls = [], [], {}
    for ev in events:
        if ev.get("sessionId") != session:
            continue
        method, p = ev.get("method"), ev.get("params", {})
        err = js_error(method, p)
        if err:
            js.append(err)
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            urls[p.get("requestId")] = url
            if urlsplit(url).scheme not in LOCAL_SCHEMES:
                net.append(f"request leaves the machine: {url}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            net.append(f"failed to load: {urls.get(p.get('requestId'), '?')} ({p.get('errorText')})")
    return js, net


# --------------------------------------------------------------------------------------------- fixtures
PAGES = built_pages()


def shot_path(page: str) -> Path:
    return SHOTS / (page.replace("/", "__").removesuffix(".html") + ".png")


#: screenshots of other tests in ``SHOTS`` (tests/test_lab.py's JupyterLab run), never taken for stale pages
OTHER_SHOTS = ("lab__",)


def stale_shots(pages: list[str]) -> list[Path]:
    """Screenshots in ``SHOTS`` of pages that the current build no longer has (removed when the browser starts)."""
    keep = {shot_path(p) for p in pages}
    return sorted(p for p in SHOTS.glob("*.png") if p not in keep and not p.name.startswith(OTHER_SHOTS))


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run does it)")
    b = Chromium(exe)
    try:
        b.send("Browser.getVersion", timeout=60)
    except Exception as err:  # noqa: BLE001
        b.close()
        pytest.skip(f"chromium does not start headless here: {err}")
    for old in stale_shots(PAGES):   # _build/screenshots shows the last build only
        old.unlink()
    yield b
    b.close()


@pytest.mark.slow
def test_book_is_built():
    if not PAGES:
        msg = f"no built book at {BUILD}/index.html: run `make book` first"
        if os.environ.get("CI"):
            pytest.fail(msg + " (.ci/run builds it before the tests)")
        pytest.skip(msg)
    assert "index.html" in PAGES or (BUILD / "index.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(not PAGES, reason="no built book (_build/html): run `make book` first")
@pytest.mark.parametrize("page", PAGES or ["-"])
def test_page_renders_offline(browser, page):
    session = browser.new_tab()
    try:
        since = len(browser.events)
        url = (BUILD / page).as_uri()
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_event("Page.loadEventFired", session, since, timeout=60)
        state = browser.evaluate(session, RENDERED, timeout=60)
        time.sleep(0.2)                                    # late console messages of the last scripts
        js, net = _event_problems(browser.events[since:], session)
        SHOTS.mkdir(parents=True, exist_ok=True)
        height = max(900, min(int(state["height"]), MAX_SHOT_HEIGHT))
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False},
                            session=session)
        import base64

        shot_path(page).write_bytes(base64.b64decode(shot["data"]))
        problems = {
            "JavaScript errors": js,
            "network": net,
            "missing images": state["brokenImages"],
            "plotly figures that did not render": state["emptyPlotly"],
            "math not typeset": state["untypesetMath"],
            "MathJax errors": state["mathErrors"],
            "broken internal links": broken_internal_links(state["links"]),
            "stderr output blocks (a library's warning or progress printed into the page)": state["stderr"],
        }
        problems = {k: v for k, v in problems.items() if v}
        assert not problems, f"{page}:\n" + "\n".join(f"  {k}:\n" + "\n".join(f"    - {x}" for x in v)
                                                      for k, v in problems.items())
    finally:
        try:
            browser.send("Target.closeTarget", {"targetId": browser.send("Target.getTargetInfo", session=session)
                                                ["targetInfo"]["targetId"]})
        except Exception:  # noqa: BLE001 - the tab is gone anyway
            pass


@pytest.mark.skipif(not PAGES, reason="no built book (_build/html): run `make book` first")
def test_redirects_lead_to_built_pages():
    """The book's entry point redirects to a page that exists (and is itself rendered by the test above)."""
    redirects = {p: redirect_target(p) for p in BUILD.glob("*.html")}
    redirects = {p: t for p, t in redirects.items() if t}
    assert BUILD / "index.html" in redirects, "index.html is expected to be Jupyter Book's redirect to the first page"
    for page, target in redirects.items():
        dest = (page.parent / unquote(urlsplit(target).path)).resolve()
        assert dest.is_file(), f"{page.name} redirects to {target}, which was not built"
        assert dest.relative_to(BUILD.resolve()).as_posix() in PAGES


def test_stale_screenshots_are_those_of_pages_no_longer_built(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules[__name__], "SHOTS", tmp_path)
    for name in ("book__intro.png", "book___executed__gone.png", "index.png", "lab__claim2_pretext__explorer-0.png"):
        (tmp_path / name).write_bytes(b"png")
    assert stale_shots(["book/intro.html"]) == [tmp_path / "book___executed__gone.png", tmp_path / "index.png"]


def test_redirect_detection(tmp_path):
    page = tmp_path / "index.html"
    page.write_text('<meta http-equiv="Refresh" content="0; url=book/intro.html" />')
    assert redirect_target(page) == "book/intro.html"
    page.write_text("<html><body>" + "text " * 300 + '<meta http-equiv="refresh" content="0; url=x.html"></body></html>')
    assert redirect_target(page) is None  # a real page that happens to carry a refresh is still inspected
    page.write_text("<html><body>no redirect</body></html>")
    assert redirect_target(page) is None


def test_link_checker_finds_broken_links(tmp_path):
    """The link check itself: a missing file and a missing anchor are reported, good links are not."""
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1><a name="old"></a>')
    links = [(tmp_path / "a.html").as_uri() + "#top", (tmp_path / "a.html").as_uri() + "#old",
             (tmp_path / "b.html").as_uri(), (tmp_path / "a.html").as_uri() + "#nope", "https://example.org/x"]
    assert broken_internal_links(links) == [f"{links[2]} (no such file)",
                                            f"{links[3]} (no anchor #nope on that page)"]


def test_event_triage():
    s = "S"
    events = [
        {"sessionId": s, "method": "Runtime.exceptionThrown",
         "params": {"exceptionDetails": {"exception": {"description": "TypeError: x is undefined"}}}},
        {"sessionId": s, "method": "Runtime.consoleAPICalled", "params": {"type": "log", "args": [{"value": "hi"}]}},
        {"sessionId": s, "method": "Runtime.consoleAPICalled", "params": {"type": "error", "args": [{"value": "bad"}]}},
        {"sessionId": s, "method": "Network.requestWillBeSent", "params": {"requestId": "1",
                                                                            "request": {"url": "file:///a.js"}}},
        {"sessionId": s, "method": "Network.requestWillBeSent",
         "params": {"requestId": "2", "request": {"url": "https://cdn.example/x.js"}}},
        {"sessionId": s, "method": "Network.loadingFailed", "params": {"requestId": "1", "errorText": "ERR_FILE"}},
        {"sessionId": "other", "method": "Runtime.exceptionThrown", "params": {}},
    ]
    js, net = _event_problems(events, s)
    assert js == ["uncaught: TypeError: x is undefined", "console.error: bad"]
    assert net == ["request leaves the machine: https://cdn.example/x.js", "failed to load: file:///a.js (ERR_FILE)"]


def test_stderr_blocks_are_found_in_a_rendered_page(browser, tmp_path):
    """The stderr check itself, on a page shaped as myst-nb writes one: its stderr block is reported, stdout is not."""
    page = tmp_path / "p.html"
    page.write_text('<html><body><div class="cell_output docutils container">'
                    '<div class="output stream highlight-myst-ansi notranslate"><pre>fine</pre></div>'
                    '<div class="output stderr highlight-myst-ansi notranslate"><div class="highlight"><pre>'
                    '/x/torch/jit/_script.py:1: FutureWarning: `torch.jit.script` is deprecated.</pre></div></div>'
                    '</div></body></html>')
    session = browser.new_tab()
    since = len(browser.events)
    browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
    browser.wait_event("Page.loadEventFired", session, since, timeout=60)
    state = browser.evaluate(session, RENDERED, timeout=60)
    assert state["stderr"] == ["/x/torch/jit/_script.py:1: FutureWarning: `torch.jit.script` is deprecated."]

"""The course website (``python website/build.py``), checked in a real browser.

The site is built once for this module (incrementally into ``build/site``: seconds when nothing changed),
served by ``http.server`` on a free local port, and its pages are opened in Chromium driven by Playwright:
every page but the API reference's module pages, which share one template (one of them is opened; all are
read for their links, anchors and the local files they load: :func:`opened_in_browser`). Checked: no console
error, failed request or request to another host; every internal link and anchor resolves; every image on a
notebook page loads, and every plot the notebook holds is on its page;
search finds ``merge_and_unload`` on the merging page; each notebook page shows its "What we measured"
table, its Colab badge and a download link built from ``pyproject.toml``; the adapter switcher's static
table renders. Screenshots of the landing page and a notebook page go to ``runs/site-screenshots/``.

Needs the ``site`` extra (``pip install -e ".[site]"``) and a Chromium: Debian's ``apt-get install chromium``
(Playwright's own browser download is not needed), or any Chrome named by ``COURSE_BROWSER``. Without them
the tests skip with the reason; with ``COURSE_SITE_REQUIRED=1`` (``.ci/run`` sets it) they fail instead.
"""

from __future__ import annotations

import doctest
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import pytest

from course_utils.repository import current_repository

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SCREENSHOTS = ROOT / "runs" / "site-screenshots"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SITE_PACKAGES = ("sphinx", "myst_nb", "sphinx_book_theme", "playwright")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _find_browser() -> str | None:
    wanted = os.environ.get("COURSE_BROWSER")
    if wanted:
        return shutil.which(wanted) or (wanted if Path(wanted).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    absent = [name for name in SITE_PACKAGES if importlib.util.find_spec(name) is None]
    if absent:
        return f"the site tools are not installed ({', '.join(absent)}): pip install -e '.[site]'"
    if _find_browser() is None:
        return "no Chromium found: apt-get install chromium (or set COURSE_BROWSER to a Chrome/Chromium binary)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("COURSE_SITE_REQUIRED") == "1":
        pytest.fail(f"COURSE_SITE_REQUIRED=1 but {reason}")
    pytest.skip(reason)


def _page_name(notebook: Path) -> str:
    return f"notebooks/{notebook.stem}.html"


def site_pages(html_dir: Path) -> list[str]:
    """The site's pages: every ``.html`` file but the theme's template fragments copied to ``_static``."""
    return sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html") if "_static" not in p.parts)


def _image_outputs(notebook: Path) -> int:
    """How many plots and figures the committed notebook holds (image outputs of its code cells)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(
        1
        for cell in cells
        for output in cell.get("outputs", [])
        if any(key.startswith("image/") for key in output.get("data", {}))
    )


# --------------------------------------------------------------------------- what a page reports
# Collected in the page once it has loaded: the links (resolved by the browser), the anchors, the images.
PAGE_FACTS = """() => ({
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  images: [...document.images].map(i => ({
    src: i.currentSrc || i.src, width: i.naturalWidth, complete: i.complete, plot: !!i.closest('.cell_output'),
  })),
})"""


MEASURED_TABLE = """() => {
  const heading = [...document.querySelectorAll('h2')].find(h => h.textContent.includes('What we measured'));
  if (!heading) return null;
  const table = heading.closest('section').querySelector('table');
  if (!table) return {rows: 0, visible: false};
  const box = table.getBoundingClientRect();
  return {rows: table.querySelectorAll('tr').length, visible: box.width > 0 && box.height > 0, text: table.innerText};
}"""
# A notebook page's own facts (test_notebook_page), read on the crawl's visit: one load per page.
NOTEBOOK_FACTS = f"""() => ({{
  main_text: document.querySelector('main').innerText,
  measured: ({MEASURED_TABLE})(),
  bars: [...document.querySelectorAll('.course-notebook-links')].map(bar => ({{
    colab: bar.querySelector('a.course-colab')?.getAttribute('href'),
    download: bar.querySelector('a.course-download')?.getAttribute('href'),
  }})),
}})"""


@dataclass
class Page:
    url: str
    errors: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    images: list[dict] = field(default_factory=list)
    notebook: dict = field(default_factory=dict)  # a notebook page's NOTEBOOK_FACTS, read on the same visit


class _StaticFacts(HTMLParser):
    """What ``PAGE_FACTS`` reports, read from the HTML itself, plus the local files the page loads."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.links, self.ids, self.files = url, [], set(), []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("href") is not None:
            self.links.append(urljoin(self.url, values["href"]))
        fetched = tag == "link" and {"stylesheet", "preload", "modulepreload", "icon"} & set(
            (values.get("rel") or "").split()
        )
        source = values.get("src") if tag in ("script", "img") else values.get("href") if fetched else None
        if source:
            self.files.append(urljoin(self.url, source))


def opened_in_browser(names: list[str]) -> set[str]:
    """The pages the browser opens: every page but the API reference's module pages, and the first of those.

    The module pages (``reference/*.html``, one per module) come from one autodoc template and load the same
    static files as the rest: the reference's index (``reference.html``) and one module page in the browser show
    that template's scripts run without errors, and every page is still read for its links, anchors and the
    local files it loads.
    """
    modules = sorted(name for name in names if name.startswith("reference/"))
    return {name for name in names if not name.startswith("reference/")} | set(modules[:1])


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def html_dir() -> Path:
    """The built site: ``python website/build.py`` (incremental) in a subprocess, as a person runs it."""
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "website" / "build.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if result.returncode:
        pytest.fail(f"python website/build.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    print(f"{result.stdout.strip()} (this build: {time.perf_counter() - start:.1f} s)")
    return ROOT / "build" / "site" / "html"


@pytest.fixture(scope="module")
def base_url(html_dir: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(html_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(base_url: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_find_browser())
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        yield context
        context.close()
        chromium.close()


@pytest.fixture(scope="module")
def pages(html_dir: Path, base_url: str, browser) -> dict[str, Page]:
    """Every ``.html`` file of the site, opened in the browser once: relative path -> what it reported."""
    page = browser.new_page()
    current: list[Page] = []

    def note(text: str) -> None:
        current[-1].errors.append(text)

    page.on("console", lambda msg: note(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda error: note(f"uncaught: {error}"))
    # A request aborted because the crawl moved on (the favicon, say) is not a failure; a missing file is a 404.
    page.on(
        "requestfailed",
        lambda request: (
            None
            if "ERR_ABORTED" in (request.failure or "")
            else note(f"request failed: {request.url} ({request.failure})")
        ),
    )
    page.on(
        "response", lambda response: note(f"HTTP {response.status}: {response.url}") if response.status >= 400 else None
    )
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith((base_url, "data:")) else note(f"request to another host: {request.url}")
        ),
    )
    reports: dict[str, Page] = {}
    names = site_pages(html_dir)
    in_browser = opened_in_browser(names)
    for name in names:
        current.append(Page(url=base_url + name))
        report = current[-1]
        if name in in_browser:
            page.goto(base_url + name, wait_until="load")
            facts = page.evaluate(PAGE_FACTS)
            report.links, report.ids, report.images = facts["links"], set(facts["ids"]), facts["images"]
            if name.startswith("notebooks/"):
                report.notebook = page.evaluate(NOTEBOOK_FACTS)
        else:
            parsed = _StaticFacts(report.url)
            parsed.feed((html_dir / name).read_text(encoding="utf-8"))
            report.links, report.ids = parsed.links, parsed.ids
            for url in parsed.files:
                if not url.startswith((base_url, "data:")):
                    report.errors.append(f"request to another host: {url}")
                elif url.startswith(base_url) and not (html_dir / unquote(urlsplit(url).path).lstrip("/")).is_file():
                    report.errors.append(f"HTTP 404: {url}")
        reports[name] = report
    page.close()
    assert len(in_browser) >= 10 and any(name.startswith("reference/") for name in in_browser), sorted(in_browser)
    return reports


# --------------------------------------------------------------------------- the checks
def test_every_page_loads_without_errors(pages: dict[str, Page]) -> None:
    assert any(name.startswith("notebooks/") for name in pages), f"no notebook pages among {sorted(pages)}"
    broken = {name: report.errors for name, report in pages.items() if report.errors}
    assert not broken, "pages with console errors or failed requests:\n" + "\n".join(
        f"  {name}: {errors}" for name, errors in broken.items()
    )


def test_every_internal_link_resolves(pages: dict[str, Page], html_dir: Path, base_url: str) -> None:
    broken = []
    checked = 0
    for name, report in pages.items():
        for link in report.links:
            target, fragment = urldefrag(link)
            if not target.startswith(base_url):
                continue
            checked += 1
            path = unquote(urlsplit(target).path.removeprefix(urlsplit(base_url).path))
            file = html_dir / path
            if file.is_dir():
                path, file = f"{path.rstrip('/')}/index.html".lstrip("/"), file / "index.html"
            if not file.is_file():
                broken.append(f"{name} -> {link}: no such file {path!r}")
            elif fragment and path in pages and fragment not in pages[path].ids:
                broken.append(f"{name} -> {link}: no id {fragment!r} in {path}")
    assert checked > len(pages), f"only {checked} internal links on {len(pages)} pages: the crawl saw no links"
    assert not broken, f"{len(broken)} broken internal links (of {checked}):\n" + "\n".join(broken[:40])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_images_load(pages: dict[str, Page], notebook: Path) -> None:
    report = pages[_page_name(notebook)]
    unloaded = [image["src"] for image in report.images if not image["complete"] or image["width"] == 0]
    assert not unloaded, f"{_page_name(notebook)}: images that did not load (naturalWidth 0): {unloaded}"
    plots = sum(image["plot"] for image in report.images)
    assert plots == _image_outputs(notebook), (
        f"{_page_name(notebook)} shows {plots} plots/figures; {notebook.name} holds {_image_outputs(notebook)}"
    )


def test_search_finds_merge_and_unload_on_the_merging_page(browser, base_url: str) -> None:
    merging = [path for path in NOTEBOOKS if "merging" in path.stem]
    assert merging, f"no merging notebook among {[path.name for path in NOTEBOOKS]}"
    page = browser.new_page()
    page.goto(base_url + "search.html?q=merge_and_unload")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    result = page.locator(f'ul.search li a[href*="{_page_name(merging[0])}"]')
    try:
        result.first.wait_for(timeout=20_000)
    except PlaywrightTimeout:
        found = page.locator("#search-results").inner_text() if page.locator("#search-results").count() else "nothing"
        pytest.fail(
            f"search for merge_and_unload did not list {_page_name(merging[0])} within 20 s; the page shows: {found[:800]}"
        )
    assert "merge_and_unload" in page.locator("ul.search").inner_text()
    page.close()


# One browser page, reused: opening a page costs a fraction of a second, a new tab more.
@pytest.fixture(scope="module")
def tab(browser) -> Iterator[object]:
    page = browser.new_page()
    yield page
    page.close()


def _course_stderr(notebook: Path) -> list[str]:
    """The first line of each stderr output that is not only third-party libraries' warnings."""
    sys.path.insert(0, str(ROOT / "website"))
    try:
        from course_site import only_library_warnings
    finally:
        sys.path.remove(str(ROOT / "website"))
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    texts = ["".join(o["text"]) for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    return [text.strip().splitlines()[0] for text in texts if text.strip() and not only_library_warnings(text)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_page(pages: dict[str, Page], html_dir: Path, notebook: Path) -> None:
    """Its "What we measured" table, its links, and stderr: the course's messages, not libraries' warnings."""
    name = _page_name(notebook)
    facts = pages[name].notebook
    assert facts, f"{name} was not opened in the browser"
    text = facts["main_text"]
    assert "site-packages/" not in text, f"{name} shows a library's warning with a machine's path"
    for line in _course_stderr(notebook):
        assert line in text, f"{name} lacks the course's message on stderr: {line!r}"
    table = facts["measured"]
    assert table is not None, f"{name}: no 'What we measured' heading"
    assert table["visible"] and table["rows"] >= 2, f"{name}: no visible 'What we measured' table: {table}"
    bars = facts["bars"]
    assert len(bars) == 1, f"{name}: {len(bars)} link bars (want 1: Colab, download, GitHub)"
    path = f"notebooks/{notebook.name}"
    colab = f"https://colab.research.google.com/github/{current_repository(ROOT).removeprefix('https://github.com/')}/blob/main/{path}"
    assert bars[0]["colab"] == colab
    served = html_dir / "notebooks" / unquote(bars[0]["download"])
    assert served.resolve().read_bytes() == notebook.read_bytes(), (
        f"the download link {bars[0]['download']} is not {path}"
    )


def test_adapter_switcher_static_table_renders(tab, base_url: str) -> None:
    sources = {path: path.read_text(encoding="utf-8") for path in NOTEBOOKS}
    with_switcher = [path for path, text in sources.items() if "adapter_switcher(" in text]
    assert with_switcher, "no notebook calls adapter_switcher("
    tab.goto(base_url + _page_name(with_switcher[0]))
    cell = tab.locator(".cell", has=tab.locator(".cell_input", has_text="adapter_switcher("))
    table = cell.locator(".cell_output table")
    assert table.count() == 1, f"{_page_name(with_switcher[0])}: the switcher's cell shows {table.count()} tables"
    headers = table.locator("th").all_inner_texts()
    assert headers[:2] == ["adapter", "answer"], headers
    assert table.locator("tr").count() >= 3, "the static table should list each adapter and the base model"
    assert "VBox(" not in cell.inner_text(), "the widget's text repr is shown instead of nothing"


def test_landing_page_and_screenshots(tab, base_url: str) -> None:
    tab.goto(base_url + "index.html")
    text = tab.locator("main").inner_text()
    for needed in ("For whom", "The path through the notebooks", 'pip install -e ".[dev]"', "Which machines"):
        assert needed in text, f"the landing page lacks {needed!r}"
    path = tab.locator("ul.course-path > li a.reference.internal").evaluate_all("as => as.map(a => a.href)")
    assert [href.rsplit("/", 1)[-1] for href in path] == [f"{p.stem}.html" for p in NOTEBOOKS]
    nav = tab.locator("nav.bd-docs-nav a.reference.internal").evaluate_all("as => as.map(a => a.href)")
    in_nav = [href.rsplit("/", 1)[-1] for href in nav if "/notebooks/" in href]
    assert in_nav == [f"{p.stem}.html" for p in NOTEBOOKS], f"navigation not in course order: {in_nav}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / "landing.png"), full_page=True)
    notebook = next((p for p in NOTEBOOKS if "merging" in p.stem), NOTEBOOKS[0])
    tab.goto(base_url + _page_name(notebook))
    tab.screenshot(path=str(SCREENSHOTS / f"{notebook.stem}.png"))
    measured = tab.locator("section", has=tab.locator("h2", has_text="What we measured")).last
    measured.screenshot(path=str(SCREENSHOTS / f"{notebook.stem}-measured.png"))
    assert (SCREENSHOTS / "landing.png").stat().st_size > 10_000


def test_readme_gives_the_site_address_and_how_to_build_it() -> None:
    from course_utils.repository import pages_url

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if "python website/build.py" in line]
    assert len(lines) == 1, f"README.md: {len(lines)} lines say how to build the site (want one)"
    assert f"]({pages_url(current_repository(ROOT))})" in lines[0], f"README.md: not the Pages address: {lines[0]}"


def test_site_helpers_doctests() -> None:
    """The ``>>>`` examples of website/build.py and website/course_site.py (outside pytest's doctest paths)."""
    if importlib.util.find_spec("sphinx") is None:
        _skip_or_fail("the site tools are not installed (sphinx): pip install -e '.[site]'")
    sys.path.insert(0, str(ROOT / "website"))
    try:
        for name in ("build", "course_site"):
            module = _load(f"_website_{name}", ROOT / "website" / f"{name}.py")
            result = doctest.testmod(module)
            assert result.attempted > 0 and result.failed == 0, f"website/{name}.py: {result}"
    finally:
        sys.path.remove(str(ROOT / "website"))

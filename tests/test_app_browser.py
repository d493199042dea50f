"""The explorer in a real browser: `streamlit run apps/explorer.py` on a free localhost port,
driven by Playwright through Debian's Chromium (/usr/bin/chromium; never a browser download).
It runs the logit lens, a patching sweep and direct logit attribution on the default model, checks that the plots
rendered, and saves a screenshot of each page: under WORKBENCH_SCREENSHOTS when set, e.g.

    WORKBENCH_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest -m browser tests/test_app_browser.py

(that is how docs/screenshots/*.png, shown in the README, are made), else in a temporary folder.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
PLOT = '[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg'
VIEWPORT = {"width": 1440, "height": 1000}
SLOW = 240_000  # ms: the first run of a page loads the model on a busy CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(experiment_model, tmp_path_factory):
    """The explorer on 127.0.0.1:<free port>; stopped (and its log shown on failure) afterwards."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; scripts/test.sh does)")
    pytest.importorskip("playwright.sync_api")
    tmp = tmp_path_factory.mktemp("explorer")
    # Run from a temporary folder, so the runs folder reads "runs" on the page (and in screenshots).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WORKBENCH_RUNS": "runs", "WORKBENCH_DEVICE": "cpu"}
    if Path(experiment_model).exists():  # no bundled model yet: the tiny one, by path
        env["WORKBENCH_MODEL"] = experiment_model
    else:  # the default model: GPT-2 if cached here, else the bundled model
        env.pop("WORKBENCH_MODEL", None)
    port = free_port()
    log = open(tmp / "streamlit.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "apps" / "explorer.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--client.toolbarMode", "minimal"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start (exit {proc.poll()}):\n{log.read()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        print(log.read()[-4000:])
        log.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("WORKBENCH_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(SLOW)
    try:
        yield page
    finally:
        context.close()


def settle(page) -> None:
    """Wait until the script run is over (no 'running' indicator), every element is drawn (no
    loading skeletons) and plotly has finished its transitions."""
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"], [data-testid=\"stSkeleton\"]')",
        timeout=SLOW)
    page.wait_for_timeout(1000)


def check_page(page, *, plots: int = 0) -> None:
    """No exception box, no error message, and at least `plots` rendered plotly charts."""
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.all_inner_texts()
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()
    if plots:
        page.wait_for_selector(PLOT, timeout=SLOW)
        assert page.locator(PLOT).count() >= plots
        # Something was drawn: a heatmap's image or a trace's paths inside the plot.
        assert page.locator('[data-testid="stPlotlyChart"] .heatmaplayer image, '
                            '[data-testid="stPlotlyChart"] .trace').count() > 0


def shoot(page, shots: Path, name: str) -> None:
    """A screenshot of the whole page. Streamlit scrolls its main area, not the document, so the
    viewport is made as tall as the content for the shot."""
    main = '[data-testid="stMain"]'
    height = page.evaluate(f"() => document.querySelector('{main}').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(height, 4000))})
    page.evaluate(f"() => document.querySelector('{main}').scrollTo(0, 0)")
    page.mouse.move(0, 0)  # no hover label or tooltip in the shot
    page.wait_for_timeout(1500)  # plotly redraws at the new size
    page.screenshot(path=str(shots / f"{name}.png"))
    page.set_viewport_size(VIEWPORT)


def test_every_page_renders_and_runs(server, page, shots):
    page.goto(server)
    page.get_by_role("heading", name="Model & prompt").wait_for()
    settle(page)
    check_page(page)
    assert page.locator('[data-testid="stDataFrame"]').count() >= 1  # the prompt's tokens
    shoot(page, shots, "model")

    page.goto(f"{server}/logit_lens")
    page.get_by_role("heading", name="Logit lens").wait_for()
    settle(page)
    check_page(page, plots=1)
    shoot(page, shots, "logit_lens")

    page.goto(f"{server}/attention")
    page.get_by_role("heading", name="Attention", exact=True).wait_for()
    settle(page)
    check_page(page, plots=2)
    page.get_by_text("repeated random tokens").click()  # the strongest induction head on [BOS] + r + r
    settle(page)
    check_page(page, plots=2)
    shoot(page, shots, "attention")

    page.goto(f"{server}/patching")
    page.get_by_role("heading", name="Activation patching").wait_for()
    settle(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Target").click()
    page.get_by_role("option", name="head_out", exact=True).click()
    page.get_by_role("button", name="Run patching").click()
    page.wait_for_selector(PLOT, timeout=SLOW)
    settle(page)
    check_page(page, plots=1)
    page.get_by_role("button", name="Save run").click()
    page.get_by_text("Saved run").wait_for()
    settle(page)
    shoot(page, shots, "patching")

    # Another result: the notice of the saved run goes with the result it saved.
    page.get_by_test_id("stSelectbox").filter(has_text="Target").click()
    page.get_by_role("option", name="resid_pre", exact=True).click()
    settle(page)
    page.get_by_role("button", name="Run patching").click()
    page.wait_for_function("() => document.querySelector('.js-plotly-plot').layout.title.text.includes('resid_pre')",
                           timeout=60_000)
    settle(page)
    check_page(page, plots=1)
    assert page.get_by_text("Saved run").count() == 0, page.get_by_text("Saved run").all_inner_texts()
    assert page.get_by_text("python -m workbench replay").count() == 0

    # A pair the model cannot do: a warning, and a colour scale that covers every value (never clipped).
    page.get_by_text("custom prompt pairs").click()
    settle(page)
    page.get_by_role("button", name="Run patching").click()
    page.get_by_text("not clearly better").first.wait_for()
    settle(page)
    check_page(page, plots=1)
    page.get_by_text("not clearly better").first.wait_for()
    trace = page.evaluate("() => { const t = document.querySelector('.js-plotly-plot').data[0];"
                          " return {z: t.z.flat().filter(v => v !== null), zmin: t.zmin, zmax: t.zmax}; }")
    assert trace["zmin"] <= min(trace["z"]) and trace["zmax"] >= max(trace["z"]), trace
    assert trace["zmin"] <= -1 and trace["zmax"] >= 1

    page.goto(f"{server}/ablation")
    page.get_by_role("heading", name="Ablation").wait_for()
    settle(page)
    page.get_by_role("button", name="Run ablation").click()
    page.wait_for_selector(PLOT, timeout=SLOW)
    settle(page)
    check_page(page, plots=1)
    heads = page.get_by_role("combobox", name="Heads")  # ablate two heads together: logits before and after
    for head in ("L0H1", "L1H0"):
        heads.click()
        page.keyboard.type(head)
        page.get_by_role("option", name=head, exact=True).wait_for()
        page.keyboard.press("Enter")
        settle(page)
    page.keyboard.press("Escape")
    settle(page)
    assert page.get_by_text("(mean over prompts)").count() == 1  # the before / after table
    check_page(page, plots=1)
    shoot(page, shots, "ablation")

    page.goto(f"{server}/dla")
    page.get_by_role("heading", name="Direct logit attribution").wait_for()
    settle(page)
    page.get_by_role("button", name="Run attribution").click()
    page.wait_for_selector(PLOT, timeout=SLOW)
    settle(page)
    check_page(page, plots=3)  # the head heatmap, the per-layer bars, the accumulated view
    assert page.locator('[data-testid="stPlotlyChart"] .heatmaplayer image').count() >= 1
    assert page.get_by_text("Largest direct contributions").count() == 1
    page.get_by_role("button", name="Save run").click()
    page.get_by_text("Saved run").wait_for()
    settle(page)
    shoot(page, shots, "dla")

    page.goto(f"{server}/runs")
    page.get_by_role("heading", name="Runs").wait_for()
    settle(page)
    page.get_by_role("button", name="Replay").click()
    page.get_by_text("Replay matches the record").wait_for()
    settle(page)
    check_page(page, plots=1)
    shoot(page, shots, "runs")

    for name in ("model", "logit_lens", "attention", "patching", "ablation", "dla", "runs"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name


# The path patching page draws two plots, by key: the receiver grid (drawn before any run) and the result.
RESULT = "document.querySelector('.st-key-path-chart .js-plotly-plot')"
GRID = "document.querySelector('.st-key-path-grid .js-plotly-plot')"
RECEIVERS = ("() => [...document.querySelectorAll('[data-testid=\"stMultiSelect\"] [data-tag]')]"
             ".map(t => t.getAttribute('aria-label'))")


def test_path_patching_page_runs_and_saves(server, page, shots):
    """Path patching opens on the task's receivers (the induction heads' keys on the bundled model),
    draws the sender heatmap, records a run, and runs again into the logits."""
    page.goto(f"{server}/path_patching")
    page.get_by_role("heading", name="Path patching").wait_for()
    settle(page)
    page.get_by_role("button", name="Run path patching").click()
    # The result's plot itself, not any plot: the receiver grid is drawn before the run.
    page.wait_for_function(f"() => {RESULT} !== null", timeout=SLOW)
    settle(page)
    check_page(page, plots=2)
    title = page.evaluate(f"() => {RESULT}.layout.title.text")
    assert "Path patching into L1H" in title and ".k" in title, title
    page.get_by_role("button", name="Save run").click()
    page.get_by_text("Saved run").first.wait_for()
    settle(page)
    shoot(page, shots, "path_patching")

    assert page.get_by_role("combobox", name="Receiver heads").count() == 1
    page.get_by_text("the logits", exact=True).click()  # the radio option (inside the form: no rerun)
    page.get_by_role("button", name="Run path patching").click()
    page.wait_for_function(f"() => ({RESULT}?.layout.title.text || '').includes('logits')", timeout=SLOW)
    settle(page)
    check_page(page, plots=2)
    assert page.get_by_text("Saved run").count() == 0
    assert (shots / "path_patching.png").stat().st_size > 10_000


def click_head(page, grid: str, layer: int, head: int) -> None:
    """A mouse click at the centre of head (layer, head)'s marker on the head grid `grid` (a JS expression
    for its plot), from the plot's own axes (its first panel's)."""
    page.evaluate(f"() => {grid}.scrollIntoView({{block: 'center'}})")
    x, y = page.evaluate(f"""() => {{
        const gd = {grid}, box = gd.getBoundingClientRect(), fl = gd._fullLayout;
        return [box.left + fl.xaxis._offset + fl.xaxis.l2p({head}),
                box.top + fl.yaxis._offset + fl.yaxis.l2p({layer})];
    }}""")
    page.mouse.click(x, y)


def test_path_patching_receivers_by_clicking_the_grid(server, page):
    """A click on a head's marker on the receiver grid removes it from the receivers (the head list
    shows it no more); a second click adds it back; a click on a block-0 head changes nothing."""
    page.goto(f"{server}/path_patching")
    page.get_by_role("heading", name="Path patching").wait_for()
    page.wait_for_function(f"() => {GRID} !== null", timeout=SLOW)
    settle(page)
    start = page.evaluate(RECEIVERS)
    assert start, "the page opens with receivers"

    def click(layer: int, head: int) -> None:
        click_head(page, GRID, layer, head)

    name = start[0]
    layer, head = map(int, name.removeprefix("L").split("H"))
    click(layer, head)
    page.wait_for_function(f"() => !({RECEIVERS})().includes('{name}')", timeout=SLOW)
    settle(page)
    assert page.evaluate(RECEIVERS) == start[1:]
    assert page.evaluate(f"() => {GRID}.data[1].text[{GRID}.data[1].customdata.indexOf('{name}')]") == ""
    click(layer, head)  # the grid was redrawn: a fresh chart, the same click counts again
    page.wait_for_function(f"() => ({RECEIVERS})().includes('{name}')", timeout=SLOW)
    settle(page)
    assert page.evaluate(RECEIVERS) == start[1:] + [name]
    click(0, 0)  # block 0: not a receiver
    settle(page)
    assert page.evaluate(RECEIVERS) == start[1:] + [name]
    check_page(page, plots=1)


def test_circuit_page_renders_runs_and_saves(server, page, shots):
    page.goto(f"{server}/circuit")
    page.get_by_role("heading", name="Circuit").wait_for()
    settle(page)
    page.get_by_role("spinbutton", name="verify top N exactly").fill("20")
    page.get_by_role("button", name="Find circuit").click()
    page.wait_for_selector(PLOT, timeout=SLOW)
    settle(page)
    check_page(page, plots=2)  # the graph and the faithfulness curve
    edges = page.evaluate("() => document.querySelectorAll('.js-plotly-plot')[0].data"
                          ".filter(t => t.name === 'edges')[0].customdata.length")
    assert edges == 20  # drawn by exact effect: the 20 verified edges (of the top 30 asked), one hover point each
    page.get_by_role("button", name="Save run").click()
    page.get_by_text("Saved run").wait_for()
    settle(page)
    shoot(page, shots, "circuit")
    assert (shots / "circuit.png").stat().st_size > 10_000


ATTN_GRID = "document.querySelector('.st-key-attn-grid .js-plotly-plot')"
# The head whose pattern is drawn, from the pattern plot's title ("Attention pattern of L1H0 ..."), or ''.
PATTERN = ("() => [...document.querySelectorAll('.js-plotly-plot')].map(g => (g.layout.title.text || '')"
           ".match(/Attention pattern of (L[0-9]+H[0-9]+)/)).find(m => m)?.[1] || ''")


def test_attention_head_clicks_on_the_detector_grid(server, page):
    """A click on a head of the detector grid shows that head's pattern; after another head is picked in
    the boxes, a click on the first head again shows it again (the grid was redrawn: a fresh chart, the
    same click counts again, as on the path patching page's receiver grid)."""
    page.goto(f"{server}/attention")
    page.get_by_role("heading", name="Attention", exact=True).wait_for()
    page.wait_for_function(f"() => {ATTN_GRID} !== null && ({PATTERN})() !== ''", timeout=SLOW)
    settle(page)

    def shown() -> str:
        return page.evaluate(PATTERN)

    def click(layer: int, head: int) -> None:  # on the first panel (the induction scores)
        click_head(page, ATTN_GRID, layer, head)

    def pick(label: str, value: int) -> None:
        page.get_by_role("combobox", name=label).click()
        page.get_by_role("option", name=str(value), exact=True).click()

    start = shown()
    assert start.startswith("L"), start
    first, other = [(l, h) for l in range(2) for h in range(2) if f"L{l}H{h}" != start][:2]
    click(*first)
    page.wait_for_function(f"() => ({PATTERN})() === 'L{first[0]}H{first[1]}'", timeout=60_000)
    settle(page)
    pick("layer", other[0])
    settle(page)
    pick("head", other[1])
    settle(page)
    assert shown() == f"L{other[0]}H{other[1]}"  # the boxes' head; the earlier click is not applied again
    click(*first)
    page.wait_for_function(f"() => ({PATTERN})() === 'L{first[0]}H{first[1]}'", timeout=60_000)
    settle(page)
    assert shown() == f"L{first[0]}H{first[1]}"
    check_page(page, plots=2)

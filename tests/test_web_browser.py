"""End to end in a real headless Chromium (Debian's package, driven by Playwright; no browser is downloaded):
each explorer loads, a click or a drawn stroke changes the picture and the numbers, and a screenshot is saved
to docs/screenshots/ (shown in the README).

``python3 make.py test`` installs Debian's chromium when it runs as root on Debian; elsewhere, without a
``chromium`` on PATH, these tests skip with the reason (and fail instead when ``CI`` is set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'fewshot[web]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (test extra)")

from fewshot.web import drawing  # noqa: E402
from fewshot.web.app import create_app  # noqa: E402
from fewshot.web.server import running  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium on a closed network: no background services, no first-run work, a throwaway profile (Playwright's)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions"]  # fmt: skip

if CHROMIUM is None:
    reason = "no chromium on PATH: apt-get install chromium (python3 make.py test does it as root on Debian)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def url():
    with running(create_app()) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert not errors, f"the page reported errors: {errors}"


def canvas_pixels(page, selector: str) -> str:
    return page.evaluate(f"document.querySelector('{selector}').toDataURL()")


def shoot(page, name: str) -> None:
    """Saves a full-page screenshot as docs/screenshots/NAME.png, unless the one there differs from it in under
    0.1% of its pixels (antialiasing at a card's edge can move between runs; the committed file stays put)."""
    import io

    from PIL import Image

    png = page.screenshot(full_page=True)
    new = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert len(np.unique(new.reshape(-1, 3), axis=0)) > 50  # a real page, not a blank one
    path = SCREENSHOTS / f"{name}.png"
    if path.is_file():
        old = np.asarray(Image.open(path).convert("RGB"))
        if old.shape == new.shape and (old != new).any(-1).mean() < 1e-3:
            return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def set_slider(page, selector: str, value: int) -> None:
    """Moves a range input as a user would: its value changes, then `input` and `change` fire."""
    page.eval_on_selector(
        selector,
        f"""el => {{ el.value = {value};
        el.dispatchEvent(new Event('input', {{bubbles: true}})); el.dispatchEvent(new Event('change', {{bubbles: true}})); }}""",
    )


def test_index_links_and_numbers(page, url):
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('protonet-numbers').textContent.includes('accuracy')")
    page.wait_for_function("document.getElementById('incontext-numbers').textContent.includes('transformer')")
    assert "MAML" in page.text_content("#maml-numbers")
    assert page.locator("a.card").count() == 4
    shoot(page, "index")
    page.click("text=MAML adaptation visualizer")
    page.wait_for_url("**/maml")


def test_protonet_click_classifies_the_point(page, url):
    page.goto(url + "/protonet")
    page.wait_for_function("document.getElementById('accuracy').textContent.includes('%')")
    before = canvas_pixels(page, "#plot")
    box = page.locator("#plot").bounding_box()
    page.mouse.click(box["x"] + 250, box["y"] + 220)
    page.wait_for_function("document.getElementById('prediction').textContent.includes('→')")
    assert canvas_pixels(page, "#plot") != before  # the click and its line to a prototype are drawn
    bars = page.locator("#probabilities .bar")
    assert bars.count() == 5
    shown = [float(t.strip("%")) for t in bars.locator(".value").all_text_contents()]
    assert sum(shown) == pytest.approx(100, abs=0.5)
    # the page shows the server's answer: the click's class is the nearest prototype of the task on screen
    click, prototypes = page.evaluate("[state.click, state.result.prototypes]")
    nearest = int(np.argmin(((np.array(prototypes) - np.array(click)) ** 2).sum(1)))
    assert f"class {nearest + 1}" in page.text_content("#prediction")
    assert page.text_content("#probabilities .bar.top span") == f"class {nearest + 1}"
    shoot(page, "protonet")
    # dragging a support point moves its class's prototype by a shots-th of the way
    (x, y), label = page.evaluate("[state.task.support.x[0], state.task.support.y[0]]")
    before = page.evaluate(f"state.result.prototypes[{label}]")
    shots = page.evaluate(f"state.task.support.y.filter(c => c === {label}).length")
    start = page.evaluate(f"[plot.px({x}), plot.py({y})]")
    page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(box["x"] + start[0] + 12 * step, box["y"] + start[1] - 8 * step)
    page.mouse.up()
    moved = page.evaluate("state.task.support.x[0]")
    page.wait_for_function(f"!drag.busy && state.result.prototypes[{label}][0] !== {before[0]}")
    after = page.evaluate(f"state.result.prototypes[{label}]")
    assert np.allclose(np.subtract(after, before), np.subtract(moved, [x, y]) / shots, atol=2e-3)
    assert page.evaluate("state.click") == click  # the drag did not query a point
    # fewer ways, then a new task: the picture and numbers follow
    set_slider(page, "#ways", 3)
    page.wait_for_function(
        "state.task && state.task.ways === 3 && state.result && state.result.prototypes.length === 3"
    )
    assert page.locator("#probabilities .bar").count() == 3
    drawn = canvas_pixels(page, "#plot")
    page.click("#new-task")
    page.wait_for_function("document.getElementById('task-info').textContent.includes('seed 1')")
    page.wait_for_function(f"document.querySelector('#plot').toDataURL() !== {drawn!r}")


def test_maml_click_adds_a_point_and_the_step_slider_moves(page, url):
    page.goto(url + "/maml")
    page.wait_for_function("document.getElementById('summary').textContent.includes('After 10 steps')")
    assert page.text_content("#count") == "10 points"
    assert page.locator("#mse-table tr").count() == 12  # header + steps 0..10
    maml_before, pretrained_before = canvas_pixels(page, "#maml"), canvas_pixels(page, "#pretrained")
    summary_before = page.text_content("#summary")
    box = page.locator("#maml").bounding_box()
    page.mouse.click(box["x"] + 300, box["y"] + 100)  # a point high above the curve
    page.wait_for_function("document.getElementById('count').textContent === '11 points'")
    page.wait_for_function(f"document.getElementById('summary').textContent !== {summary_before!r}")
    assert (
        canvas_pixels(page, "#maml") != maml_before
        and canvas_pixels(page, "#pretrained") != pretrained_before
    )
    set_slider(page, "#step", 2)
    assert page.text_content("#step-value") == "2"
    assert page.get_attribute("#mse-table tr.current", "data-step") == "2"
    maml2, pretrained2 = page.evaluate("[state.result.maml.true_mse[2], state.result.pretrained.true_mse[2]]")
    assert page.text_content("#summary").startswith(
        f"After 2 steps: MAML {maml2:.3f} vs pretrained {pretrained2:.3f}"
    )
    at_two = canvas_pixels(page, "#maml")
    set_slider(page, "#step", 10)
    assert canvas_pixels(page, "#maml") != at_two
    shoot(page, "maml")
    # the page keeps to the server's limit of 100 support points, and says so
    page.evaluate(
        "state.x = Array.from({length: 100}, (_, i) => -5 + i / 10); state.y = state.x.map(Math.sin); adapt()"
    )
    page.wait_for_function("document.getElementById('count').textContent === '100 points'")
    page.mouse.click(box["x"] + 200, box["y"] + 200)
    assert page.text_content("#error") == "at most 100 support points; Clear points to start again"
    assert page.text_content("#count") == "100 points"
    page.click("#clear")
    assert page.text_content("#count") == "0 points" and page.text_content("#error") == ""


# The neural process's colours on the MAML plot (maml.html): its mean's line, and its band (teal at alpha 0.16)
# over the white plot, within a few levels of rounding.
NP_LINE = (19, 141, 144)
NP_TINT = tuple(255 + 0.16 * (c - 255) for c in NP_LINE)


COUNT_NP_PIXELS = """([line, tint, x]) => {
  const plot = plots.maml, canvas = plot.canvas;
  const left = x === null ? 0 : Math.round(plot.px(x)), width = x === null ? canvas.width : 1;
  const d = canvas.getContext("2d").getImageData(left, 0, width, canvas.height).data;
  const near = (i, rgb, tolerance) => rgb.every((v, j) => Math.abs(d[i + j] - v) <= tolerance);
  let lines = 0, tints = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (near(i, line, 8)) lines++;
    else if (near(i, tint, 4)) tints++;
  }
  return [lines, tints];
}"""


def np_pixels(page, x: float | None = None) -> tuple[int, int]:
    """Pixels of the MAML plot in the neural process's line colour and in its band's tint: in the whole plot, or
    in the one column of pixels at data coordinate ``x``."""
    lines, tints = page.evaluate(COUNT_NP_PIXELS, [NP_LINE, NP_TINT, x])
    return lines, tints


def test_maml_page_draws_the_neural_process_mean_and_band(page, url):
    page.goto(url + "/maml")
    page.wait_for_function("document.getElementById('summary').textContent.includes('neural process')")
    page.wait_for_function("document.getElementById('np-caption').textContent.includes('held-out')")
    info = page.evaluate("api('/api/info')")
    caption = page.text_content("#np-caption")
    assert "attentive neural process" in caption and "Kim et al. 2019" in caption
    assert f"{info['anp']['measured']['query_mse']['10'][0]:.4f} from 10 points" in caption
    assert "neural process: mean ± 2 sd" in page.text_content("#legend")
    # 10 points of a sinusoid nearly determine it: a narrow band around the mean's line
    lines, tints = np_pixels(page)
    assert lines > 300 and tints > 300, (lines, tints)
    page.uncheck("#show-np")  # hidden: neither is drawn (nothing else on the plot has their colours)
    assert np_pixels(page) == (0, 0)
    page.check("#show-np")
    assert np_pixels(page) == (lines, tints)
    # no points: MAML has nothing to adapt on, the neural process shows its prior, a wide band
    page.click("#clear")
    page.wait_for_function("state.np !== null && state.np.k === 0")
    assert page.text_content("#summary").startswith("No support points: the neural process shows its prior")
    assert np_pixels(page)[1] > 10 * tints  # its band covers much of the plot
    # (columns between the grid lines at x = -4, -2, 0, 2, 4: the band is counted over white)
    prior = np_pixels(page, 1.0)[1]
    # two clicks, at x = 0.5 and 1.5: the band narrows between them, and stays wide far from them
    box = page.locator("#maml").bounding_box()
    for k, (x, y) in enumerate([(0.5, 1.0), (1.5, 2.0)], 1):
        at = page.evaluate(f"[plots.maml.px({x}), plots.maml.py({y})]")
        page.mouse.click(box["x"] + at[0], box["y"] + at[1])
        page.wait_for_function(f"state.np.k === {k} && state.result !== null")
        assert page.evaluate(
            f"Math.abs(state.x[{k - 1}] - {x}) < 0.02 && Math.abs(state.y[{k - 1}] - {y}) < 0.05"
        )
    near, far = np_pixels(page, 1.0)[1], np_pixels(page, 4.5)[1]
    assert near < prior / 3 and near < far / 3, (near, prior, far)


def strokes_of(image: np.ndarray, side: float) -> list[list[tuple[float, float]]]:
    """Pen strokes that retrace a 28x28 drawing on a ``side`` px canvas: its skeleton, walked pixel to
    neighbouring pixel, a new stroke wherever the walk has to jump."""
    from PIL import Image

    big = np.asarray(Image.fromarray(image).resize((112, 112), Image.Resampling.BILINEAR)) > 100
    points = [tuple(p) for p in np.argwhere(drawing.skeleton(big))]  # (row, column)
    strokes, left = [], set(points)
    while left:
        current = min(left)
        stroke = [current]
        left.remove(current)
        while True:
            near = [p for p in left if max(abs(p[0] - current[0]), abs(p[1] - current[1])) <= 2]
            if not near:
                break
            current = min(near, key=lambda p: (p[0] - current[0]) ** 2 + (p[1] - current[1]) ** 2)
            left.remove(current)
            stroke.append(current)
        if len(stroke) > 2:
            strokes.append([(c * side / 112, r * side / 112) for r, c in stroke[::2]])
    return strokes


def draw(page, strokes, box) -> None:
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.up()


def test_omniglot_drawing_is_classified(page, url):
    import base64
    import io

    from PIL import Image

    page.goto(url + "/omniglot")
    page.wait_for_function("document.querySelectorAll('#support .support img').length === 5")
    pad = page.locator("#pad").bounding_box()
    blank = canvas_pixels(page, "#pad")
    draw(page, [[(60, 60), (120, 150), (200, 240)]], pad)  # one stroke
    page.wait_for_function("document.querySelectorAll('#probabilities .bar').length === 5")
    assert canvas_pixels(page, "#pad") != blank
    shown = [float(t.strip("%")) for t in page.locator("#probabilities .bar .value").all_text_contents()]
    assert sum(shown) == pytest.approx(100, abs=0.5)
    assert page.get_attribute("#input", "src").startswith("data:image/png;base64,")
    page.click("#clear")
    assert page.text_content("#prediction") == "Draw a character to classify it."
    assert canvas_pixels(page, "#pad") == blank
    # retrace support character 3 with the mouse: the network recognises it
    source = page.get_attribute("#support .support[data-class='2'] img", "src")
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",")[1]))))
    tickets = page.evaluate("state.ticket")
    draw(page, strokes_of(image, pad["width"]), pad)
    page.wait_for_function("document.querySelectorAll('#probabilities .bar').length === 5")
    page.wait_for_function("state.pending === 0 && document.querySelector('.support.top') !== null")
    assert page.text_content("#prediction").startswith("3,")
    assert page.get_attribute(".support.top", "data-class") == "2"
    assert page.evaluate("state.ticket") > tickets + 1  # one request per stroke, the last one's answer shown
    shoot(page, "omniglot")


def test_incontext_clicks_add_points_and_move_the_lines(page, url):
    page.goto(url + "/incontext")
    page.wait_for_function("state.result && state.result.k === 3 && state.info !== null")
    assert page.text_content("#count") == "k = 3 points"
    assert page.locator("#slopes tr").count() == 6  # header, 4 methods, the true slope
    assert page.locator("#at-k tr").count() == 7  # header, transformer and 5 baselines, measured at k = 3
    assert "1000" in page.text_content("#prompts") and "steps of 64 prompts" in page.text_content("#training")
    # the error chart is drawn: the measured curves and their bands colour it
    colored = page.evaluate("""(() => { const c = document.querySelector('#errors');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 1]) > 60) n++; return n; })()""")
    assert colored > 500  # red, green, blue, orange curves and bands (grey and white pixels do not count)
    fit_before, errors_before = canvas_pixels(page, "#fit"), canvas_pixels(page, "#errors")
    box = page.locator("#fit").bounding_box()
    for i, (u, v) in enumerate([(150, 300), (420, 120), (520, 90)]):  # three points up a steep line
        page.mouse.click(box["x"] + u, box["y"] + v)
        page.wait_for_function(f"state.result && state.result.k === {4 + i}")
    assert page.text_content("#count") == "k = 6 points"
    assert page.text_content("#at-k-title") == "k = 6"
    assert canvas_pixels(page, "#fit") != fit_before and canvas_pixels(page, "#errors") != errors_before
    # the slopes shown are the server's answer for the six points on the page
    xs, ys, shown = page.evaluate("[state.x, state.y, state.result.least_squares.slope]")
    x, y = np.array(xs), np.array(ys)
    assert shown == pytest.approx((x * y).sum() / (x * x).sum(), abs=1e-4)
    assert page.text_content("#slopes tr[data-method='least_squares'] td:last-child") == f"{shown:.3f}"
    shoot(page, "incontext")
    page.click("#undo")
    page.wait_for_function("state.result && state.result.k === 5")
    assert page.text_content("#count") == "k = 5 points"
    page.click("#clear")
    page.wait_for_function("state.result && state.result.k === 0")
    assert page.text_content("#count") == "k = 0 points" and page.text_content("#error") == ""
    assert page.evaluate("state.result.ridge.y.every(v => v === 0)")
    page.click("#sample")
    page.wait_for_function("document.getElementById('task-info').textContent.includes('seed 1')")
    page.wait_for_function("state.result && state.result.k === 3")
    # the page keeps to the transformer's 20 points, and says so
    page.evaluate("state.x = Array.from({length: 20}, (_, i) => -2.5 + i / 4); state.y = state.x; predict()")
    page.wait_for_function("state.result && state.result.k === 20")
    page.mouse.click(box["x"] + 300, box["y"] + 200)
    assert page.text_content("#error").startswith("at most 20 points")
    assert page.text_content("#count") == "k = 20 points"

"""The offline graph page and a run's report, in a real headless browser (Debian's
chromium and chromedriver, driven by selenium), loaded from file:// with no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipec import load
from pipec.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                                reason="needs chromium and chromium-driver (installed by .ci/run)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                "--proxy-server=127.0.0.1:9", "--disable-background-networking"):  # any fetch would fail
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_graph_page_renders_offline_and_answers_clicks(browser, workdir):
    from selenium.webdriver.common.by import By
    assert main(["graph", "examples/train.pipe", "-o", "graph.html"]) == 0
    browser.get((workdir / "graph.html").as_uri())
    pipeline = load("examples/train.pipe")
    nodes = browser.find_elements(By.CSS_SELECTOR, "#graph g.node")
    assert sorted(n.get_attribute("data-id") for n in nodes) == sorted(pipeline.ir.graph)
    assert all(n.find_element(By.TAG_NAME, "rect").size["width"] > 0 for n in nodes)  # laid out, drawn

    grads = next(n for n in nodes if n.get_attribute("data-id") == "grads")
    grads.click()
    details = browser.find_element(By.ID, "details").text
    line = pipeline.source.text.splitlines()[pipeline.ir.op("grads").span.line - 1].strip()
    assert details.startswith(f"line {pipeline.ir.op('grads').span.line}: {line}")
    assert "elementwise `grads`" in details

    browser.find_element(By.ID, "search").send_keys("apply")
    matched = [n.get_attribute("data-id") for n in nodes if "match" in n.get_attribute("class")]
    assert matched == ["ps.apply"]

    label = browser.find_element(By.CSS_SELECTOR, "#graph .cluster-label")
    label.click()  # collapse `repeat epochs`: its nodes, and the edges touching them, hide
    hidden = {n.get_attribute("data-id") for n in nodes if not n.is_displayed()}
    assert hidden == {n for n, op in pipeline.ir.items() if op.loop == "loop1"}
    label.click()
    assert all(n.is_displayed() for n in nodes)


def test_report_shows_the_run_coloured_by_time(browser, workdir):
    from selenium.webdriver.common.by import By
    result = load("examples/train.pipe").run(backend="local", params={"rows": 400, "epochs": 3})
    browser.get(Path(result.report).resolve().as_uri())
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.gantt rect.bar")
    assert len(bars) >= 3 + 3
    timed = browser.find_elements(By.CSS_SELECTOR, "#graph g.node[data-seconds]")
    assert timed and all(n.find_element(By.TAG_NAME, "rect").get_attribute("fill") == n.get_attribute("data-heat")
                         for n in timed)
    browser.find_element(By.ID, "by-time").click()  # colour by kind again
    assert all(n.find_element(By.TAG_NAME, "rect").get_attribute("fill") == n.get_attribute("data-fill")
               for n in timed)
    assert "ps" in browser.find_element(By.TAG_NAME, "body").text

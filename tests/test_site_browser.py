"""`exp site` in a real browser: headless Chromium from Debian driven by selenium.

The workspace holds two real runs of a tiny model (`exp run`, seconds each) and a record whose
every field carries a payload (description, human and AI sections, samples, a config string).
Checks: the index lists every record, sorts and filters by clicking; a record page shows its
verdicts and its chart has drawn points; the compare page overlays two runs and its deltas are
comparison.compare's; every link resolves; no payload runs; no request leaves file://; a
screenshot of each page type is not blank. EXP_SITE_SCREENSHOTS=DIR also saves the index and a
record page there (the README's pictures).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from conftest import fill, run_exp
from test_results import end_run, write_run
from test_runner import TINY

from expkit import lifecycle, records, results
from expkit.comparison import compare
from expkit.catalog import clean_table, run_table
from expkit.version import Version
from expkit.workspace import Workspace, scaffold

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(selenium is None, reason="selenium is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are missing (apt-get install chromium chromium-driver; .ci/run does)"),
]

PAYLOAD = ('<script>window.PWNED=1;document.title="PWNED"</script><img src=x onerror="window.PWNED=2"> '
           '[click](javascript:window.PWNED=3) <a href="javascript:window.PWNED=4">raw</a> '
           '<b onmouseover="window.PWNED=5">b</b> ![i](http://203.0.113.9/x.png) <iframe src="http://203.0.113.9/"></iframe>')
EVIL = Version.parse("0.2.0")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("site") / "ws"
    scaffold(root)
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    (root / "pyproject.toml").write_text(text.replace('lang = "zh"', 'lang = "en"'), encoding="utf-8")
    env = {"EXP_ROOT": str(root)}
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    old = os.environ.get("EXP_ROOT")
    os.environ["EXP_ROOT"] = str(root)
    try:
        ws = Workspace.find(root)
        for v, parent, lr, desc in (("0.1.0", None, "3e-3", "tiny baseline"), ("0.1.1", "0.1.0", "1.5e-3", "half the learning rate")):
            rec = lifecycle.create(ws, Version.parse(v), parent=Version.parse(parent) if parent else None, description=desc, lang="en")
            fill(rec.path, {"goal": "See the loss fall.", "hypothesis": "A tiny model learns.",
                            "expected": "- val_loss < 20\n- tokens_per_s >= 1\n", "focus": "The curve."})
            lifecycle.set_config(ws, Version.parse(v), [*TINY, "max_steps=20", f"learning_rate={lr}"])
            r = run_exp("run", v, cwd=root, env=env)
            assert r.returncode == 0, r.stderr
        rec = lifecycle.create(ws, EVIL, description=PAYLOAD, lang="en")
        fill(rec.path, {name: PAYLOAD + "\n\n- val_loss < 20\n" for name in ("goal", "hypothesis", "expected", "focus")})
        lifecycle.set_config(ws, EVIL, ["swanlab_project=<img src=x onerror=window.PWNED=6>"])
        write_run(ws, EVIL, samples=[{"prompt": PAYLOAD, "mode": "greedy", "completion": PAYLOAD}])
        end_run(ws, EVIL)
        results.analyze(ws, EVIL)
        with records.update(ws, EVIL) as r:
            for name in ("analysis", "diagnosis", "suggestions"):
                r.set_ai(name, PAYLOAD)
        r = run_exp("site", "--json", cwd=root, env=env)
        assert r.returncode == 0, r.stderr
        yield ws
    finally:
        if old is None:
            os.environ.pop("EXP_ROOT", None)
        else:
            os.environ["EXP_ROOT"] = old


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--no-first-run", "--disable-background-networking", "--disable-component-update"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def site_url(ws, rel: str) -> str:
    return (ws.root / "out" / "site" / rel).as_uri()


def requests_made(browser) -> list[str]:
    """The URLs the browser asked for since the last call (its performance log)."""
    urls = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def open_page(browser, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 15).until(lambda d: d.execute_script("return document.documentElement.getAttribute('data-ready')") == "1")


def not_blank(browser, path: Path) -> None:
    from PIL import Image

    browser.save_screenshot(str(path))
    image = Image.open(path).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 20, f"{path.name}: {len(colours)} colours, the page looks blank"
    shots = os.environ.get("EXP_SITE_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(shots) / path.name)


def rows(browser) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#records tbody tr')).filter(r => !r.hidden).map(r => r.querySelector('.pick').value)")


def test_index_lists_every_record_and_sorts_and_filters_by_clicking(workspace, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    requests_made(browser)
    open_page(browser, site_url(workspace, "index.html"))
    assert rows(browser) == ["0.1.0", "0.1.1", "0.2.0"]
    assert browser.find_element(By.ID, "shown").text == "3"
    not_blank(browser, tmp_path / "site-index.png")

    version = browser.find_element(By.CSS_SELECTOR, "th[data-col=version]")
    version.click()
    assert rows(browser) == ["0.1.0", "0.1.1", "0.2.0"]
    version.click()
    assert rows(browser) == ["0.2.0", "0.1.1", "0.1.0"]
    browser.find_element(By.CSS_SELECTOR, "th[data-col=final_loss]").click()  # ascending by value
    losses = {v: clean_table(run_table(workspace, v))["final_loss"] for v in ("0.1.0", "0.1.1", "0.2.0")}
    assert rows(browser) == sorted(losses, key=losses.get)

    box = browser.find_element(By.ID, "q")
    box.send_keys("half the")
    assert rows(browser) == ["0.1.1"] and browser.find_element(By.ID, "shown").text == "1"
    box.clear()
    box.send_keys(" ")  # clear() fires no input event; a blank query shows all
    assert len(rows(browser)) == 3
    Select(browser.find_element(By.ID, "f-status")).select_by_value("analyzed")
    assert set(rows(browser)) == {"0.1.0", "0.1.1", "0.2.0"}
    Select(browser.find_element(By.ID, "f-status")).select_by_value("")
    assert all(u.startswith("file://") for u in requests_made(browser))


def test_a_record_page_shows_verdicts_and_draws_its_curves(workspace, browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, site_url(workspace, "r/0.1.1.html"))
    verdicts = browser.find_elements(By.CSS_SELECTOR, "table.verdicts tbody tr")
    assert [v.find_element(By.TAG_NAME, "code").text for v in verdicts] == ["val_loss < 20", "tokens_per_s >= 1"]
    assert "confirmed" in verdicts[0].text
    points = int(browser.find_element(By.CSS_SELECTOR, "#chart svg").get_attribute("data-points"))
    assert points > 5 and len(browser.find_elements(By.CSS_SELECTOR, "#chart polyline.series")) >= 2
    boxes = browser.find_elements(By.CSS_SELECTOR, "#chart .bar input")  # toggling a series redraws without it
    boxes[0].click()
    assert int(browser.find_element(By.CSS_SELECTOR, "#chart svg").get_attribute("data-points")) < points
    boxes[0].click()
    svg = browser.find_element(By.CSS_SELECTOR, "#chart svg")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element_with_offset(svg, 0, 0).perform()  # hover: the step and the values
    tip = browser.find_element(By.CSS_SELECTOR, "#chart .tip")
    assert tip.is_displayed() and tip.text.startswith("step ") and "loss:" in tip.text
    ActionChains(browser).move_to_element_with_offset(svg, -200, 0).click_and_hold().move_by_offset(150, 0).release().perform()
    assert int(browser.find_element(By.CSS_SELECTOR, "#chart svg").get_attribute("data-points")) < points  # zoomed in
    browser.find_element(By.CSS_SELECTOR, "#chart .reset").click()
    assert int(browser.find_element(By.CSS_SELECTOR, "#chart svg").get_attribute("data-points")) == points
    owners = {e.get_attribute("class").split("owner-")[1] for e in browser.find_elements(By.CSS_SELECTOR, ".part[class*=owner-]")}
    assert owners == {"human", "tool", "ai"}
    not_blank(browser, tmp_path / "site-record.png")


def test_compare_overlays_two_runs_with_the_deltas_of_exp_compare(workspace, browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, site_url(workspace, "index.html"))
    for v in ("0.1.0", "0.1.1"):
        browser.find_element(By.CSS_SELECTOR, f"input.pick[value='{v}']").click()
    browser.find_element(By.ID, "compare").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(lambda d: d.execute_script("return document.documentElement.getAttribute('data-ready')") == "1"
                                     and "compare.html" in d.current_url)
    assert urllib.parse.urlparse(browser.current_url).query == "v=0.1.0,0.1.1"  # the selection is in the address
    labels = {s.get_attribute("textContent") for s in browser.find_elements(By.CSS_SELECTOR, "#chart .bar label span:last-child")}
    assert {"0.1.0 loss", "0.1.1 loss"} <= labels
    assert int(browser.find_element(By.CSS_SELECTOR, "#chart svg").get_attribute("data-points")) > 10
    tables = {v: clean_table(run_table(workspace, v)) for v in ("0.1.0", "0.1.1")}
    configs = {v: records.load(workspace, Version.parse(v)).meta["config"] for v in tables}
    expected = compare(tables, configs)
    keys = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#config-diff tbody th")]
    assert keys == list(expected["config_diff"]) == ["learning_rate"]
    cells = {r.find_element(By.TAG_NAME, "th").text: [c.text for c in r.find_elements(By.TAG_NAME, "td")]
             for r in browser.find_elements(By.CSS_SELECTOR, "#metric-table tbody tr")}
    assert list(cells) == list(expected["metrics"])
    for metric, d in expected["deltas"]["0.1.1"].items():
        shown = float(cells[metric][2])
        assert shown == pytest.approx(d["abs"], rel=1e-3, abs=1e-9), metric
    not_blank(browser, tmp_path / "site-compare.png")


def test_no_payload_runs_and_no_request_leaves_the_machine(workspace, browser):
    requests_made(browser)
    for rel in ("index.html", f"r/{EVIL}.html", f"compare.html?v=0.1.0,{EVIL}"):
        open_page(browser, site_url(workspace, rel.split("?")[0]) + ("?" + rel.split("?")[1] if "?" in rel else ""))
        found = browser.execute_script("""
            const bad = [];
            for (const e of document.querySelectorAll('*')) {
              for (const a of e.attributes) { if (a.name.startsWith('on')) bad.push(e.tagName + ' ' + a.name); }
              if (['SCRIPT', 'IFRAME', 'IMG', 'OBJECT', 'EMBED'].includes(e.tagName) && /203\\.0\\.113|^x$/.test(e.getAttribute('src') || '')) bad.push(e.tagName);
              if ((e.getAttribute('href') || '').trim().toLowerCase().startsWith('javascript')) bad.push('javascript link');
            }
            return {pwned: window.PWNED === undefined ? null : window.PWNED, title: document.title, bad: bad};""")
        assert found["pwned"] is None and found["title"] != "PWNED" and found["bad"] == [], (rel, found)
        if rel.startswith("r/"):
            assert "<script>window.PWNED=1" in browser.find_element("css selector", ".lede").text  # shown, as text
            from selenium.webdriver.common.by import By

            for link in browser.find_elements(By.CSS_SELECTOR, ".part a"):  # clicking what the text made a link runs nothing
                assert not link.get_attribute("href").lower().startswith("javascript")
    leaving = [u for u in requests_made(browser) if not u.startswith("file://")]
    assert leaving == []


def test_every_link_in_the_site_resolves(workspace, browser):
    site_dir = workspace.root / "out" / "site"
    pages = ["index.html", "compare.html?v=0.1.0,0.1.1"] + [f"r/{p.stem}.html" for p in sorted((site_dir / "r").glob("*.html"))]
    checked = 0
    for rel in pages:
        path, _, query = rel.partition("?")
        open_page(browser, site_url(workspace, path) + (f"?{query}" if query else ""))
        hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href], link[href], script[src], img[src]'))"
                                       ".map(e => e.href || e.src)")
        for href in hrefs:
            url = urllib.parse.urlparse(href)
            if url.scheme in ("http", "https", "mailto"):
                continue  # a link a person wrote in a record's text
            assert url.scheme == "file", href
            target = Path(urllib.parse.unquote(url.path))
            assert target.is_file(), f"{rel}: {href} does not resolve"
            checked += 1
    assert checked > 30


@pytest.fixture(scope="module")
def group_workspace(tmp_path_factory):
    """Group 0.3.0 and its members 0.3.1 and 0.3.2 (learning_rate swept; `group`/`changes` written
    through the record API), each member run as three synthetic replicates in r0/-r2/."""
    root = tmp_path_factory.mktemp("group") / "ws"
    scaffold(root)
    old = os.environ.get("EXP_ROOT")
    os.environ["EXP_ROOT"] = str(root)
    try:
        ws = Workspace.find(root)
        parent = Version.parse("0.3.0")
        lifecycle.create(ws, parent, description="learning-rate sweep", lang="en")
        write_run(ws, parent, final_loss=5.0)
        end_run(ws, parent)
        for i, (v, lr) in enumerate((("0.3.1", 1e-4), ("0.3.2", 1e-2))):
            version = Version.parse(v)
            lifecycle.create(ws, version, parent=parent, description=f"lr {lr}", lang="en")
            lifecycle.set_config(ws, version, [f"learning_rate={lr}"])
            with records.update(ws, version) as r:
                r.meta["group"], r.meta["changes"] = str(parent), {"learning_rate": lr}
            for k, loss in enumerate((4.9 - 0.3 * i, 4.7 - 0.3 * i, 4.8 - 0.3 * i)):
                write_run(ws, version, final_loss=loss)
                ws.replicate_dir(version, k).mkdir()
                for f in ("metrics.jsonl", "summary.json"):
                    shutil.copy(ws.out_dir(version) / f, ws.replicate_dir(version, k) / f)
            end_run(ws, version)
        r = run_exp("site", "--json", cwd=root, env={"EXP_ROOT": str(root)})
        assert r.returncode == 0, r.stderr
        yield ws
    finally:
        if old is None:
            os.environ.pop("EXP_ROOT", None)
        else:
            os.environ["EXP_ROOT"] = old


def test_a_group_folds_in_the_index_and_its_page_draws_error_bars_and_links_that_resolve(group_workspace, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ws = group_workspace
    requests_made(browser)
    open_page(browser, site_url(ws, "index.html"))
    assert rows(browser) == ["0.3.0"]  # the members folded under their parent
    browser.find_element(By.CSS_SELECTOR, "button.fold").click()
    assert rows(browser) == ["0.3.0", "0.3.1", "0.3.2"]
    cells = browser.execute_script("return Array.from(document.querySelectorAll('#row-0\\\\.3\\\\.1 td.num')).map(c => c.textContent)")
    assert " ± " in cells[0]  # final_loss over three replicates: mean ± CI
    browser.find_element(By.CSS_SELECTOR, "th[data-col=final_loss]").click()  # sorted: members stay under their parent
    assert rows(browser)[0] == "0.3.0" and sorted(rows(browser)[1:]) == ["0.3.1", "0.3.2"]
    browser.find_element(By.CSS_SELECTOR, "aside a[href='g/0.3.0.html']").click()

    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(lambda d: "g/0.3.0.html" in d.current_url
                                     and d.execute_script("return document.documentElement.getAttribute('data-ready')") == "1")
    svg = browser.find_element(By.CSS_SELECTOR, "#group-chart svg")
    assert svg.get_attribute("data-points") == "3"  # the parent and both members
    assert svg.get_attribute("data-errbars") == "2" and len(browser.find_elements(By.CSS_SELECTOR, "#group-chart path.errbar")) == 2
    assert browser.find_element(By.ID, "group-chart").get_attribute("data-versions") == "0.3.1,0.3.0,0.3.2"  # by learning rate
    Select(browser.find_element(By.ID, "g-metric")).select_by_value("tokens_per_s")  # another metric redraws
    assert browser.find_element(By.CSS_SELECTOR, "#group-chart svg").get_attribute("data-points") == "3"
    not_blank(browser, tmp_path / "site-group.png")
    hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href], link[href], script[src]')).map(e => e.href || e.src)")
    for page in ("r/0.3.0.html", "r/0.3.1.html", "r/0.3.2.html"):
        assert site_url(ws, page) in hrefs
    for href in hrefs:
        assert Path(urllib.parse.unquote(urllib.parse.urlparse(href).path)).is_file(), href
    open_page(browser, site_url(ws, "r/0.3.1.html"))
    link = browser.find_element(By.CSS_SELECTOR, "a.group-link")
    assert Path(urllib.parse.unquote(urllib.parse.urlparse(link.get_attribute("href")).path)) == ws.root / "out/site/g/0.3.0.html"
    assert all(u.startswith("file://") for u in requests_made(browser))


# -- records of several tasks -------------------------------------------------------------------------------
from test_reporting import tasks_ws  # noqa: E402,F401  (the fixture: pretraining, classification and a declared task)


def test_the_index_of_several_tasks_shows_each_row_its_task_s_metrics_and_filters_by_task(tasks_ws, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from expkit import site

    site.build(tasks_ws)
    open_page(browser, site_url(tasks_ws, "index.html"))
    heads = [th.get_attribute("data-col") for th in browser.find_elements(By.CSS_SELECTOR, "#records thead th")]
    assert heads[:1] == [None] and "test_macro_f1" in heads and "score" in heads

    def cells(version: str) -> dict:
        tds = browser.find_element(By.ID, f"row-{version}").find_elements(By.TAG_NAME, "td")
        return {h: td.text for h, td in zip(heads, tds) if h}

    assert cells("0.2.0")["test_macro_f1"] == "0.41" and cells("0.2.0")["final_loss"] == "—"
    assert cells("0.4.1")["score"] == "0.9" and "★" in cells("0.4.1")["version"] and "★" not in cells("0.4.0")["version"]
    assert "★" in cells("0.2.1")["version"] and "★" in cells("0.1.0")["version"]  # the best of each task
    Select(browser.find_element(By.ID, "f-task")).select_by_value("classify")
    assert browser.find_element(By.ID, "shown").text == "3"
    browser.find_element(By.CSS_SELECTOR, "th[data-col=test_macro_f1]").click()  # ascending by macro-F1
    order = [tr.get_attribute("id") for tr in browser.find_elements(By.CSS_SELECTOR, "#records tbody tr") if tr.is_displayed()]
    assert order == ["row-0.3.0", "row-0.2.0", "row-0.2.1"]

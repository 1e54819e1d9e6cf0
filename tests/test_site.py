"""`exp site` without a browser: what it writes, what a rebuild rewrites, the markdown it lets
through, its errors, and `--serve` over real HTTP. The pages in a real browser are in
test_site_browser.py.

Runs are the files a trainer leaves (test_results.write_run) analysed by the real `exp analyze`.
"""

from __future__ import annotations

import json
import os
import shutil
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import run_exp
from test_results import end_run, new_record, write_run

from expkit import pages, records, results, site
from expkit.version import Version

A, B = Version.parse("0.1.0"), Version.parse("0.1.1")


@pytest.fixture
def two(ws):
    """0.1.0 and its child 0.1.1 (learning rate changed), both run and analysed."""
    new_record(ws, A, parent=None, description="baseline")
    new_record(ws, B, parent=A, description="lower lr")
    from expkit import lifecycle

    lifecycle.set_config(ws, B, ["learning_rate=1e-3"])
    for v, loss in ((A, 5.1), (B, 4.9)):
        write_run(ws, v, final_loss=loss)
        end_run(ws, v)
        results.analyze(ws, v)
    return ws


def test_build_writes_every_page_and_a_rebuild_rewrites_only_what_changed(two, cli):
    code, out, err = cli("site", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert set(first) >= {"site", "index", "records", "pages", "groups", "written", "unchanged", "removed", "seconds"}
    assert first["site"] == "out/site" and first["records"] == 2 and first["removed"] == []
    site_dir = two.root / "out" / "site"
    for rel in ("index.html", "compare.html", "r/0.1.0.html", "r/0.1.1.html", "r/0.1.0.data.js", "assets/site.js",
                "assets/chart.js", "assets/site.css", ".manifest.json"):
        assert (site_dir / rel).is_file(), rel
    assert sorted(first["written"]) == sorted(r for r in json.loads((site_dir / ".manifest.json").read_text())["pages"])

    code, out, _ = cli("site", "--json")
    assert json.loads(out)["written"] == []  # nothing changed, nothing written

    with records.update(two, B) as r:  # one record changes: its page and the index, nothing else
        r.meta["description"] = "lower lr, described again"
    code, out, _ = cli("site", "--json")
    again = json.loads(out)
    assert sorted(again["written"]) == ["index.html", "r/0.1.1.data.js", "r/0.1.1.html"]
    assert "described again" in (site_dir / "r/0.1.1.html").read_text(encoding="utf-8")

    with records.update(two, A) as r:  # a parent changes: the child's config diff depends on it
        r.meta["description"] = "baseline, again"
    assert set(json.loads(cli("site", "--json")[1])["written"]) >= {"r/0.1.0.html", "r/0.1.1.html", "index.html"}

    two.record_path(B).unlink()
    two.state_path(B).unlink()
    gone = json.loads(cli("site", "--json")[1])
    assert gone["removed"] == ["r/0.1.1.data.js", "r/0.1.1.html"] and not (site_dir / "r/0.1.1.html").exists()


def test_the_text_output_names_the_site_and_the_index(two, cli):
    code, out, _ = cli("site")
    assert code == 0
    assert re.search(r"^site +out/site/ +\(2 record\(s\)", out, re.M)
    assert "file://" in out and out.strip().endswith("out/site/index.html")


def test_a_record_page_holds_sections_with_owners_verdicts_samples_and_the_config_diff(two, cli):
    cli("site")
    html = (two.root / "out/site/r/0.1.1.html").read_text(encoding="utf-8")
    for owner in ("owner-human", "owner-tool", "owner-ai"):
        assert owner in html
    assert 'class="verdicts"' in html and "val_loss &lt; 6" in html
    assert "learning_rate" in html and 'href="0.1.0.html"' in html  # config diff and the parent's link
    assert "如梦如梦" in html  # a sample
    assert "../compare.html?v=0.1.0,0.1.1" in html
    assert '<noscript><img class="plot" src="../../experiment_0.1.1/plots/loss.png"' in html
    data = (two.root / "out/site/r/0.1.1.data.js").read_text(encoding="utf-8")
    body = json.loads(data[data.index("] = ") + 4: -2])
    assert body["curves"]["step"][-1] == 60 and body["curves"]["val_step"] == [10, 20, 30, 40, 50, 60]
    assert body["config"]["learning_rate"] == 1e-3 and body["metrics"]["final_loss"] == pytest.approx(4.9)


def test_the_tools_tables_render_as_markdown_it_renders_them(two):
    record = records.load(two, B)
    generated = [b for b in record.blocks("generated") if "|---|" in b.text]
    assert len(generated) >= 3
    md = pages._markdown()
    for b in generated:
        assert pages.markdown_html(b.text, tool_tables=True) == md.render(b.text), b.name



def test_a_records_text_rendered_once_for_every_version_is_what_markdown_it_renders(two):
    """markdown_html(version=V) renders the text with V replaced by a mark and puts V back: the HTML
    is markdown-it's own, for V anywhere (a title, a code span, a link, a table, a longer number)."""
    md = pages._markdown()
    record = records.load(two, B)
    texts = [t for t in [p if isinstance(p, str) else p.text for p in record.parts] if "0.1.1" in t] + [
        "# 🧪 实验 0.1.1\n\n> `exp set 0.1.1 KEY=VALUE`\n- [run](../out/experiment_0.1.1/x.md) <https://h/0.1.1>\n",
        "0.1.1\n===\n\n0.1.1. item\n\n1) 0.1.1\n\n10.1.10 and 0.1.11 and 0.1.1.1 **0.1.1**_0.1.1_ &#0.1.1; [0.1.1]: /0.1.1\n\n[0.1.1]\n",
        "| a | b |\n|---|---|\n| `experiment_0.1.1` | 0.1.1 |\n\n    code 0.1.1\n",
    ]
    assert len(texts) >= 6
    for text in texts:
        assert pages.markdown_html(text, version="0.1.1") == md.render(text), text
        assert pages.markdown_html(text, version="0.1.1", base="../x/") == md.render(text, {"base": "../x/"}), text
    assert sum(pages._VERSION_MARK in key[0] for key in pages._memo) >= len(texts)  # rendered with the mark
    for b in record.blocks("generated"):
        assert pages.markdown_html(b.text, tool_tables=True, version="0.1.1") == md.render(b.text), b.name
    assert pages.markdown_html("0.1.1 " + pages._VERSION_MARK, version="0.1.1") == md.render("0.1.1 " + pages._VERSION_MARK)

@pytest.mark.parametrize("text, absent, present", [
    ("<script>alert(1)</script>", "<script", "&lt;script&gt;"),
    ('<img src=x onerror="alert(1)">', "<img", "&lt;img"),
    ("[x](javascript:alert(1))", 'href="javascript', "[x](javascript:alert(1))"),
    ("[x](JAVASCRIPT:alert(1))", 'href="JAVASCRIPT', "[x]"),
    ("[x](data:text/html;base64,PHNjcmlwdD4=)", 'href="data', "[x]"),
    ("![i](http://203.0.113.9/x.png)", "<img", "!"),
    ("[ok](https://example.org/a)", "<script", 'href="https://example.org/a"'),
])
def test_markdown_keeps_raw_html_unsafe_links_and_images_as_text(text, absent, present):
    html = pages.markdown_html(text)
    assert absent not in html and present in html


def test_a_data_script_cannot_end_its_script_element():
    text = pages.record_script("0.1.0", {"description": "</script><script>x()</script>\u2028"})
    assert "</script" not in text and "\\u003c/script" in text and "\u2028" not in text
    with pytest.raises(ValueError):
        pages.record_script("0.1.0\"];alert(1);//", {})
    with pytest.raises(ValueError):  # cached curves go in as text only when they look like curves
        pages.record_script("0.1.0", {"curves": pages.RawJSON('{"step":[1]};alert(1)//')})
    row = {"version": "0.1.0", "order": "0", "status": "x", "task": "t", "description": "</script><!--<script>\u2028",
           "parent": None, "parent_link": False, "parent_order": "", "metrics": [], "verdicts": None, "verdict_sort": "",
           "review": "", "date": "", "best": False, "search": ""}
    index = pages.index_json([row], pages.strings("en"))
    assert "<" not in index and "\u2028" not in index
    assert json.loads(index)["rows"][0][4] == "</script><!--<script>\u2028"


def test_curves_keep_every_evaluation_and_thin_the_rest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 10 - s / 1000, "lr": 1e-3, **({"val_loss": 9.0} if s % 1000 == 0 else {})})
             for s in range(1, 10001)]
    path.write_text("\n".join(lines) + '\n{"step": 10001, "loss": 4.', encoding="utf-8")  # a torn last line
    assert path.stat().st_size > pages.SPLIT_BYTES  # the lines kept found by position
    c = pages.curves(path, max_points=500)
    assert c["thinned"] and 450 <= c["points"] == len(c["step"]) <= 500
    assert c["step"][0] == 1 and c["step"] == sorted(set(c["step"]))
    gaps = [b - a for a, b in zip(c["step"], c["step"][1:])]
    assert max(gaps) <= 2 * 10000 / 500  # spread evenly: no stretch of the run left out
    assert c["step"][-1] > 10000 - 2 * 10000 / 500  # the torn last line skipped, the one before it near
    assert c["val_step"] == list(range(1000, 10001, 1000))
    assert "grad_norm" not in c  # never logged
    assert pages.curves(tmp_path / "missing.jsonl") is None
    counts, text = pages.curves_json(path, max_points=500)  # the numbers copied, not printed again: the same curves
    assert json.loads(text) == c and counts == {"points": c["points"], "thinned": True} and pages.is_curves_json(text)
    assert pages.curves_json(tmp_path / "missing.jsonl") == (None, "null")

    path.write_text("\n".join(lines[:2000]) + "\n", encoding="utf-8")  # small: split, every 4th line and the last
    assert path.stat().st_size <= pages.SPLIT_BYTES
    c = pages.curves(path, max_points=500)
    assert c["step"] == [*range(1, 2001, 4), 2000] and c["thinned"] and c["val_step"] == [1000, 2000]
    path.write_text("\n".join(lines[:300]), encoding="utf-8")  # fewer lines than points: every one
    c = pages.curves(path, max_points=500)
    assert c["step"] == list(range(1, 301)) and not c["thinned"] and c["points"] == 300
    long = [line[:-1] + ', "note": "' + "x" * 600 + '"}' for line in lines[:300]]  # large, but fewer lines than points
    path.write_text("\n".join(long) + "\n", encoding="utf-8")
    assert path.stat().st_size > pages.SPLIT_BYTES
    c = pages.curves(path, max_points=500)
    assert c["step"] == list(range(1, 301)) and not c["thinned"]


def test_curves_as_json_text_are_the_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = ['{"step": 1, "loss": NaN, "lr": 1e-3, "grad_norm": Infinity}', '{"step": 2.0, "loss": 1E2, "lr": 1e400}',
            '{"step": 3, "loss": "text", "lr": -0.0, "grad_norm": 2}', '{"step": 4, "loss": 3.25, "val_loss": 1e999}',
            '{"step": 5, "loss": 0.5, "lr": true, "val_loss": 2.5e-1}', '{"loss": 1.0}', '[1, 2]']
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    counts, text = pages.curves_json(path)
    expected = pages.curves(path)
    assert json.loads(text) == expected and counts == {"points": 5, "thinned": False}
    assert expected["step"] == [1, 2, 3, 4, 5] and expected["loss"] == [None, 100.0, None, 3.25, 0.5]
    assert expected["lr"] == [1e-3, None, -0.0, None, None] and expected["val_loss"] == [None, 0.25]
    assert pages.is_curves_json(text)


def test_bad_input_is_one_line_and_a_non_zero_exit(two, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    r = run_exp("site", "--out", str(a_file), cwd=two.root)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is a file" in r.stderr and "Traceback" not in r.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = run_exp("site", "--out", str(foreign), cwd=two.root)
    assert r.returncode == 2 and "did not write" in r.stderr and (foreign / "notes.txt").read_text() == "mine"
    r = run_exp("site", "--port", "70000", "--serve", cwd=two.root)
    assert r.returncode == 2 and "--port" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_exp("site", "--serve", "--port", str(busy.getsockname()[1]), cwd=two.root)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "in use" in r.stderr and "--port P" in r.stderr


def test_serve_listens_on_loopback_only_and_rebuilds_when_a_run_writes(two):
    seen: list[dict] = []
    stop = threading.Event()
    thread = threading.Thread(target=site.serve, args=(two, None, 0, seen.append), kwargs={"interval": 0.1, "stop": stop})
    thread.start()
    try:
        for _ in range(100):
            if seen:
                break
            time.sleep(0.05)
        url = seen[0]["url"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/out/site/index.html")
        assert "0.1.1" in urllib.request.urlopen(url, timeout=5).read().decode()
        base = url.rsplit("/out/site/", 1)[0]
        assert urllib.request.urlopen(base + "/out/experiment_0.1.1/metrics.jsonl", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:  # the workspace's other files are not served
            urllib.request.urlopen(base + "/pyproject.toml", timeout=5)
        assert refused.value.code == 404
        with open(two.out_dir(B) / "metrics.jsonl", "a", encoding="utf-8") as fh:  # the run logs another step
            fh.write(json.dumps({"step": 61, "loss": 4.8, "lr": 1e-4}) + "\n")
        for _ in range(100):
            if len(seen) > 1:
                break
            time.sleep(0.05)
        assert len(seen) > 1 and "r/0.1.1.data.js" in seen[-1]["written"]
        page = urllib.request.urlopen(url.replace("index.html", "r/0.1.1.data.js"), timeout=5).read().decode()
        assert '"step":[1,' in page and ",61]" in page
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def _data(ws, v) -> dict:
    text = (ws.root / "out/site/r" / f"{v}.data.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("] = ") + 4: -2])


def _restyle(ws, note: str) -> None:
    """A new template: every page is rendered again."""
    template = site.templates_dir(ws) / "record.html.j2"
    assert template.is_relative_to(ws.root)  # the workspace's own copy, which a lab may restyle
    template.write_text(template.read_text(encoding="utf-8") + "{# " + note + " #}\n", encoding="utf-8")


def test_curves_survive_a_new_template_only_while_their_metrics_file_is_unchanged(two, cli, monkeypatch):
    """The manifest keeps each data script's metrics stamp; a page rendered again takes its curves
    from the data script already there only when the metrics file is the one they came from."""
    assert cli("site", "--json")[0] == 0
    site_dir = two.root / "out/site"
    assert json.loads((site_dir / ".manifest.json").read_text())["pages"]["r/0.1.1.data.js"]["curves"]["counts"]["points"] == 60
    thinned: list[str] = []
    real = pages.curves_json
    monkeypatch.setattr(pages, "curves_json", lambda path, *a: thinned.append(path.parent.name) or real(path, *a))
    before = (site_dir / "r/0.1.1.data.js").read_bytes()

    _restyle(two, "one")
    result = site.build(two)
    assert "r/0.1.1.html" in result["written"] and "r/0.1.1.data.js" in result["written"]
    assert thinned == [] and (site_dir / "r/0.1.1.data.js").read_bytes() == before  # reused, the same bytes

    metrics = two.out_dir(B) / "metrics.jsonl"  # the same size, other values, a later mtime
    lines = metrics.read_text(encoding="utf-8").splitlines()
    changed = [line.replace('"loss": 4.', '"loss": 3.') for line in lines]
    assert changed != lines and sum(map(len, changed)) == sum(map(len, lines))
    metrics.write_text("\n".join(changed) + "\n", encoding="utf-8")
    st = metrics.stat()
    os.utime(metrics, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    _restyle(two, "two")
    site.build(two)
    assert thinned == ["experiment_0.1.1"]
    losses = [json.loads(line).get("loss") for line in changed if line.strip()]
    assert _data(two, "0.1.1")["curves"]["loss"][-1] == pytest.approx(losses[-1])

    script = site_dir / "r/0.1.0.data.js"  # damaged: not put in; taken again from the run's curves.json (exp analyze's)
    script.write_text(script.read_text(encoding="utf-8").replace('"curves":{"step":[', '"curves":{"step":alert(1),['),
                      encoding="utf-8")
    _restyle(two, "three")
    site.build(two)
    assert thinned == ["experiment_0.1.1"]
    assert "alert" not in script.read_text(encoding="utf-8") and _data(two, "0.1.0")["curves"]["step"][-1] == 60
    (two.out_dir(A) / "curves.json").unlink()  # without it (a record analysed by an older expkit): thinned here
    script.write_text(script.read_text(encoding="utf-8").replace('"curves":{"step":[', '"curves":{"step":alert(1),['),
                      encoding="utf-8")
    _restyle(two, "four")
    site.build(two)
    assert thinned == ["experiment_0.1.1", "experiment_0.1.0"]
    assert "alert" not in script.read_text(encoding="utf-8") and _data(two, "0.1.0")["curves"]["step"][-1] == 60



def test_analyze_thins_the_curves_once_and_the_site_copies_them_while_the_metrics_file_is_unchanged(two, monkeypatch):
    """`exp analyze` keeps the run's curves in out/experiment_V/curves.json; a cold build copies them
    (no metrics file read) and thins a metrics file itself when curves.json is not of that file."""
    out = two.out_dir(A)
    metrics = out / "metrics.jsonl"
    found = pages.read_curves_file(out / "curves.json", os.stat(metrics))
    assert found is not None and found == pages.curves_json(metrics)  # exactly what the site would thin
    assert json.loads(found[1]) == pages.curves(metrics) and found[0]["points"] == 60
    assert pages.read_curves_file(out / "curves.json", os.stat(metrics), series=("val_acc",)) is None  # another task's
    assert pages.read_curves_file(out / "curves.json", os.stat(metrics), max_points=100) is None
    assert pages.read_curves_file(out / "missing.json", os.stat(metrics)) is None

    thinned: list[str] = []
    real = pages.curves_json
    monkeypatch.setattr(pages, "curves_json", lambda path, *a: thinned.append(path.parent.name) or real(path, *a))
    site.build(two)
    assert thinned == [] and _data(two, "0.1.0")["curves"] == json.loads(found[1])

    with metrics.open("a", encoding="utf-8") as fh:  # the run logs one more step: curves.json is of another file
        fh.write(json.dumps({"step": 61, "loss": 1.25, "lr": 1e-4}) + "\n")
    assert pages.read_curves_file(out / "curves.json", os.stat(metrics)) is None
    shutil.rmtree(two.root / "out/site")
    site.build(two)
    assert thinned == ["experiment_0.1.0"] and _data(two, "0.1.0")["curves"]["step"][-1] == 61

    cj = two.out_dir(B) / "curves.json"  # damaged (a payload in the curves): not used, thinned instead
    cj.write_text(cj.read_text(encoding="utf-8").replace('"curves":{"step":[', '"curves":{"step":alert(1),['), encoding="utf-8")
    assert pages.read_curves_file(cj, os.stat(two.out_dir(B) / "metrics.jsonl")) is None
    shutil.rmtree(two.root / "out/site")
    site.build(two)
    assert "experiment_0.1.1" in thinned and "alert" not in (two.root / "out/site/r/0.1.1.data.js").read_text(encoding="utf-8")
    assert _data(two, "0.1.1")["curves"]["step"][-1] == 60

def test_pages_rendered_again_with_reused_curves_are_those_of_a_fresh_build(two, cli):
    assert cli("site", "--json")[0] == 0
    site_dir = two.root / "out/site"
    _restyle(two, "again")
    assert cli("site", "--json")[0] == 0  # every page again, the curves from the data scripts
    again = {p.relative_to(site_dir): p.read_bytes() for p in site_dir.rglob("*") if p.is_file() and p.name != ".manifest.json"}
    shutil.rmtree(site_dir)
    assert cli("site", "--json")[0] == 0  # from nothing
    fresh = {p.relative_to(site_dir): p.read_bytes() for p in site_dir.rglob("*") if p.is_file() and p.name != ".manifest.json"}
    assert again == fresh and b"{# again #}" not in again[next(iter(again))]


G = Version.parse("0.2.0")
SWEEP = {"0.2.1": 1e-4, "0.2.2": 1e-3, "0.2.3": 1e-2}


@pytest.fixture
def grouped(ws):
    """Group 0.2.0 (one run) and its members 0.2.1-0.2.3, each changing learning_rate (front matter
    `group`/`changes` written through the record API) and run as three replicates in r0/-r2/."""
    from expkit import lifecycle

    new_record(ws, G, parent=None, description="learning-rate sweep")
    write_run(ws, G, final_loss=5.0)
    end_run(ws, G)
    results.analyze(ws, G)
    for i, (v, lr) in enumerate(SWEEP.items()):
        version = Version.parse(v)
        new_record(ws, version, parent=G, description=f"lr {lr}")
        lifecycle.set_config(ws, version, [f"learning_rate={lr}"])
        with records.update(ws, version) as r:
            r.meta["group"] = str(G)
            r.meta["changes"] = {"learning_rate": lr}
        for k, loss in enumerate((4.9 - 0.1 * i, 4.8 - 0.1 * i, 4.95 - 0.1 * i)):
            write_run(ws, version, final_loss=loss)
            replicate = ws.replicate_dir(version, k)
            replicate.mkdir()
            for f in ("metrics.jsonl", "summary.json"):
                shutil.copy(ws.out_dir(version) / f, replicate / f)
        end_run(ws, version)
        results.analyze(ws, version)
    return ws


def _index_rows(ws) -> dict[str, dict]:
    text = (ws.root / "out/site/index.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="index-data">(.*?)</script>', text, re.S).group(1))
    return {r[0]: dict(zip(data["fields"], r)) for r in data["rows"]}


def test_a_group_has_a_page_its_members_fold_under_it_and_replicates_show_mean_and_ci(grouped, cli):
    code, out, err = cli("site", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert "g/0.2.0.html" in result["written"] and result["groups"] == 1
    assert re.search(r"^site +out/site/ +\(4 record\(s\), 1 group\(s\);", cli("site")[1], re.M)
    rows = _index_rows(grouped)
    assert rows["0.2.0"]["members"] == 3 and rows["0.2.0"]["group"] is None
    for v, lr in SWEEP.items():
        assert rows[v]["group"] == "0.2.0" and rows[v]["swept"] == f"learning_rate={pages.shown(lr)}"
        assert " ± " in rows[v]["metrics"][0][0]  # final_loss: mean ± half-width over r0-r2
    assert " ± " not in rows["0.2.0"]["metrics"][0][0]  # one run: its value
    # the interval is the Student t one over the three replicates
    from expkit.intervals import t_interval
    iv = t_interval([4.9, 4.8, 4.95])
    assert rows["0.2.1"]["metrics"][0][0] == f"{pages.shown(iv.mean)} ± {pages.shown(iv.half)}"

    page = (grouped.root / "out/site/g/0.2.0.html").read_text(encoding="utf-8")
    for v in ("0.2.0", *SWEEP):
        assert f'href="../r/{v}.html"' in page
    data = json.loads(re.search(r'<script type="application/json" id="group-data">(.*?)</script>', page, re.S).group(1))
    assert data["keys"] == ["learning_rate"] and data["metrics"][0] == "final_loss"
    points = {p["version"]: p for p in data["points"]}
    assert points["0.2.0"]["x"]["learning_rate"] == 3e-3  # the parent at its own config value
    assert [points[v]["x"]["learning_rate"] for v in SWEEP] == list(SWEEP.values())
    assert points["0.2.1"]["stats"]["final_loss"]["ci"] == pytest.approx(iv.half)
    assert points["0.2.0"]["stats"]["final_loss"]["ci"] is None
    member = (grouped.root / "out/site/r/0.2.2.html").read_text(encoding="utf-8")
    assert 'href="../g/0.2.0.html"' in member and "learning_rate=0.001" in member and "(n=3)" in member
    assert 'href="../g/0.2.0.html"' in (grouped.root / "out/site/r/0.2.0.html").read_text(encoding="utf-8")
    assert 'href="g/0.2.0.html"' in (grouped.root / "out/site/index.html").read_text(encoding="utf-8")

    shutil.rmtree(grouped.replicate_dir(Version.parse("0.2.3"), 2))  # a replicate less, analysed again:
    results.analyze(grouped, Version.parse("0.2.3"))  # its page, the group's, the index
    again = json.loads(cli("site", "--json")[1])
    assert "n=2" in (grouped.root / "out/site/r/0.2.3.html").read_text(encoding="utf-8")
    assert sorted(again["written"]) == ["g/0.2.0.html", "index.html", "r/0.2.3.data.js", "r/0.2.3.html"]

    with records.update(grouped, Version.parse("0.2.3")) as r:  # no longer a member
        del r.meta["group"]
    with records.update(grouped, Version.parse("0.2.2")) as r:
        del r.meta["group"]
    with records.update(grouped, Version.parse("0.2.1")) as r:
        del r.meta["group"]
    gone = json.loads(cli("site", "--json")[1])
    assert gone["removed"] == ["g/0.2.0.html"] and "r/0.2.0.html" in gone["written"]  # the parent's link to it goes
    assert "../g/0.2.0.html" not in (grouped.root / "out/site/r/0.2.0.html").read_text(encoding="utf-8")


# -- records of several tasks ----------------------------------------------------------------------------
from test_reporting import CLASSIFY, TOY_RUNS, classify_group, tasks_ws  # noqa: E402,F401  (tasks_ws: the fixture)


def _data_script(ws, version: str) -> dict:
    text = (ws.root / f"out/site/r/{version}.data.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("] = ") + 4: text.rindex(";")])


def test_the_index_shows_each_row_its_own_task_s_metrics_and_the_best_of_each_task(tasks_ws, cli):
    code, out, err = cli("site", "--json")
    assert code == 0, err
    page = (tasks_ws.root / "out/site/index.html").read_text(encoding="utf-8")
    cols = re.findall(r'data-sort="num" data-col="([^"]+)"', page)
    assert cols == ["final_loss", "best_val_loss", "tokens_per_s", "test_macro_f1", "test_acc", "majority_macro_f1",
                    "best_val_macro_f1", "score", "loss"]
    rows = _index_rows(tasks_ws)
    cell = {v: dict(zip(cols, (m[0] for m in r["metrics"]))) for v, r in rows.items()}
    assert cell["0.2.0"]["test_macro_f1"] == "0.41" and cell["0.2.0"]["majority_macro_f1"] == "0.06"
    assert cell["0.2.0"]["final_loss"] == "—" and cell["0.2.0"]["score"] == "—"  # not its task's columns
    assert cell["0.1.0"]["test_macro_f1"] == "—" and cell["0.1.0"]["final_loss"] != "—"
    assert cell["0.4.1"]["score"] == "0.9" and cell["0.4.1"]["loss"] == "1.1" and cell["0.4.1"]["best_val_loss"] == "—"
    sort = {v: dict(zip(cols, (m[1] for m in r["metrics"]))) for v, r in rows.items()}
    assert float(sort["0.3.0"]["test_acc"]) == CLASSIFY["0.3.0"]["test_acc"] and sort["0.3.0"]["final_loss"] == ""
    assert {v for v, r in rows.items() if r["best"]} == {"0.1.0", "0.2.1", "0.4.1"}  # higher macro-F1 / score wins
    assert [rows[v]["task"] for v in ("0.1.0", "0.2.0", "0.4.0")] == ["pretrain", "classify", "toy"]

    # a record page's chart data: its task's curves beyond pretraining's; a pretraining record's as it was
    classify = _data_script(tasks_ws, "0.2.0")["curves"]
    assert set(classify["series"]) == {"val_acc", "val_macro_f1"} and classify["series"]["val_acc"]["x"] == [5, 10]
    assert classify["series"]["val_macro_f1"]["y"] == pytest.approx([0.405, 0.41])
    assert "val_loss" in classify and "series" not in _data_script(tasks_ws, "0.1.0")["curves"]
    assert _data_script(tasks_ws, "0.4.0")["curves"]["series"]["score"]["y"] == pytest.approx([0.705, 0.71])
    path = tasks_ws.out_dir(Version.parse("0.2.0")) / "metrics.jsonl"
    counts, text = pages.curves_json(path, 500, ("val_acc", "loss", "val_macro_f1"))
    assert json.loads(text) == pages.curves(path, 500, ("val_acc", "loss", "val_macro_f1")) and pages.is_curves_json(text)
    long = path.parent / "long.jsonl"
    long.write_text("".join(json.dumps({"step": s, "val_acc": s / 1000}) + "\n" for s in range(1, 1001)), encoding="utf-8")
    thinned = pages.curves(long, 100, ("val_acc",))["series"]["val_acc"]
    assert 100 <= len(thinned["x"]) <= 101 and thinned["x"][0] == 1 and thinned["x"][-1] == 1000  # spread evenly, both ends
    assert thinned["y"] == [x / 1000 for x in thinned["x"]]


def test_a_broken_task_declaration_does_not_kill_the_site(tasks_ws, cli):
    pyproject = tasks_ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text(encoding="utf-8").replace('score = "higher"', 'score = "sideways"'), encoding="utf-8")
    r = run_exp("site", "--json", cwd=tasks_ws.root)
    assert r.returncode == 0, r.stderr
    rows = _index_rows(tasks_ws)
    page = (tasks_ws.root / "out/site/index.html").read_text(encoding="utf-8")
    assert 'data-col="score"' not in page and 'data-col="test_macro_f1"' in page
    assert rows["0.4.1"]["task"] == "toy" and rows["0.2.1"]["best"]


def test_a_classification_group_s_page_leads_with_its_task_s_metrics(tasks_ws, cli):
    classify_group(tasks_ws)
    code, out, err = cli("site", "--json")
    assert code == 0, err
    page = (tasks_ws.root / "out/site/g/0.5.0.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="group-data">(.*?)</script>', page, re.S).group(1))
    assert data["metrics"][:2] == ["test_macro_f1", "test_acc"] and data["keys"] == ["label_smoothing"]
    points = {p["version"]: p for p in data["points"]}
    assert points["0.5.2"]["stats"]["test_macro_f1"]["mean"] == 0.61


def test_pages_rendered_by_forked_workers_are_those_of_one_process(two, monkeypatch):
    """Record pages shared among forked workers (as for a thousand records) come out byte for byte
    as one process renders them, and the manifest knows the same pages."""
    monkeypatch.setattr(site, "PARALLEL_FROM", 1)
    site_dir = two.root / "out/site"
    shared = site.build(two, workers=2)
    assert "r/0.1.0.html" in shared["written"] and "r/0.1.1.data.js" in shared["written"]
    forked = {p.relative_to(site_dir): p.read_bytes() for p in site_dir.rglob("*") if p.is_file()}
    shutil.rmtree(site_dir)
    site.build(two, workers=1)
    alone = {p.relative_to(site_dir): p.read_bytes() for p in site_dir.rglob("*") if p.is_file()}
    assert forked == alone and len(forked) >= 8


def test_a_tasks_curves_json_from_analyze_is_what_the_site_draws(tasks_ws, cli, monkeypatch):
    """curves.json of a classification run holds its task's own curves as the site asks for them:
    a cold build copies it (no metrics file thinned) and draws what it drew by thinning."""
    from expkit import catalog, store

    assert cli("site", "--json")[0] == 0
    thinned_here = _data_script(tasks_ws, "0.2.0")["curves"]
    v = Version.parse("0.2.0")
    results.write_curves(tasks_ws.out_dir(v), catalog.task_of(tasks_ws, store.read_meta(tasks_ws, v)))
    assert (tasks_ws.out_dir(v) / "curves.json").is_file()
    thinned: list[str] = []
    real = pages.curves_json
    monkeypatch.setattr(pages, "curves_json", lambda path, *a: thinned.append(path.parent.name) or real(path, *a))
    shutil.rmtree(tasks_ws.root / "out/site")
    assert cli("site", "--json")[0] == 0
    assert "experiment_0.2.0" not in thinned and "experiment_0.4.0" in thinned
    assert _data_script(tasks_ws, "0.2.0")["curves"] == thinned_here and "val_acc" in thinned_here["series"]

"""Several records at once: exp compare, exp diff, exp report, exp tree.

Runs here are the files a finished run leaves (metrics.jsonl, summary.json, samples.json)
written from known curves, then analysed by the real `exp analyze`: the report is about
reading records, not about training (tests/test_loop.py trains for real).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess

import pytest
from conftest import fill, run_exp

from expkit import reporting, results
from expkit.report import REPORT_COLUMNS
from expkit.version import Version
from expkit import catalog, lifecycle, records

EXPECTED = {"goal": "比较学习率。", "hypothesis": "学习率越低越稳。", "expected": "- val_loss < 5\n- best_val_loss <= parent - 0.05\n",
            "focus": "曲线。"}


def fake_run(ws, version: str, final: float, lr: float = 3e-3, steps: int = 40, git_sha: str | None = None,
             env: dict | None = None) -> None:
    """A record whose run finished with a loss decaying to ``final``; then `exp analyze`."""
    v = Version.parse(version)
    out = ws.out_dir(v)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(1, steps + 1):
        loss = final + 4.0 * math.exp(-s / 8)
        row = {"step": s, "loss": loss, "lr": lr, "grad_norm": 0.5, "tokens_per_s": 1000.0, "tokens_seen": s * 512,
               "elapsed_s": s * 0.5}
        if s % 10 == 0:
            row["val_loss"] = loss + 0.02
        rows.append(row)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    last = rows[-1]
    summary = {"status": "finished", "steps": steps, "final_loss": last["loss"], "best_val_loss": last["val_loss"],
               "val_loss": last["val_loss"], "tokens_seen": last["tokens_seen"], "wall_s": last["elapsed_s"],
               "tokens_per_s": 1000.0, "params": 1000}
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    with records.update(ws, v) as r:
        r.meta["config"]["learning_rate"] = lr
        r.meta["config"]["max_steps"] = steps
        r.meta["config"]["warmup_steps"] = 4  # below max_steps: the config stays valid for `exp new --from`
        r.meta["run"] = {"status": "finished", "exit_code": 0, "git_sha": git_sha, "git_dirty": False,
                         "env": env or {"python": "3.11.7", "torch": "2.13.0+cpu"}}
        r.meta["status"] = "finished"
    results.analyze(ws, v)


def new(ws, version: str, parent: str | None = None, desc: str = "") -> None:
    rec = lifecycle.create(ws, Version.parse(version), parent=Version.parse(parent) if parent else None, description=desc)
    fill(rec.path, EXPECTED)


@pytest.fixture
def lineage(ws):
    """0.1.0 (val ≈ 5.02) → 0.1.1 (lr halved, val ≈ 4.52) and 0.1.2 (never run); 0.2.0 alone (≈ 4.82)."""
    new(ws, "0.1.0", desc="base")
    fake_run(ws, "0.1.0", 5.0)
    new(ws, "0.1.1", "0.1.0", desc="half lr")
    fake_run(ws, "0.1.1", 4.5, lr=1.5e-3)
    new(ws, "0.1.2", "0.1.0", desc="not run")
    new(ws, "0.2.0", desc="other direction")
    fake_run(ws, "0.2.0", 4.8)
    return ws


def table(ws, version: str) -> dict:
    return records.load(ws, Version.parse(version)).meta["analysis"]["metrics"]


# -- exp compare ---------------------------------------------------------------------------------------
def test_compare_lists_only_differing_config_and_deltas_against_the_first(lineage, cli, tmp_path):
    png = tmp_path / "cmp.png"
    code, out, err = cli("compare", "0.1.0", "0.1.1", "0.2.0", "--plot", str(png), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["reference"] == "0.1.0" and r["labels"] == ["0.1.0", "0.1.1", "0.2.0"]
    assert set(r["config_diff"]) == {"learning_rate"}
    assert r["config_diff"]["learning_rate"] == {"0.1.0": 3e-3, "0.1.1": 1.5e-3, "0.2.0": 3e-3}
    a, b = table(lineage, "0.1.0"), table(lineage, "0.1.1")
    d = r["deltas"]["0.1.1"]["val_loss"]
    assert d["abs"] == pytest.approx(b["val_loss"] - a["val_loss"])
    assert d["rel"] == pytest.approx((b["val_loss"] - a["val_loss"]) / a["val_loss"])
    assert "0.1.0" not in r["deltas"]
    assert png.read_bytes().startswith(b"\x89PNG") and r["plot"] == str(png)
    code, text, _ = cli("compare", "0.1.0", "0.1.1")
    assert code == 0 and "learning_rate" in text and "(ref)" in text and "val_loss" in text


def test_compare_refuses_a_record_without_a_run_and_bad_arguments(lineage):
    r = run_exp("compare", "0.1.0", "0.1.2", cwd=lineage.root)
    assert r.returncode == 1 and "0.1.2 has no run results" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    one = run_exp("compare", "0.1.0", cwd=lineage.root)
    assert one.returncode == 2 and "at least two" in one.stderr
    twice = run_exp("compare", "0.1.0", "0.1.0", cwd=lineage.root)
    assert twice.returncode == 2 and "given twice" in twice.stderr
    missing = run_exp("compare", "0.1.0", "9.9.9", cwd=lineage.root)
    assert missing.returncode == 1 and "no experiment 9.9.9" in missing.stderr


# -- exp diff -------------------------------------------------------------------------------------------
def test_diff_shows_config_environment_script_code_and_metrics(ws, cli):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=ws.root, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    (ws.root / "model_change.py").write_text("x = 1\ny = 2\n", encoding="utf-8")
    git("add", "model_change.py")
    git("commit", "-qm", "two")
    second = git("rev-parse", "HEAD")
    new(ws, "0.1.0")
    fake_run(ws, "0.1.0", 5.0, git_sha=first)
    new(ws, "0.1.1", "0.1.0")
    fake_run(ws, "0.1.1", 4.5, lr=1e-3, git_sha=second, env={"python": "3.11.7", "torch": "2.14.0+cpu"})
    for v, lr in (("0.1.0", "0.003"), ("0.1.1", "0.001")):
        path = ws.run_script_path(v)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/usr/bin/env bash\nVERSION={v}\nLR={lr}\n", encoding="utf-8")  # as `exp run` renders

    code, out, err = cli("diff", "0.1.0", "0.1.1", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["config"] == {"learning_rate": [3e-3, 1e-3]}
    assert r["environment"] == {"torch": ["2.13.0+cpu", "2.14.0+cpu"]}
    assert "-LR=0.003" in r["script"]["diff"] and "+LR=0.001" in r["script"]["diff"]
    assert r["code"]["a"] == first and r["code"]["b"] == second and r["code"]["same"] is False
    assert r["code"]["files"] == 1 and "model_change.py" in r["code"]["stat"]
    assert r["metrics"]["val_loss"]["abs"] == pytest.approx(table(ws, "0.1.1")["val_loss"] - table(ws, "0.1.0")["val_loss"])
    code, text, _ = cli("diff", "0.1.0", "0.1.1")
    for part in ("[config]", "[environment]", "[code]", "model_change.py", "[metrics]", "[script]", "+LR=0.001"):
        assert part in text, part


def test_diff_of_records_without_runs_says_so(ws, cli):
    new(ws, "0.1.0")
    new(ws, "0.1.1", "0.1.0")
    code, out, _ = cli("diff", "0.1.0", "0.1.1", "--json")
    r = json.loads(out)
    assert code == 0 and r["config"] == {} and r["metrics"] == {}
    assert "0.1.0 has no run results" in r["metrics_note"] and "no run script" in r["script"]["note"]
    assert "git revision" in r["code"]["note"]


# -- exp report -----------------------------------------------------------------------------------------
def test_report_writes_markdown_csv_and_pngs(lineage, cli):
    code, out, err = cli("report", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["records"] == 4 and r["by_status"] == {"analyzed": 3, "draft": 1}
    md = (lineage.experiment_dir / "EXPERIMENT_REPORT.md").read_text(encoding="utf-8")
    for version, desc in (("0.1.0", "base"), ("0.1.1", "half lr"), ("0.1.2", "not run"), ("0.2.0", "other direction")):
        assert f"| {version} |" in md and desc in md
    assert "learning_rate=0.0015" in md  # the change against the parent
    best = min(("0.1.0", "0.1.1", "0.2.0"), key=lambda v: table(lineage, v)["best_val_loss"])
    best_line = [ln for ln in md.splitlines() if ln.startswith("| best_val_loss |")]
    assert best == "0.1.1" and len(best_line) == 1 and best_line[0].endswith("| 0.1.1 |")
    assert "  - 0.1.1 half lr (analyzed)" in md  # lineage
    with open(lineage.experiment_dir / "experiment_tracker.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == REPORT_COLUMNS and [row[0] for row in rows[1:]] == ["0.1.0", "0.1.1", "0.1.2", "0.2.0"]
    by = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert float(by["0.1.1"]["val_loss"]) == table(lineage, "0.1.1")["val_loss"]
    assert by["0.1.2"]["val_loss"] == ""  # never ran
    pngs = {p for p in r["plots"]}
    assert pngs == {"experiment/report/val_loss_by_version.png", "experiment/report/lineage_0.1.0.png"}
    for p in pngs:
        assert (lineage.root / p).read_bytes().startswith(b"\x89PNG")
        assert f"]({p.removeprefix('experiment/')})" in md


def test_report_redraws_a_lineage_plot_only_when_its_runs_change(lineage):
    reporting.report(lineage)
    png = lineage.experiment_dir / "report" / "lineage_0.1.0.png"
    first = png.stat().st_mtime_ns
    reporting.report(lineage)
    assert png.stat().st_mtime_ns == first  # nothing changed: not redrawn
    metrics = lineage.out_dir("0.1.1") / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + json.dumps({"step": 41, "loss": 4.4}) + "\n")
    reporting.report(lineage)
    assert png.stat().st_mtime_ns != first


def test_report_of_an_empty_workspace_and_of_a_broken_record(ws, cli):
    code, out, _ = cli("report")
    assert code == 0 and "0 experiment(s)" in out
    new(ws, "0.1.0")
    ws.record_path("0.1.1").write_text("no front matter\n", encoding="utf-8")
    code, out, err = cli("report", "--json")
    assert code == 0, err
    assert json.loads(out)["by_status"] == {"broken": 1, "draft": 1}


# -- exp tree ---------------------------------------------------------------------------------------------
def test_tree_shows_verdicts_and_the_best_loss(lineage, cli):
    code, out, _ = cli("tree", "--json")
    nodes = {n["version"]: n for n in json.loads(out)}
    assert set(nodes) == {"0.1.0", "0.2.0"}
    child = {c["version"]: c for c in nodes["0.1.0"]["children"]}
    assert set(child) == {"0.1.1", "0.1.2"}
    a = records.load(lineage, Version.parse("0.1.1")).meta["analysis"]
    assert child["0.1.1"]["verdicts"] == a["verdict_counts"]
    assert child["0.1.1"]["metric"] == {"name": "best_val_loss", "value": a["metrics"]["best_val_loss"]}
    assert child["0.1.1"]["best"] and not nodes["0.1.0"]["best"] and not nodes["0.2.0"]["best"]
    assert child["0.1.2"]["verdicts"] is None and child["0.1.2"]["metric"] is None
    code, text, _ = cli("tree")
    line = next(ln for ln in text.splitlines() if "0.1.1" in ln)
    c = a["verdict_counts"]
    assert f"✓{c['confirmed']} ✗{c['refuted']} ?{c['inconclusive']}" in line and "★" in line and "half lr" in line


def test_report_rows_are_cached_and_a_changed_record_is_read_again(lineage):
    reporting.report(lineage)
    cache = lineage.cache_dir() / catalog.CACHE_FILE
    assert len(json.loads(cache.read_text(encoding="utf-8"))["rows"]) == 4
    with records.update(lineage, Version.parse("0.2.0")) as r:
        r.meta["description"] = "renamed direction"
    reporting.report(lineage)
    md = (lineage.experiment_dir / reporting.REPORT_MD).read_text(encoding="utf-8")
    assert "renamed direction" in md and "other direction" not in md
    cache.write_text('{"layout": [0, []], "rows": {"experiment_0.1.0.md": {"stamp": [0, 0], "row": {}}}}')
    assert [r["version"] for r in catalog.rows(lineage)] == ["0.1.0", "0.1.1", "0.1.2", "0.2.0"]
    lineage.record_path("0.1.2").unlink()
    assert [n["version"] for n in reporting.tree(lineage)[0]["children"]] == ["0.1.1"]


def test_a_second_report_or_listing_reads_no_record_again(lineage, monkeypatch):
    reporting.report(lineage)
    reads = []
    monkeypatch.setattr(catalog, "_row", lambda ws, version: reads.append(version) or {})
    reporting.report(lineage)
    listed = catalog.list_records(lineage)
    assert reads == []  # every row came from the cache
    assert [r["version"] for r in listed] == ["0.1.0", "0.1.1", "0.1.2", "0.2.0"]


def test_rows_without_one_record_neither_read_it_nor_forget_its_change(lineage, monkeypatch):
    """`exp analyze V` asks about the other records (same-config noise): V itself, just written,
    is neither read nor rewritten into the cache; the next full listing still sees its change."""
    catalog.rows(lineage)
    cache = lineage.cache_dir() / catalog.CACHE_FILE
    before = cache.read_bytes()
    with records.update(lineage, Version.parse("0.2.0")) as r:
        r.meta["description"] = "renamed while being analysed"
    reads = []
    real_row = catalog._row
    monkeypatch.setattr(catalog, "_row", lambda ws, version: reads.append(version) or real_row(ws, version))
    others = catalog.rows(lineage, exclude="0.2.0")
    assert [r["version"] for r in others] == ["0.1.0", "0.1.1", "0.1.2"] and reads == []
    assert cache.read_bytes() == before  # nothing read, nothing to write
    listed = {r["version"]: r for r in catalog.rows(lineage)}
    assert reads == ["0.2.0"] and listed["0.2.0"]["description"] == "renamed while being analysed"


def test_diff_says_when_two_runs_trained_with_different_code(lineage, cli):
    with records.update(lineage, Version.parse("0.1.0")) as r:
        r.meta["run"] = {**(r.meta.get("run") or {}), "code": {"location": "/src/lab", "git_sha": "a" * 40, "dirty": False}}
    with records.update(lineage, Version.parse("0.1.1")) as r:
        r.meta["run"] = {**(r.meta.get("run") or {}), "code": {"location": "/src/lab", "git_sha": "a" * 40, "dirty": True}}
    trainer = reporting.diff_records(lineage, Version.parse("0.1.0"), Version.parse("0.1.1"))["code"]["trainer"]
    assert trainer["same"] is False and "uncommitted changes" in trainer["note"] and "code.diff" in trainer["b"]
    code, out, _ = cli("diff", "0.1.0", "0.1.1")
    assert code == 0 and "trainer code" in out and "⚠ the same revision, but with uncommitted changes" in out
    trainer = reporting.diff_records(lineage, Version.parse("0.1.0"), Version.parse("0.1.2"))["code"]["trainer"]
    assert trainer["same"] is None and trainer["note"] == "0.1.2 has not run yet"


# -- records of several tasks: pretraining, classification, a task the workspace declares -----------------
TOY = '\n[tool.exp.tasks.toy]\ncommand = "python toy.py --config {config} --out-dir {out_dir}"\nmetrics = { score = "higher", loss = "lower" }\n'
#: What each classification record's analysis holds (the keys the classification analysis stores).
CLASSIFY = {
    "0.2.0": {"test_acc": 0.52, "test_macro_f1": 0.41, "test_weighted_f1": 0.5, "test_loss": 1.4, "majority_acc": 0.3,
              "majority_macro_f1": 0.06, "val_acc": 0.5, "val_macro_f1": 0.4, "best_val_macro_f1": 0.43, "val_loss": 1.45,
              "loss": 1.2, "steps": 60, "wall_s": 12.0},
    "0.2.1": {"test_acc": 0.49, "test_macro_f1": 0.47, "test_weighted_f1": 0.48, "test_loss": 1.5, "majority_acc": 0.3,
              "majority_macro_f1": 0.06, "val_acc": 0.47, "val_macro_f1": 0.45, "best_val_macro_f1": 0.46, "val_loss": 1.5,
              "loss": 1.1, "steps": 60, "wall_s": 13.0},
    "0.3.0": {"test_acc": 0.58, "test_macro_f1": 0.22, "test_weighted_f1": 0.4, "test_loss": 1.3, "majority_acc": 0.3,
              "majority_macro_f1": 0.06, "val_acc": 0.55, "val_macro_f1": 0.2, "best_val_macro_f1": 0.25, "val_loss": 1.35,
              "loss": 1.0, "steps": 60, "wall_s": 11.0},
}
TOY_RUNS = {"0.4.0": {"score": 0.7, "loss": 0.9, "steps": 5}, "0.4.1": {"score": 0.9, "loss": 1.1, "steps": 5}}


def fake_analysis(ws, version: str, metrics: dict, init_from: str | None = None, replicates: list | None = None) -> None:
    """An analysed record of any task as the analysis leaves it in the state: its metric table,
    its verdicts, and a metrics.jsonl with the task's curves."""
    v = Version.parse(version)
    out = ws.out_dir(v)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, 11):
        line = {"step": step, "loss": 2.0 - step * 0.1}
        if step % 5 == 0:
            line.update({k: metrics[k] + step * 0.001 for k in ("val_loss", "val_acc", "val_macro_f1", "score") if k in metrics})
        lines.append(line)
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    with records.update(ws, v) as r:
        if init_from is not None:
            r.meta["config"]["init_from"] = init_from
        r.meta["status"] = "analyzed"
        r.meta["run"] = {"status": "finished", "exit_code": 0}
        r.meta["analysis"] = {"metrics": metrics, "run_status": "finished", "replicates": replicates,
                              "verdicts": [{"claim": "- x", "verdict": "confirmed"}, {"claim": "- y", "verdict": "refuted"}]}


def new_task(ws, version: str, task: str, parent: str | None = None, desc: str = "") -> None:
    rec = lifecycle.create(ws, Version.parse(version), parent=Version.parse(parent) if parent else None, description=desc,
                           task=None if parent else task)
    fill(rec.path, EXPECTED)


@pytest.fixture
def tasks_ws(ws):
    """0.1.0 pretraining (val ≈ 5.02); classification 0.2.0 (init_from 0.1.0) → 0.2.1 (best macro-F1),
    0.3.0 from scratch (best accuracy, worst macro-F1); the declared task toy: 0.4.0 and 0.4.1 (best score)."""
    pyproject = ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text(encoding="utf-8") + TOY, encoding="utf-8")
    from expkit.workspace import Workspace

    ws = Workspace.find()
    new(ws, "0.1.0", desc="base")
    fake_run(ws, "0.1.0", 5.0)
    new_task(ws, "0.2.0", "classify", desc="fine-tune")
    fake_analysis(ws, "0.2.0", CLASSIFY["0.2.0"], init_from="0.1.0")
    new_task(ws, "0.2.1", "classify", parent="0.2.0", desc="focal")
    reps = [{**CLASSIFY["0.2.1"], "test_macro_f1": x} for x in (0.46, 0.47, 0.48)]
    fake_analysis(ws, "0.2.1", CLASSIFY["0.2.1"], init_from="0.1.0", replicates=reps)
    new_task(ws, "0.3.0", "classify", desc="scratch")
    fake_analysis(ws, "0.3.0", CLASSIFY["0.3.0"])
    for v, m in TOY_RUNS.items():
        new_task(ws, v, "toy", desc=f"toy {v}")
        fake_analysis(ws, v, m)
    return ws


def tracker(ws) -> list[dict]:
    with open(ws.experiment_dir / reporting.TRACKER_CSV, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}


def test_the_tracker_csv_has_a_task_column_and_each_task_s_key_metrics(tasks_ws, cli):
    code, out, err = cli("report", "--json")
    assert code == 0, err
    assert json.loads(out)["by_status"] == {"analyzed": 6}
    header, by = tracker(tasks_ws)
    # pretraining's columns where they always were, then the task, where the model starts, the other tasks' metrics
    assert tuple(header[: len(REPORT_COLUMNS)]) == REPORT_COLUMNS
    extra = header[len(REPORT_COLUMNS):]
    assert extra[:2] == ["task", "init_from"]
    for m in ("test_macro_f1", "test_acc", "majority_macro_f1", "best_val_macro_f1", "score", "loss"):
        assert m in extra, m
    assert extra.index("test_macro_f1") < extra.index("score") and "test_macro_f1_sd" in extra and "score_sd" in extra
    assert "val_loss" not in extra  # a name pretraining has keeps pretraining's column
    assert [by[v]["task"] for v in ("0.1.0", "0.2.0", "0.2.1", "0.3.0", "0.4.0")] == ["pretrain", "classify", "classify", "classify", "toy"]
    assert float(by["0.2.0"]["test_macro_f1"]) == CLASSIFY["0.2.0"]["test_macro_f1"]
    assert float(by["0.2.0"]["majority_macro_f1"]) == CLASSIFY["0.2.0"]["majority_macro_f1"]
    assert float(by["0.2.0"]["val_loss"]) == CLASSIFY["0.2.0"]["val_loss"]
    assert by["0.2.0"]["init_from"] == "0.1.0" and by["0.3.0"]["init_from"] == "" and by["0.1.0"]["init_from"] == ""
    assert float(by["0.4.1"]["score"]) == TOY_RUNS["0.4.1"]["score"] and by["0.4.1"]["test_acc"] == ""
    assert by["0.1.0"]["test_macro_f1"] == "" and float(by["0.1.0"]["val_loss"]) == table(tasks_ws, "0.1.0")["val_loss"]
    # replicates: the sd over them, as pretraining's _sd columns
    assert float(by["0.2.1"]["test_macro_f1_sd"]) == pytest.approx(0.01) and by["0.2.1"]["n"] == "3"
    assert by["0.2.0"]["test_macro_f1_sd"] == ""


def test_a_pretraining_only_tracker_keeps_its_columns(lineage):
    reporting.report(lineage, plots=False)
    header, _ = tracker(lineage)
    assert tuple(header) == REPORT_COLUMNS


def test_the_report_shows_each_task_s_metrics_and_its_best_by_its_own_direction(tasks_ws):
    reporting.report(tasks_ws, plots=False)
    md = (tasks_ws.experiment_dir / reporting.REPORT_MD).read_text(encoding="utf-8")
    sections = md.split("\n### ")
    overview = {s.split("\n", 1)[0]: s for s in sections}
    classify = next(s for h, s in overview.items() if h.startswith("任务 classify"))
    head = next(ln for ln in classify.splitlines() if ln.startswith("| 版本"))
    assert "test_macro_f1" in head and "majority_macro_f1" in head and "final_loss" not in head
    row = next(ln for ln in classify.splitlines() if ln.startswith("| 0.2.0 |"))
    assert "| 0.41 |" in row and "| 0.06 |" in row and "init_from 0.1.0" in row
    assert "0.47 ± 0.01 (n=3)" in next(ln for ln in classify.splitlines() if ln.startswith("| 0.2.1 |"))
    pretrain = next(s for h, s in overview.items() if h.startswith("任务 pretrain"))
    assert "| 0.1.0 |" in pretrain and "final_loss" in pretrain and "| 0.2.0 |" not in pretrain
    toy = next(s for h, s in overview.items() if h.startswith("任务 toy"))
    assert "| score | loss |" in toy and "| 0.4.1 |" in toy

    best = md.split("## 各指标最佳")[1].split("\n## ")[0]
    by_task = {s.split("\n", 1)[0]: s for s in best.split("### ")[1:]}
    # higher is better for macro-F1 and accuracy: the maximum; the majority baseline is not ranked
    assert "| test_macro_f1 | 0.47 | 0.2.1 |" in by_task["classify"]
    assert "| test_acc | 0.58 | 0.3.0 |" in by_task["classify"]
    assert "majority_macro_f1" not in by_task["classify"]
    assert "按 test_macro_f1 的最佳实验（越高越好）：0.2.1" in by_task["classify"]
    assert "| score | 0.9 | 0.4.1 |" in by_task["toy"] and "| loss | 0.9 | 0.4.0 |" in by_task["toy"]
    assert f"| best_val_loss | {pages_shown(table(tasks_ws, '0.1.0')['best_val_loss'])} | 0.1.0 |" in by_task["pretrain"]
    assert "test_macro_f1" not in by_task["pretrain"]

    lineage_part = md.split("## 谱系")[1].split("\n## ")[0]
    assert "- 0.2.0 [classify] fine-tune (analyzed) ← init_from 0.1.0" in lineage_part
    assert "  - 0.2.1 [classify] focal (analyzed) ← init_from 0.1.0" in lineage_part
    assert "- 0.3.0 [classify] scratch (analyzed)\n" in lineage_part and "- 0.1.0 base (analyzed)\n" in lineage_part


def pages_shown(value) -> str:
    from expkit.report import _md_cell

    return _md_cell(value)


def test_the_tree_marks_the_best_record_of_each_task(tasks_ws, cli):
    code, out, _ = cli("tree", "--json")
    nodes = {n["version"]: n for n in json.loads(out)}
    nodes.update({c["version"]: c for n in list(nodes.values()) for c in n["children"]})
    assert {v for v, n in nodes.items() if n["best"]} == {"0.1.0", "0.2.1", "0.4.1"}
    assert nodes["0.2.1"]["metric"] == {"name": "test_macro_f1", "value": CLASSIFY["0.2.1"]["test_macro_f1"]}
    assert nodes["0.4.0"]["metric"] == {"name": "score", "value": 0.7}
    assert nodes["0.2.0"]["task"] == "classify" and nodes["0.2.0"]["init_from"] == "0.1.0" and nodes["0.1.0"]["task"] == "pretrain"
    code, text, _ = cli("tree")
    line = next(ln for ln in text.splitlines() if ln.startswith("0.2.0"))
    assert "0.2.0 [analyzed] classify" in line and "test_macro_f1 0.41" in line and line.endswith("← init_from 0.1.0")
    assert "★" in next(ln for ln in text.splitlines() if "0.2.1" in ln) and "★" not in line


def test_a_broken_task_declaration_does_not_kill_the_report(tasks_ws, cli):
    pyproject = tasks_ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text(encoding="utf-8").replace('score = "higher"', 'score = "sideways"'), encoding="utf-8")
    r = run_exp("report", "--json", cwd=tasks_ws.root)
    assert r.returncode == 0, r.stderr
    header, by = tracker(tasks_ws)
    assert by["0.4.1"]["task"] == "toy" and "score" not in header  # its table is unknown: the generic columns only
    assert by["0.2.0"]["test_macro_f1"] != ""  # the other tasks are as they were
    md = (tasks_ws.experiment_dir / reporting.REPORT_MD).read_text(encoding="utf-8")
    toy = md.split("### 任务 toy")[1].split("\n### ")[0]
    assert "任务 toy 的声明无法读取" in toy and "| 0.4.1 |" in toy and "final_loss" in toy
    code, out, err = cli("tree", "--json")
    assert code == 0, err


def classify_group(ws) -> None:
    """0.5.0, a classification group: 0.5.1 (macro-F1 0.52) and 0.5.2 (0.61, and the higher val_loss)."""
    new_task(ws, "0.5.0", "classify", desc="loss sweep")
    for v, f1 in (("0.5.1", 0.52), ("0.5.2", 0.61)):
        new_task(ws, v, "classify", parent="0.5.0", desc=f"member {v}")
        fake_analysis(ws, v, {**CLASSIFY["0.2.0"], "test_macro_f1": f1, "val_loss": 1.0 + f1})
        with records.update(ws, Version.parse(v)) as r:
            r.meta["group"], r.meta["changes"] = "0.5.0", {"label_smoothing": f1 / 10}
            r.meta["config"]["label_smoothing"] = f1 / 10


def test_a_classification_group_ranks_its_members_by_macro_f1_higher_is_better(tasks_ws):
    from expkit import grouping

    classify_group(tasks_ws)
    parent = records.load(tasks_ws, Version.parse("0.5.0"))
    metas = {v: records.load(tasks_ws, Version.parse(v)).meta for v in ("0.5.1", "0.5.2")}
    result = grouping.compute(tasks_ws, parent, metas)
    assert result["key_metrics"] == ["test_macro_f1", "test_acc", "majority_macro_f1", "best_val_macro_f1"]
    assert result["best"]["metric"] == "test_macro_f1" and result["best"]["version"] == "0.5.2"
    assert result["best"]["runner_up"] == "0.5.1"
    members = {m["version"]: m for m in result["members"]}
    assert members["0.5.2"]["stats"]["test_macro_f1"]["mean"] == 0.61 and "val_loss" not in members["0.5.2"]["stats"]

    reporting.report(tasks_ws, plots=False)
    md = (tasks_ws.experiment_dir / reporting.REPORT_MD).read_text(encoding="utf-8")
    group = md.split("### 0.5.0")[1].split("\n## ")[0]
    assert "test_macro_f1（均值 ± sd）" in group and "| 0.5.2 | analyzed | label_smoothing=0.061 | 1 | 0.61 | 0.52 |" in group


def test_compare_says_better_or_worse_in_each_record_s_task_direction(tasks_ws, cli):
    code, out, err = cli("compare", "0.2.0", "0.2.1", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["tasks"] == {"0.2.0": "classify", "0.2.1": "classify"}
    b = r["better"]["0.2.1"]
    assert b["test_macro_f1"] is True and b["test_acc"] is False  # higher is better: 0.41 → 0.47, 0.52 → 0.49
    assert b["val_loss"] is False and b["test_loss"] is False  # lower is better: both rose
    assert b["majority_acc"] is None and b["steps"] is None  # the same value; a count has no direction
    code, text, _ = cli("compare", "0.2.0", "0.2.1")
    line = next(ln for ln in text.splitlines() if ln.startswith("test_macro_f1"))
    assert "better" in line and "worse" in next(ln for ln in text.splitlines() if ln.startswith("test_acc "))
    new(tasks_ws, "0.1.1", "0.1.0", desc="half lr")
    fake_run(tasks_ws, "0.1.1", 4.5, lr=1.5e-3)
    r = json.loads(cli("compare", "0.1.0", "0.1.1", "--json")[1])
    assert r["better"]["0.1.1"]["val_loss"] is True and r["tasks"]["0.1.1"] == "pretrain"  # pretraining's sets, as before

"""exp analyze, exp fill, exp context and the evidence check on one record.

A run here is the set of files a finished (or killed) trainer leaves, written from known
numbers, so every expected value below follows from the inputs. tests/test_whole_loop.py
does the same through a real training run.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import fill, run_exp

from expkit import record as rec_mod
from expkit import results, store
from expkit.version import Version

V = Version.parse("0.1.0")
HUMAN = {
    "goal": "检验分析。",
    "hypothesis": "损失会下降。",
    "expected": "预期：\n- val_loss < 6\n- final_loss > 7\n- mfu > 0.5\n- val_loss <= parent - 0.1\n",
    "focus": "曲线。",
}


def write_run(ws, version=V, steps: int = 40, final: float = 5.0, val_every: int = 10, summary: bool = True,
              nan_at: int | None = None, torn: bool = False) -> list[dict]:
    out = ws.out_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(1, steps + 1):
        loss = final + 3.0 * math.exp(-s / 6)
        row = {"step": s, "loss": loss, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 800.0, "tokens_seen": 256 * s,
               "elapsed_s": 0.25 * s}
        if s % val_every == 0:
            row["val_loss"] = loss + 0.01
        if nan_at is not None and s >= nan_at:
            row["loss"] = None  # the trainer writes a non-finite loss as null
        rows.append(row)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"step": 41, "loss": 4.9'  # killed mid-line
    (out / "metrics.jsonl").write_text(text, encoding="utf-8")
    if summary:
        last = rows[-1]
        (out / "summary.json").write_text(json.dumps({
            "status": "finished", "steps": steps, "final_loss": last["loss"], "val_loss": rows[-1].get("val_loss"),
            "best_val_loss": min(r["val_loss"] for r in rows if "val_loss" in r), "tokens_seen": last["tokens_seen"],
            "wall_s": last["elapsed_s"], "tokens_per_s": 800.0, "params": 4242}), encoding="utf-8")
    (out / "samples.json").write_text(json.dumps({"samples": [
        {"prompt": "人生", "mode": "greedy", "completion": "如梦如梦如梦如梦"},
        {"prompt": "Life", "mode": "sample", "completion": " is what happens while you plan"}]}, ensure_ascii=False),
        encoding="utf-8")
    return rows


def ran(ws, version=V, status: str = "finished", **run_kw) -> list[dict]:
    rows = write_run(ws, version, **run_kw)
    with store.update(ws, version) as r:
        r.meta["config"]["max_steps"] = run_kw.get("steps", 40)
        r.meta["config"]["warmup_steps"] = 4
        r.meta["run"] = {"status": status, "exit_code": 0 if status == "finished" else 137}
        r.set_status(status)
    return rows


@pytest.fixture
def rec(ws):
    """Record 0.1.0 with the human sections filled; its parent 0.0.1 exists but never ran."""
    store.create(ws, Version.parse("0.0.1"), description="parent")
    r = store.create(ws, V, parent=Version.parse("0.0.1"), description="analysis test")
    fill(r.path, HUMAN)
    return ws


def human_blocks(path) -> dict[str, str]:
    record = rec_mod.Record.read(path)
    return {b.name: b.render() for b in record.blocks("human")}


def test_analyze_writes_verdicts_metrics_plots_and_drafts_without_touching_human_text(rec, cli):
    rows = ran(rec)
    path = rec.record_path(V)
    human_before = human_blocks(path)
    code, out, err = cli("analyze", "0.1.0", "--json")
    assert code == 0, err
    r = json.loads(out)
    val = rows[-1]["val_loss"]
    final = rows[-1]["loss"]
    by_claim = {v["claim"]: v for v in r["verdicts"]}
    assert by_claim["val_loss < 6"]["verdict"] == "confirmed" and by_claim["val_loss < 6"]["observed"] == pytest.approx(val)
    assert by_claim["final_loss > 7"]["verdict"] == "refuted" and by_claim["final_loss > 7"]["observed"] == pytest.approx(final)
    assert by_claim["mfu > 0.5"]["verdict"] == "inconclusive" and "mfu" in by_claim["mfu > 0.5"]["reason"]
    assert by_claim["val_loss <= parent - 0.1"]["verdict"] == "inconclusive"
    assert "parent has no run" in by_claim["val_loss <= parent - 0.1"]["reason"]
    assert r["verdict_counts"] == {"confirmed": 1, "refuted": 1, "inconclusive": 2}

    record = store.load(rec, V)
    assert record.status == "analyzed"
    assert human_blocks(path) == human_before  # byte for byte
    metrics = record.block("generated", "metrics").text
    assert "`val_loss < 6`" in metrics and "../out/experiment_0.1.0/plots/loss.png" in metrics and "人生" in metrics
    assert (rec.out_dir(V) / "plots" / "loss.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((rec.out_dir(V) / "analysis.json").read_text(encoding="utf-8"))
    assert saved["verdict_counts"] == r["verdict_counts"] and len(saved["samples_detail"]) == 2
    assert json.loads((rec.out_dir(V) / "metrics_summary.json").read_text())["val_loss"] == pytest.approx(val)
    for name in rec_mod.AI:
        text = record.block("ai", name).text
        assert text.strip() and not rec_mod.HINT_RE.match(text)  # drafted
    assert results.untraceable(record) == []  # the drafts cite only evidence

    code, out, _ = cli("show", "0.1.0", "--json")
    shown = json.loads(out)["verdicts"]
    assert [(v["claim"], v["verdict"], v["observed"], v["reference"]) for v in shown] == [
        (v["claim"], v["verdict"], v["observed"], v["reference"]) for v in r["verdicts"]]


def test_a_parent_with_a_run_gives_deltas_config_diff_overlay_and_a_decided_verdict(rec):
    parent = Version.parse("0.0.1")
    parent_rows = ran(rec, parent, final=5.5)
    results.analyze(rec, parent)
    rows = ran(rec, final=5.0)
    with store.update(rec, V) as r:
        r.meta["config"]["learning_rate"] = 1e-3
    r = results.analyze(rec, V)
    claim = next(v for v in r["verdicts"] if v["claim"] == "val_loss <= parent - 0.1")
    assert claim["verdict"] == "confirmed"
    assert claim["reference"] == pytest.approx(parent_rows[-1]["val_loss"] - 0.1)
    ref = store.load(rec, V).meta["analysis"]["references"]["parent"]
    assert ref["version"] == "0.0.1" and ref["config_diff"] == {"learning_rate": [3e-3, 1e-3]}
    assert ref["deltas"]["val_loss"]["abs"] == pytest.approx(rows[-1]["val_loss"] - parent_rows[-1]["val_loss"])
    assert "out/experiment_0.1.0/plots/compare.png" in r["plots"]


def test_reanalysis_keeps_refined_prose_and_redrafts_the_rest(rec):
    ran(rec)
    results.analyze(rec, V)
    draft = store.load(rec, V).block("ai", "diagnosis").text
    r = run_exp("fill", "0.1.0", "analysis", "--file", "-", cwd=rec.root, input="训练损失持续下降。\n")
    assert r.returncode == 0, r.stderr
    again = results.analyze(rec, V)
    record = store.load(rec, V)
    assert record.block("ai", "analysis").text == "训练损失持续下降。"
    assert again["kept"] == ["analysis"] and set(again["drafted"]) == {"diagnosis", "suggestions"}
    assert record.block("ai", "diagnosis").text == draft


def test_fill_refuses_human_and_generated_sections_and_leaves_the_file_unchanged(rec, tmp_path):
    ran(rec)
    results.analyze(rec, V)
    path = rec.record_path(V)
    before = path.read_bytes()
    text = tmp_path / "t.md"
    text.write_text("新的目的。\n", encoding="utf-8")
    for section, code, words in (("goal", 1, "human section"), ("metrics", 1, "generated"), ("nope", 2, "no section")):
        r = run_exp("fill", "0.1.0", section, "--file", str(text), cwd=rec.root)
        assert r.returncode == code and words in r.stderr, (section, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert path.read_bytes() == before
    text.write_text("   \n", encoding="utf-8")
    assert run_exp("fill", "0.1.0", "analysis", "--file", str(text), cwd=rec.root).returncode == 2
    text.write_text("ok\n<!-- exp:human goal -->\n", encoding="utf-8")
    r = run_exp("fill", "0.1.0", "analysis", "--file", str(text), cwd=rec.root)
    assert r.returncode == 1 and "marker" in r.stderr and path.read_bytes() == before


def test_numbers_must_trace_to_the_evidence_at_the_precision_written(rec):
    rows = ran(rec)
    results.analyze(rec, V)
    val = rows[-1]["val_loss"]
    good, bad = f"{val:.2f}", f"{val + 0.01:.2f}"
    r = run_exp("fill", "0.1.0", "analysis", "--file", "-", cwd=rec.root, input=f"- 验证损失 {good}。\n")
    assert r.returncode == 0 and "warning" not in r.stderr
    r = run_exp("fill", "0.1.0", "analysis", "--file", "-", cwd=rec.root,
                input=f"- 验证损失 {good}。\n- 比基线低 {bad}，提升 37%。\n")
    assert r.returncode == 0 and f"{bad} is not in the run's evidence" in r.stderr and "37%" in r.stderr
    check = run_exp("check", "0.1.0", cwd=rec.root)
    assert check.returncode == 1
    lines = rec.record_path(V).read_text(encoding="utf-8").split("\n")
    reported = [ln for ln in check.stdout.splitlines() if "not in the run's evidence" in ln]
    assert len(reported) == 2
    for entry in reported:
        line_no = int(entry.split(":")[1])
        number = entry.split("the number ")[1].split(" ")[0]
        assert number in lines[line_no - 1]  # the line named is the line that holds it
    run_exp("fill", "0.1.0", "analysis", "--file", "-", cwd=rec.root, input=f"- 验证损失 {good}。\n")
    assert run_exp("check", "0.1.0", cwd=rec.root).returncode == 0


def test_a_killed_run_with_a_torn_last_line_is_analysed_as_inconclusive(rec):
    ran(rec, status="interrupted", summary=False, torn=True)
    r = results.analyze(rec, V)
    assert {v["verdict"] for v in r["verdicts"]} == {"inconclusive"}
    assert all("did not finish" in v["reason"] for v in r["verdicts"])
    assert any("truncated last line" in n for n in r["notes"])
    assert r["metrics"]["steps"] == 40  # what the lines before the tear say


def test_nonfinite_losses_become_an_anomaly(rec):
    ran(rec, steps=40, nan_at=30)
    r = results.analyze(rec, V)
    kinds = [a["kind"] for a in r["anomalies"]]
    assert "nonfinite" in kinds
    assert "第 30 步" in next(a["message"] for a in r["anomalies"] if a["kind"] == "nonfinite")


def test_records_without_results_are_refused_with_one_line_and_left_unchanged(rec):
    path = rec.record_path(V)
    before = path.read_bytes()
    r = run_exp("analyze", "0.1.0", cwd=rec.root)
    assert r.returncode == 1 and "status is draft" in r.stderr and path.read_bytes() == before
    with store.update(rec, V) as rr:
        rr.meta["run"] = {"status": "failed", "exit_code": 1}
        rr.set_status("failed")
    before = path.read_bytes()
    r = run_exp("analyze", "0.1.0", cwd=rec.root)
    assert r.returncode == 1 and "no run outputs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    rec.out_dir(V).mkdir(parents=True)
    r = run_exp("analyze", "0.1.0", cwd=rec.root)
    assert r.returncode == 1 and "neither summary.json nor metrics.jsonl" in r.stderr and "Traceback" not in r.stderr
    assert path.read_bytes() == before


def test_context_gives_an_assistant_everything_in_one_object(rec, cli):
    ran(rec)
    results.analyze(rec, V)
    code, out, _ = cli("context", "0.1.0", "--json")
    c = json.loads(out)
    for key in ("sections", "config", "diff_from_parent", "metrics", "anomalies", "verdicts", "samples", "paths"):
        assert key in c, key
    assert c["sections"]["goal"] == {"kind": "human", "line": c["sections"]["goal"]["line"], "text": HUMAN["goal"]}
    assert c["writable_sections"] == ["analysis", "diagnosis", "suggestions"]
    assert c["samples"][0]["prompt"] == "人生" and c["samples"][0]["completion"] == "如梦如梦如梦如梦"
    assert c["paths"]["plots"] == ["out/experiment_0.1.0/plots/loss.png"]
    assert c["verdicts"] == store.load(rec, V).meta["analysis"]["verdicts"]


def test_an_english_record_gets_an_english_analysis(ws):
    r = store.create(ws, V, description="english", lang="en")
    fill(r.path, HUMAN)
    ran(ws)
    results.analyze(ws, V)
    record = store.load(ws, V)
    assert "**Expected results**: 1 confirmed, 1 refuted, 2 inconclusive" in record.block("generated", "metrics").text
    assert record.block("ai", "analysis").text.startswith("- Run: finished")

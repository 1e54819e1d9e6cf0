"""Results of a record: exp analyze, exp fill, exp context, the evidence check, the metrics block.

No model is trained here. A run is the set of files a trainer leaves in
``out/experiment_V/`` (metrics.jsonl, summary.json, samples.json), written from the constants
below, plus the front matter the runner writes when the run ends; every expected value is
derived from those inputs. The pure computations (summary, anomaly rules, verdict logic, number
format) are tested in test_analysis.py; the real trainer end to end in test_whole_loop.py.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import fill, run_exp

from expkit import times
from expkit.anomalies import DEFAULT_THRESHOLDS
from expkit import record as rec_mod
from expkit import results
from expkit.config import TrainConfig
from expkit.record import Record
from expkit.version import Version
from expkit import lifecycle, records, view

V = Version.parse("0.1.0")
PARENT = Version.parse("0.0.1")  # exists, never runs: `parent` claims stay inconclusive
DEFAULT = TrainConfig()  # the parent's config: new records start from it

# -- the fabricated run's inputs -----------------------------------------------------------------
STEPS = 60
WARMUP = 10
EVAL_EVERY = 10
TOKENS_PER_STEP = 512
FINAL_LOSS = 5.1
VAL_LOSS = 5.2318  # the last eval line's val_loss, and the best one (the eval curve falls)
TPS = 1000.0
PARAMS = 123456
STARTED, ENDED, DURATION_S = "2025-03-14T09:26:53+00:00", "2025-03-14T09:31:07+00:00", 254.0
LONG = " and then" * 30  # a completion longer than the record shows

SAMPLES_ZH = [
    {"prompt": "人生", "mode": "greedy", "completion": "如梦如梦如梦如梦"},
    {"prompt": "The", "mode": "sample", "completion": " quick brown fox | jumps"},
    {"prompt": "Life", "mode": "sample", "completion": LONG},
]
SAMPLES_EN = [
    {"prompt": "Life", "mode": "greedy", "completion": " is what happens while you plan"},
    {"prompt": "The", "mode": "sample", "completion": " quick brown fox"},
]

# Human text with bytes an editor might leave: trailing spaces, a tab, an emoji, a table, and
# numbers that are the person's (never checked against the evidence).
HUMAN = {
    "goal": "检验分析命令。  \n\t第二行保留制表符与行尾空格 🔥  ",
    "hypothesis": "学习率 3e-3 时验证损失低于 6；人类写的 99.9 与 37% 不受证据检查。",
    "expected": "预期：\n- val_loss < 6\n- final_loss > 7\n- mfu > 0.5\n- val_loss <= parent - 0.1\n",
    "focus": "前 20 步的损失曲线。\n\n| 项 | 值 |\n|---|---|\n| a | 1 |",
}
CLAIMS = ("val_loss < 6", "final_loss > 7", "mfu > 0.5", "val_loss <= parent - 0.1")


def loss_at(s: int, final: float, steps: int) -> float:
    """A falling curve that ends exactly at ``final`` on the last step."""
    return final + 3.0 * (math.exp(-s / 8) - math.exp(-steps / 8))


def write_run(ws, version=V, *, final_loss=FINAL_LOSS, val_loss=VAL_LOSS, tps=TPS, steps=STEPS, summary=True,
              nonfinite_from: int | None = None, bad_value: float = math.nan, torn: bool = False,
              samples=SAMPLES_ZH) -> list[dict]:
    """The files a trainer leaves in out/experiment_V/; returns the metrics lines written."""
    out = ws.out_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(1, steps + 1):
        lr = 3e-3 * (s / WARMUP if s <= WARMUP else 1 - 0.9 * (s - WARMUP) / max(1, STEPS - WARMUP))
        row = {"step": s, "loss": loss_at(s, final_loss, steps), "lr": lr, "grad_norm": 0.8, "tokens_per_s": tps,
               "tokens_seen": TOKENS_PER_STEP * s, "elapsed_s": TOKENS_PER_STEP * s / tps}
        if nonfinite_from is not None and s >= nonfinite_from:
            row["loss"] = bad_value  # json.dumps writes NaN / Infinity, as a float16 blow-up would
        if s % EVAL_EVERY == 0:
            row["val_loss"] = val_loss + 0.5 * (math.exp(-s / 8) - math.exp(-steps / 8))
        rows.append(row)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"step": %d, "loss": 4.' % (steps + 1)  # killed in the middle of a write
    (out / "metrics.jsonl").write_text(text, encoding="utf-8")
    if summary:
        last_loss = rows[-1]["loss"]
        (out / "summary.json").write_text(json.dumps({
            "steps": steps, "final_loss": last_loss if math.isfinite(last_loss) else None, "val_loss": val_loss,
            "best_val_loss": val_loss, "val_ppl": math.exp(val_loss), "tokens_seen": TOKENS_PER_STEP * steps,
            "wall_s": TOKENS_PER_STEP * steps / tps, "tokens_per_s": tps, "params": PARAMS, "status": "finished",
        }), encoding="utf-8")
    (out / "samples.json").write_text(json.dumps({"samples": samples}, ensure_ascii=False), encoding="utf-8")
    return rows


def end_run(ws, version=V, status: str = "finished", exit_code: int = 0) -> None:
    """What the runner writes into the record when the run ends."""
    with records.update(ws, version) as r:
        r.meta["run"] = {
            "started": STARTED, "ended": ENDED, "duration_s": DURATION_S, "exit_code": exit_code, "status": status,
            "backend": "local", "host": "testhost", "command": f"bash run_file/experiment_{version}.sh",
            "git_sha": "f" * 40, "git_dirty": False, "env": {"python": "3.11.9", "torch": "2.5.0"},
        }
        r.meta["status"] = status
        view.regenerate(ws, r, ("execution", "environment"))


def ran(ws, version=V, status: str = "finished", **kw) -> list[dict]:
    rows = write_run(ws, version, **kw)
    end_run(ws, version, status, 0 if status == "finished" else 143)
    return rows


def new_record(ws, version=V, parent=PARENT, lang=None, human=None, description="analysis test"):
    r = lifecycle.create(ws, version, parent=parent, description=description, lang=lang)
    fill(r.path, human or HUMAN)
    lifecycle.set_config(ws, version, [f"max_steps={STEPS}", f"warmup_steps={WARMUP}"])
    return r.path


@pytest.fixture
def rec(ws):
    """Record 0.1.0 (human sections filled) whose parent 0.0.1 exists but never ran."""
    lifecycle.create(ws, PARENT, description="parent")
    new_record(ws)
    return ws


def human_regions(path) -> dict[str, bytes]:
    """The raw bytes of each human block, opener to closer."""
    raw = path.read_bytes()
    out = {}
    for name in rec_mod.HUMAN:
        opener = f"<!-- exp:human {name} -->".encode()
        assert raw.count(opener) == 1
        start = raw.index(opener)
        out[name] = raw[start: raw.index(b"<!-- /exp -->", start) + len(b"<!-- /exp -->")]
    return out


def one_line_error(err: str) -> None:
    assert err.startswith("exp: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def by_claim(verdicts) -> dict[str, dict]:
    return {v["claim"]: v for v in verdicts}


# -- exp analyze on a finished run ---------------------------------------------------------------
def test_analyze_turns_a_finished_run_into_an_analyzed_record_with_table_verdicts_plots_and_drafts(rec, cli):
    path = rec.record_path(V)
    regions = human_regions(path)
    blocks = {b.name: b.render() for b in Record.read(path).blocks("human")}
    assert "⏳ 尚未分析。`exp analyze 0.1.0`" in Record.read(path).block("generated", "metrics").text
    ran(rec)

    code, out, err = cli("analyze", "0.1.0", "--json")
    assert code == 0, err
    r = json.loads(out)
    record = records.load(rec, V)
    assert record.status == r["status"] == "analyzed"

    # human text: the same blocks and the same bytes in the file
    assert human_regions(path) == regions
    assert {b.name: b.render() for b in record.blocks("human")} == blocks
    assert record.human("goal") == HUMAN["goal"]

    # the metrics table, from the inputs
    m = record.meta["analysis"]["metrics"]
    assert m["steps"] == STEPS and m["final_loss"] == pytest.approx(FINAL_LOSS)
    assert m["val_loss"] == pytest.approx(VAL_LOSS) and m["best_val_loss"] == pytest.approx(VAL_LOSS)
    assert m["tokens_seen"] == TOKENS_PER_STEP * STEPS and m["tokens_per_s"] == TPS and m["params"] == PARAMS
    assert r["metrics"] == m

    block = record.block("generated", "metrics").text
    assert "运行状态：**finished**" in block
    assert f"| `val_loss` | {VAL_LOSS:.4g} | 最终验证损失 |" in block
    assert f"| `steps` | {STEPS} |" in block and f"| `params` | {PARAMS} |" in block
    assert "| `train_loss` |" not in block and "| `loss` |" not in block  # aliases of final_loss, not rows
    assert "**预期检验**：1 条成立，1 条不成立，2 条无法判定" in block
    assert f"| `val_loss < 6` | ✅ 成立 | {VAL_LOSS:.4g} | 6 |" in block
    assert f"| `final_loss > 7` | ❌ 不成立 | {FINAL_LOSS:g} | 7 |" in block
    assert "| `mfu > 0.5` | ❔ 无法判定 | n/a | 0.5 | 运行没有记录 mfu |" in block  # the reason in the record's language
    assert f"| `val_loss <= parent - 0.1` | ❔ 无法判定 | {VAL_LOSS:.4g} | n/a | 父实验没有运行结果 |" in block
    assert "**异常检测**：未发现异常。" in block and r["anomalies"] == []
    assert "**与父实验 0.0.1 对比**：该实验没有运行结果。" in block
    assert f"`max_steps` {DEFAULT.max_steps} → {STEPS}" in block  # the parent's default against this record's config

    # samples: shown cut and one-line, with the pipe escaped; all kept in samples.json
    assert "| 人生 | 如梦如梦如梦如梦 | greedy |" in block
    assert "| The | quick brown fox \\| jumps | sample |" in block
    shown = " ".join(LONG.split())[: view.SAMPLE_CHARS - 1] + "…"
    assert f"| Life | {shown} | sample |" in block

    # the plot link resolves, from the record's directory, to a PNG
    link = "../out/experiment_0.1.0/plots/loss.png"
    assert f"![loss]({link})" in block
    png = (path.parent / link).resolve()
    assert png == (rec.out_dir(V) / "plots" / "loss.png").resolve()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["plots"] == ["out/experiment_0.1.0/plots/loss.png"]
    assert not (rec.out_dir(V) / "plots" / "compare.png").exists()  # the parent has no curve to overlay

    # out/: analysis.json (everything) and metrics_summary.json (the table)
    saved = json.loads((rec.out_dir(V) / "analysis.json").read_text(encoding="utf-8"))
    assert saved["version"] == "0.1.0" and saved["verdicts"] == record.meta["analysis"]["verdicts"]
    assert [s["completion"] for s in saved["samples_detail"]] == [s["completion"] for s in SAMPLES_ZH]
    assert json.loads((rec.out_dir(V) / "metrics_summary.json").read_text(encoding="utf-8")) == m
    assert sorted(r["files"]) == ["out/experiment_0.1.0/analysis.json", "out/experiment_0.1.0/metrics_summary.json"]

    # the ai sections drafted from the evidence, every number traceable
    assert r["drafted"] == list(rec_mod.AI) and r["kept"] == []
    for name in rec_mod.AI:
        text = record.block("ai", name).text
        assert text.strip() and not any(rec_mod.HINT_RE.match(ln) for ln in text.split("\n")), name
    assert f"共 {STEPS} 步" in record.block("ai", "analysis").text
    assert f"最终验证损失 {VAL_LOSS:.4g}" in record.block("ai", "analysis").text
    assert "`final_loss > 7`" in record.block("ai", "diagnosis").text
    assert "exp new 下一个版本 --from 0.1.0" in record.block("ai", "suggestions").text
    assert r["untraceable"] == [] and results.untraceable(rec, record) == []


def test_each_claim_gets_a_verdict_with_the_observed_and_reference_values(rec, cli):
    ran(rec)
    code, out, err = cli("analyze", "0.1.0", "--json")
    assert code == 0, err
    got = by_claim(json.loads(out)["verdicts"])
    assert list(got) == list(CLAIMS)  # in the order the human wrote them
    assert got["val_loss < 6"]["verdict"] == "confirmed" and got["val_loss < 6"]["reference"] == 6.0
    assert got["val_loss < 6"]["observed"] == pytest.approx(VAL_LOSS)
    assert got["val_loss < 6"]["margin"] == pytest.approx(VAL_LOSS - 6)
    assert got["final_loss > 7"]["verdict"] == "refuted"
    assert got["final_loss > 7"]["observed"] == pytest.approx(FINAL_LOSS) and got["final_loss > 7"]["reference"] == 7.0
    # a metric the run never logged
    assert got["mfu > 0.5"]["verdict"] == "inconclusive" and got["mfu > 0.5"]["observed"] is None
    assert got["mfu > 0.5"]["reference"] == 0.5 and "mfu" in got["mfu > 0.5"]["reason"]
    # a reference whose record never ran: the threshold cannot be known
    parent = got["val_loss <= parent - 0.1"]
    assert parent["verdict"] == "inconclusive" and parent["reference"] is None and parent["reason"] == "父实验没有运行结果"
    assert parent["observed"] == pytest.approx(VAL_LOSS)
    assert json.loads(out)["verdict_counts"] == {"confirmed": 1, "refuted": 1, "inconclusive": 2}

    # exp show --json: the same verdicts, each with claim, verdict, observed and reference
    code, out, _ = cli("show", "0.1.0", "--json")
    shown = json.loads(out)["verdicts"]
    assert [v["claim"] for v in shown] == list(CLAIMS)
    for v in shown:
        assert {"claim", "verdict", "observed", "reference"} <= set(v)
        for key in ("verdict", "observed", "reference"):
            assert v[key] == got[v["claim"]][key], (v["claim"], key)

    # the text forms name them too
    code, out, _ = cli("show", "0.1.0")
    assert "[verdicts]" in out and "confirmed    val_loss < 6" in out and "refuted      final_loss > 7" in out
    code, out, _ = cli("analyze", "0.1.0")
    assert code == 0 and "verdicts  1 confirmed, 1 refuted, 2 inconclusive" in out
    assert "✓ val_loss < 6" in out and "✗ final_loss > 7" in out and "? mfu > 0.5" in out
    assert "exp review 0.1.0" in out


@pytest.mark.parametrize("parent_analyzed", [False, True], ids=["parent-finished", "parent-analyzed"])
def test_a_parent_with_a_run_gives_deltas_a_config_diff_an_overlay_and_decided_verdicts(ws, parent_analyzed):
    parent, child = Version.parse("0.1.0"), Version.parse("0.1.1")
    p_final, p_val, p_tps = 5.5, 5.6, 1000.0
    c_tps = 1200.0
    new_record(ws, parent, parent=None, human={**HUMAN, "expected": "- val_loss < 6\n"})
    new_record(ws, child, parent=parent, human={
        **HUMAN, "expected": "- val_loss <= parent - 0.1\n- tokens_per_s >= parent * 2\n"})
    lifecycle.set_config(ws, child, ["learning_rate=1.5e-3"])
    ran(ws, parent, final_loss=p_final, val_loss=p_val, tps=p_tps)
    if parent_analyzed:
        results.analyze(ws, parent)
    parent_bytes = ws.record_path(parent).read_bytes()
    ran(ws, child, tps=c_tps)

    r = results.analyze(ws, child)
    got = by_claim(r["verdicts"])
    assert got["val_loss <= parent - 0.1"]["verdict"] == ("confirmed" if VAL_LOSS <= p_val - 0.1 else "refuted")
    assert got["val_loss <= parent - 0.1"]["reference"] == pytest.approx(p_val - 0.1)
    assert got["tokens_per_s >= parent * 2"]["verdict"] == ("confirmed" if c_tps >= p_tps * 2 else "refuted")
    assert got["tokens_per_s >= parent * 2"]["reference"] == pytest.approx(p_tps * 2)

    ref = records.load(ws, child).meta["analysis"]["references"]["parent"]
    assert ref["version"] == "0.1.0" and ref["has_run"] is True
    assert ref["config_diff"] == {"learning_rate": [DEFAULT.learning_rate, 1.5e-3]}
    d = ref["deltas"]
    assert d["val_loss"]["value"] == pytest.approx(VAL_LOSS) and d["val_loss"]["reference"] == pytest.approx(p_val)
    assert d["val_loss"]["abs"] == pytest.approx(VAL_LOSS - p_val) and d["val_loss"]["rel"] == pytest.approx((VAL_LOSS - p_val) / p_val)
    assert d["final_loss"]["abs"] == pytest.approx(FINAL_LOSS - p_final)
    assert d["tokens_per_s"]["abs"] == pytest.approx(c_tps - p_tps) and d["tokens_per_s"]["rel"] == pytest.approx(c_tps / p_tps - 1)

    compare = ws.out_dir(child) / "plots" / "compare.png"
    assert compare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["plots"] == ["out/experiment_0.1.1/plots/loss.png", "out/experiment_0.1.1/plots/compare.png"]
    record = records.load(ws, child)
    block = record.block("generated", "metrics").text
    assert "**与父实验 0.1.0 对比**：" in block and "`learning_rate` 0.003 → 0.0015" in block
    assert f"| `val_loss` | {VAL_LOSS:.4g} | {p_val:g} |" in block and "![compare](../out/experiment_0.1.1/plots/compare.png)" in block
    assert "与父实验 0.1.0 相比：val_loss" in record.block("ai", "analysis").text
    assert results.untraceable(ws, record) == []  # the delta sentence cites the deltas as stored
    assert ws.record_path(parent).read_bytes() == parent_bytes  # reading a reference writes nothing to it


def test_reanalysis_keeps_refined_prose_and_redrafts_what_still_holds_the_last_draft(rec, cli, tmp_path):
    ran(rec)
    first = results.analyze(rec, V)
    assert first["drafted"] == list(rec_mod.AI)
    before = records.load(rec, V)
    old_suggestions = before.block("ai", "suggestions").text

    refined = "训练损失平稳下降，验证集损失达到预期。"
    text = tmp_path / "analysis.md"
    text.write_text(refined + "\n", encoding="utf-8")
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(text))
    assert code == 0, err
    # an edit in the editor counts as refined prose as well
    path = rec.record_path(V)
    edited = "人工修改过的诊断：没有异常。"
    path.write_text(path.read_text(encoding="utf-8").replace(before.block("ai", "diagnosis").render(),
                    "<!-- exp:ai diagnosis -->\n" + edited + "\n<!-- /exp -->\n"), encoding="utf-8")

    # the run is redone and now misses the claim: the drafts must follow, the prose must stay
    ran(rec, val_loss=6.25)
    again = results.analyze(rec, V)
    record = records.load(rec, V)
    assert again["kept"] == ["analysis", "diagnosis"] and again["drafted"] == ["suggestions"]
    assert record.block("ai", "analysis").text == refined
    assert record.block("ai", "diagnosis").text == edited
    new_suggestions = record.block("ai", "suggestions").text
    assert new_suggestions != old_suggestions and "`val_loss < 6`" in new_suggestions  # now refuted
    assert by_claim(again["verdicts"])["val_loss < 6"]["verdict"] == "refuted"

    # a section emptied in the editor is drafted again
    text_now = path.read_text(encoding="utf-8")
    path.write_text(text_now.replace(record.block("ai", "analysis").render(), "<!-- exp:ai analysis -->\n<!-- /exp -->\n"),
                    encoding="utf-8")
    third = results.analyze(rec, V)
    assert set(third["drafted"]) == {"analysis", "suggestions"} and third["kept"] == ["diagnosis"]
    assert "6.25" in records.load(rec, V).block("ai", "analysis").text


def test_a_hand_edited_metrics_section_makes_analyze_refuse_and_write_nothing(rec, cli):
    ran(rec)
    results.analyze(rec, V)
    path = rec.record_path(V)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("**预期检验**", "**预期检验（我改过）**"), encoding="utf-8")
    before = path.read_bytes()
    code, _, err = cli("analyze", "0.1.0")
    assert code == 1 and "edited by hand" in err
    one_line_error(err)
    assert path.read_bytes() == before


# -- exp fill --------------------------------------------------------------------------------------
def test_fill_writes_only_the_named_ai_section(rec, cli, tmp_path):
    ran(rec)
    results.analyze(rec, V)
    path = rec.record_path(V)
    before = path.read_text(encoding="utf-8")
    old = records.load(rec, V).block("ai", "diagnosis").render()
    prose = f"- 验证损失 {VAL_LOSS:.3g}，没有发现异常。\n- 一行结束标记也可以出现在文字里：\n<!-- /exp -->\n- 最后一行。"
    f = tmp_path / "d.md"
    f.write_text(prose + "\n\n", encoding="utf-8")  # trailing newlines are not part of the text
    code, out, err = cli("fill", "0.1.0", "diagnosis", "--file", str(f))
    assert code == 0 and err == "" and "wrote the diagnosis of 0.1.0" in out
    record = records.load(rec, V)
    assert record.block("ai", "diagnosis").text == prose
    assert path.read_text(encoding="utf-8") == before.replace(old, "<!-- exp:ai diagnosis -->\n" + prose + "\n<!-- /exp -->\n")
    assert record.status == "analyzed"


def test_fill_reads_standard_input_in_a_real_process(rec):
    ran(rec)
    results.analyze(rec, V)
    r = run_exp("fill", "0.1.0", "suggestions", "--file", "-", cwd=rec.root, input="- 第一条\r\n- 第二条\r\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert records.load(rec, V).block("ai", "suggestions").text == "- 第一条\n- 第二条"  # CRLF normalised


@pytest.mark.parametrize("section, code, words", [
    ("goal", 1, "is a human section"),
    ("expected", 1, "is a human section"),
    ("metrics", 1, "generated from data"),
    ("config", 1, "generated from data"),
    ("nope", 2, "no section 'nope'"),
])
def test_fill_refuses_sections_it_does_not_own_and_leaves_the_file_as_it_was(rec, cli, tmp_path, section, code, words):
    ran(rec)
    results.analyze(rec, V)
    path = rec.record_path(V)
    before = path.read_bytes()
    f = tmp_path / "t.md"
    f.write_text("新的文字。\n", encoding="utf-8")
    got, out, err = cli("fill", "0.1.0", section, "--file", str(f))
    assert got == code and words in err, err
    one_line_error(err)
    assert path.read_bytes() == before


def test_fill_refusals_in_a_real_process_are_one_line_without_traceback(rec, tmp_path):
    ran(rec)
    results.analyze(rec, V)
    path = rec.record_path(V)
    before = path.read_bytes()
    r = run_exp("fill", "0.1.0", "goal", "--file", "-", cwd=rec.root, input="改目标\n")
    assert r.returncode == 1 and "human section" in r.stderr
    one_line_error(r.stderr)
    r = run_exp("fill", "0.1.0", "analysis", "--file", "-", cwd=rec.root, input="ok\n<!-- exp:ai diagnosis -->\nmore\n")
    assert r.returncode == 1 and "section marker" in r.stderr and "line 2 of the text" in r.stderr
    one_line_error(r.stderr)
    assert path.read_bytes() == before


def test_fill_refuses_empty_text_a_marker_line_a_missing_file_and_the_wrong_status(rec, cli, tmp_path):
    path = rec.record_path(V)
    f = tmp_path / "t.md"
    f.write_text("在运行之前写分析。\n", encoding="utf-8")
    before = path.read_bytes()
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f))  # a draft: nothing to analyse yet
    assert code == 1 and "status is draft" in err
    one_line_error(err)
    assert path.read_bytes() == before

    ran(rec)
    results.analyze(rec, V)
    before = path.read_bytes()
    for text, code_expected, words in (
        (" \n\t\n", 2, "the text is empty"),
        ("", 2, "the text is empty"),
        ("第一行\n<!-- exp:human goal -->\n第三行", 1, "section marker"),
    ):
        f.write_text(text, encoding="utf-8")
        code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f))
        assert code == code_expected and words in err, (text, err)
        one_line_error(err)
        assert path.read_bytes() == before
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(tmp_path / "missing.md"))
    assert code == 2 and "no such file" in err and path.read_bytes() == before

    with records.update(rec, V) as r:  # after a person approved it, the prose is final
        r.meta["status"] = "approved"
    before = path.read_bytes()
    f.write_text("改写。\n", encoding="utf-8")
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f))
    assert code == 1 and "status is approved" in err and path.read_bytes() == before


@pytest.mark.parametrize("written, traceable", [
    (f"验证集损失 {VAL_LOSS:.2f}", True),  # 5.23: the val loss rounded to two decimals, and named
    (f"验证集损失 {VAL_LOSS:.1f}", True),  # 5.2
    (f"val_loss {VAL_LOSS}", True),  # 5.2318 as logged
    (f"验证集损失 {VAL_LOSS - 0.01:.2f}", False),  # 5.22: one unit off (below the best: no eval was that low)
    (f"验证集损失 {VAL_LOSS:.1f}0", False),  # 5.20 claims a precision the value does not round to
    (f"数值 {VAL_LOSS:.2f}", False),  # the right value, but the sentence does not say what it is
    (f"困惑度 {math.exp(VAL_LOSS):.0f}", True),  # the perplexity, rounded
    (f"困惑度 {math.exp(VAL_LOSS) + 1:.0f}", False),
])
def test_a_written_number_must_be_a_value_its_sentence_names(rec, cli, tmp_path, written, traceable):
    ran(rec)
    results.analyze(rec, V)
    path = rec.record_path(V)
    before = path.read_bytes()
    f = tmp_path / "a.md"
    f.write_text(f"- 本次运行的指标：\n- {written}。\n", encoding="utf-8")
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f))
    if traceable:
        assert code == 0 and "warning" not in err, err
        return
    number = written.split()[-1]
    assert code == 1 and f": {number} (" in err and "nothing was written" in err, err
    one_line_error(err)
    assert path.read_bytes() == before  # refused: the record is as it was
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f), "--allow-untraceable")
    assert code == 0 and "warning: line " in err and f": {number} is not traceable" in err
    line = int(re.search(r"warning: line (\d+):", err).group(1))
    assert number in path.read_text(encoding="utf-8").split("\n")[line - 1]


def test_citations_are_resolved_kept_and_checked_exactly(rec, cli, tmp_path):
    ran(rec)
    results.analyze(rec, V)
    f = tmp_path / "a.md"
    f.write_text("- 验证集损失降到 [[metrics.val_loss:.3f]]，共 [[metrics.steps]] 步（[[run.duration_s:.0f]] 秒）。\n", encoding="utf-8")
    code, out, err = cli("fill", "0.1.0", "analysis", "--file", str(f))
    assert code == 0 and "3 cited number(s)" in out, err
    record = records.load(rec, V)
    text = record.block("ai", "analysis").text
    assert text == f"- 验证集损失降到 {VAL_LOSS:.3f}，共 {STEPS} 步（{DURATION_S:.0f} 秒）。"
    kept = record.ai_entry("analysis")
    assert [c["path"] for c in kept["citations"]] == ["metrics.val_loss", "metrics.steps", "run.duration_s"]
    assert kept["source"] == f.read_text(encoding="utf-8").rstrip("\n")
    assert cli("check", "0.1.0")[0] == 0
    # the evidence changes under the citation (a hand edit of the state stands for a re-analysis): check says so
    state = json.loads(rec.state_path(V).read_text(encoding="utf-8"))
    state["meta"]["analysis"]["metrics"]["val_loss"] = VAL_LOSS + 0.1
    rec.state_path(V).write_text(json.dumps(state), encoding="utf-8")
    code, out, _ = cli("check", "0.1.0")
    assert code == 1 and "cited metrics.val_loss now reads" in out
    # an unknown path is refused in one line with the nearest paths, nothing written
    before = rec.record_path(V).read_bytes()
    f.write_text("- [[metrics.val_los]]\n", encoding="utf-8")
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f))
    assert code == 1 and "did you mean metrics.val_loss" in err and rec.record_path(V).read_bytes() == before
    one_line_error(err)


def test_fill_before_the_analysis_is_refused_naming_exp_analyze(rec, cli, tmp_path):
    ran(rec)  # finished, not analysed: there is no evidence to check the numbers against
    path = rec.record_path(V)
    before = path.read_bytes()
    f = tmp_path / "a.md"
    f.write_text(f"验证损失 {VAL_LOSS:.2f}。\n", encoding="utf-8")
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f))
    assert code == 1 and "not analysed yet" in err and "`exp analyze 0.1.0`" in err
    assert path.read_bytes() == before


# -- the evidence check ----------------------------------------------------------------------------
CHECK_LINE = re.compile(r"^(?P<path>\S+):(?P<line>\d+): error: the number (?P<number>\S+) in the ai section '(?P<section>\w+)'")


def test_check_names_each_untraceable_number_with_its_line_until_the_text_is_fixed(rec, cli, tmp_path):
    ran(rec)
    results.analyze(rec, V)
    good = f"{VAL_LOSS:.2f}"
    bad = f"{VAL_LOSS + 0.5:.2f}"
    f = tmp_path / "a.md"
    f.write_text(f"- 验证损失 {good}。\n- 比上次低 {bad}。\n\n- 吞吐提升 37%，共 {STEPS} 步。\n", encoding="utf-8")
    code, _, err = cli("fill", "0.1.0", "analysis", "--file", str(f), "--allow-untraceable")
    assert code == 0 and err.count("warning:") == 2
    f.write_text("- 诊断：第 13 处尖峰 1.5x。\n", encoding="utf-8")
    assert cli("fill", "0.1.0", "diagnosis", "--file", str(f), "--allow-untraceable")[0] == 0

    code, out, _ = cli("check", "0.1.0")
    assert code == 1
    path = rec.record_path(V)
    lines = path.read_text(encoding="utf-8").split("\n")
    found = [m.groupdict() for m in map(CHECK_LINE.match, out.splitlines()) if m]
    assert sorted((x["section"], x["number"]) for x in found) == sorted(
        [("analysis", bad), ("analysis", "37%"), ("diagnosis", "13"), ("diagnosis", "1.5x")])
    for x in found:
        assert x["path"] == "experiment/experiment_0.1.0.md"
        assert x["number"] in lines[int(x["line"]) - 1], x  # the line named holds the number
    assert "99.9" not in out  # numbers in human sections are the person's

    f.write_text(f"- 验证损失 {good}，共 {STEPS} 步。\n", encoding="utf-8")
    assert cli("fill", "0.1.0", "analysis", "--file", str(f))[0] == 0
    f.write_text("- 诊断：没有异常。\n", encoding="utf-8")
    assert cli("fill", "0.1.0", "diagnosis", "--file", str(f))[0] == 0
    code, out, _ = cli("check", "0.1.0")
    assert code == 0 and "not traceable" not in out


def test_timestamps_are_not_evidence_for_numbers_in_the_text(rec, monkeypatch):
    analyzed_at = "2031-07-29T13:41:59+00:00"
    monkeypatch.setattr(times, "now", lambda: analyzed_at)
    ran(rec)
    results.analyze(rec, V)
    assert records.load(rec, V).meta["analysis"]["analyzed_at"] == analyzed_at
    # minutes and seconds of the analysis and of the run's start, and a year: none is a result
    stray = ["41", "59", "53", "2031"]
    r = results.fill(rec, V, "analysis", "\n".join(f"- 耗时数字 {n}。" for n in stray) + f"\n- 耗时 {DURATION_S:g} 秒。",
                     allow_untraceable=True)
    assert [u["number"] for u in r["untraceable"]] == stray  # the run's duration is evidence, its clock is not


# -- runs that did not go well, and records without a run -------------------------------------------
def test_a_record_that_never_ran_is_refused_in_one_line_and_left_unchanged(rec, cli):
    code, out, _ = cli("check", "0.1.0")
    assert code == 0 and records.load(rec, V).status == "ready"
    path = rec.record_path(V)
    before = path.read_bytes()
    code, _, err = cli("analyze", "0.1.0")
    assert code == 1 and "status is ready" in err and "`exp run 0.1.0`" in err
    one_line_error(err)
    assert path.read_bytes() == before and not rec.out_dir(V).exists()


def test_a_killed_run_with_a_torn_last_line_is_analysed_with_a_note_and_inconclusive_verdicts(rec):
    done = 45
    rows = ran(rec, status="interrupted", steps=done, summary=False, torn=True)
    r = results.analyze(rec, V)
    record = records.load(rec, V)
    assert record.status == "analyzed" and record.meta["analysis"]["run_status"] == "interrupted"
    assert any(f"truncated last line {done + 1} of metrics.jsonl" in n for n in r["notes"]), r["notes"]
    assert any("no summary.json" in n for n in r["notes"])
    # the table is what the complete lines say
    last_val = [x for x in rows if "val_loss" in x][-1]
    assert r["metrics"]["steps"] == done and r["metrics"]["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert r["metrics"]["val_loss"] == pytest.approx(last_val["val_loss"])
    assert r["metrics"]["tokens_seen"] == TOKENS_PER_STEP * done
    # a run that did not finish confirms and refutes nothing
    assert [v["verdict"] for v in r["verdicts"]] == ["inconclusive"] * len(CLAIMS)
    assert all(v["reason"] == "运行未成功结束" for v in r["verdicts"])  # "the run did not finish", in Chinese
    early = [a for a in r["anomalies"] if a["kind"] == "early_stop"]
    assert len(early) == 1 and early[0]["step"] == done
    block = record.block("generated", "metrics").text
    assert "运行状态：**interrupted**" in block and "注：" in block and "truncated last line" in block
    assert "0 条成立，0 条不成立，4 条无法判定" in block


@pytest.mark.parametrize("bad, shown", [(math.nan, "NaN"), (math.inf, "Inf")])
def test_non_finite_losses_become_an_anomaly_and_stay_out_of_json_and_yaml(rec, bad, shown):
    first_bad = 50
    ran(rec, nonfinite_from=first_bad, bad_value=bad)
    r = results.analyze(rec, V)
    nonfinite = [a for a in r["anomalies"] if a["kind"] == "nonfinite"]
    assert len(nonfinite) == 1 and nonfinite[0]["metric"] == "loss"
    assert nonfinite[0]["step"] == first_bad and nonfinite[0]["end_step"] == STEPS
    assert f"第 {first_bad} 步" in nonfinite[0]["message"] and shown in nonfinite[0]["message"]
    final = by_claim(r["verdicts"])["final_loss > 7"]
    assert final["verdict"] == "inconclusive" and final["reason"] == "final_loss 为非有限值"
    assert final["observed"] is None  # JSON has no NaN
    assert "final_loss" not in r["metrics"]  # a non-finite value is no table entry
    assert by_claim(r["verdicts"])["val_loss < 6"]["verdict"] == "confirmed"  # val_loss stayed finite

    def refuse(token):
        raise AssertionError(f"{token} in a JSON file")

    json.loads((rec.out_dir(V) / "analysis.json").read_text(encoding="utf-8"), parse_constant=refuse)
    json.loads((rec.out_dir(V) / "metrics_summary.json").read_text(encoding="utf-8"), parse_constant=refuse)
    front = rec.record_path(V).read_text(encoding="utf-8").split("\n---\n")[0]
    assert ".nan" not in front.lower() and ".inf" not in front.lower()
    assert "数值溢出" in records.load(rec, V).block("ai", "diagnosis").text
    assert (rec.out_dir(V) / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unreadable_summary_is_noted_and_the_curve_still_gives_the_table(rec):
    rows = ran(rec)
    (rec.out_dir(V) / "summary.json").write_text('{"steps": 6', encoding="utf-8")  # cut short
    r = results.analyze(rec, V)
    assert any("ignored unreadable summary.json" in n for n in r["notes"])
    assert r["metrics"]["steps"] == STEPS and r["metrics"]["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert r["metrics"]["tokens_per_s"] == pytest.approx(TPS)  # tokens over elapsed time


def test_no_run_outputs_is_one_line_in_a_real_process_and_the_record_is_unchanged(rec):
    end_run(rec, status="failed", exit_code=1)  # the runner recorded an end, the run left nothing
    path = rec.record_path(V)
    before = path.read_bytes()
    r = run_exp("analyze", "0.1.0", cwd=rec.root)
    assert r.returncode == 1 and "no run outputs" in r.stderr and "`exp run 0.1.0`" in r.stderr
    one_line_error(r.stderr)
    assert path.read_bytes() == before


@pytest.mark.parametrize("metrics_text", [None, "", "\n\n", '{"step": 1, "loss": 9.'], ids=["no-file", "empty", "blank", "torn-only"])
def test_a_run_without_one_complete_metrics_line_or_summary_is_refused(rec, cli, metrics_text):
    end_run(rec, status="interrupted", exit_code=143)
    out = rec.out_dir(V)
    out.mkdir(parents=True)
    if metrics_text is not None:
        (out / "metrics.jsonl").write_text(metrics_text, encoding="utf-8")
    path = rec.record_path(V)
    before = path.read_bytes()
    code, _, err = cli("analyze", "0.1.0")
    assert code == 1 and "neither summary.json nor metrics.jsonl" in err, err
    one_line_error(err)
    assert path.read_bytes() == before
    assert not (out / "analysis.json").exists() and not (out / "metrics_summary.json").exists()


# -- exp context ------------------------------------------------------------------------------------
def test_context_gives_an_assistant_everything_consistent_with_the_record(rec, cli):
    ran(rec)
    results.analyze(rec, V)
    code, out, _ = cli("context", "0.1.0", "--json")
    assert code == 0
    c = json.loads(out)
    for key in ("sections", "config", "diff_from_parent", "metrics", "anomalies", "verdicts", "samples", "paths"):
        assert key in c, key
    record = records.load(rec, V)
    meta = record.meta
    assert c["version"] == "0.1.0" and c["status"] == "analyzed" and c["analyzed"] is True and c["parent"] == "0.0.1"

    # every section, with its kind, text and the file line where its text starts
    lines = record.path.read_text(encoding="utf-8").split("\n")
    assert set(c["sections"]) == {b.name for b in record.blocks()}
    for b in record.blocks():
        s = c["sections"][b.name]
        assert s["kind"] == b.kind and s["text"] == b.text
        assert lines[s["line"] - 1] == b.text.split("\n")[0], b.name
    assert c["sections"]["goal"]["text"] == HUMAN["goal"]
    assert c["writable_sections"] == list(rec_mod.AI)

    assert c["config"] == meta["config"]
    assert c["diff_from_parent"] == {"warmup_steps": [DEFAULT.warmup_steps, WARMUP], "max_steps": [DEFAULT.max_steps, STEPS]}
    assert c["metrics"] == meta["analysis"]["metrics"] and c["metrics"]["val_loss"] == pytest.approx(VAL_LOSS)
    assert c["verdicts"] == meta["analysis"]["verdicts"] and [v["claim"] for v in c["verdicts"]] == list(CLAIMS)
    assert c["anomalies"] == meta["analysis"]["anomalies"]
    assert c["anomaly_rules"]["throughput_ratio"] == DEFAULT_THRESHOLDS.throughput_ratio == 0.5
    assert c["anomaly_rules"]["stall_min_s"] == DEFAULT_THRESHOLDS.stall_min_s
    assert [(s["prompt"], s["completion"], s["mode"]) for s in c["samples"]] == [
        (s["prompt"], s["completion"], s["mode"]) for s in SAMPLES_ZH]  # whole, not cut as in the record
    assert c["run"]["status"] == "finished" and c["untraceable"] == [] and c["error"] is None
    for key in ("record", "out", "metrics", "summary", "samples", "analysis"):
        assert (rec.root / c["paths"][key]).exists(), key
    assert c["paths"]["plots"] == ["out/experiment_0.1.0/plots/loss.png"]
    assert all((rec.root / p).is_file() for p in c["paths"]["plots"])
    assert "exp fill 0.1.0" in c["rules"]["write"] and "exp review 0.1.0" in c["rules"]["after"]

    code, out, _ = cli("context", "0.1.0")
    assert code == 0 and "verdict   val_loss < 6: confirmed" in out and "exp fill 0.1.0 SECTION" in out


def test_context_before_the_analysis_computes_live_and_writes_nothing(rec, cli):
    ran(rec)
    path = rec.record_path(V)
    before = path.read_bytes()
    code, out, _ = cli("context", "0.1.0", "--json")
    assert code == 0
    c = json.loads(out)
    assert c["analyzed"] is False and c["status"] == "finished"
    assert c["metrics"]["steps"] == STEPS and c["metrics"]["val_loss"] == pytest.approx(VAL_LOSS)
    assert by_claim(c["verdicts"])["val_loss < 6"]["verdict"] == "confirmed"
    assert [s["prompt"] for s in c["samples"]] == [s["prompt"] for s in SAMPLES_ZH]
    assert path.read_bytes() == before
    assert not (rec.out_dir(V) / "analysis.json").exists() and not (rec.out_dir(V) / "plots").exists()

    # and a draft with no run at all: the same keys, empty
    lifecycle.create(rec, Version.parse("0.2.0"))
    c = json.loads(cli("context", "0.2.0", "--json")[1])
    assert c["metrics"] is None and c["verdicts"] == [] and c["samples"] == [] and c["analyzed"] is False
    assert c["diff_from_parent"] is None and c["paths"]["plots"] == []


# -- the English templates -----------------------------------------------------------------------
def test_an_english_record_gets_an_english_metrics_section_and_drafts(ws):
    new_record(ws, V, parent=None, lang="en")
    assert "⏳ Not analysed yet. `exp analyze 0.1.0`" in records.load(ws, V).block("generated", "metrics").text
    ran(ws, samples=SAMPLES_EN)
    r = results.analyze(ws, V)
    record = records.load(ws, V)
    block = record.block("generated", "metrics").text
    c = r["verdict_counts"]
    assert c == {"confirmed": 1, "refuted": 1, "inconclusive": 2}  # no parent: its claim cannot be judged
    assert "Run status: **finished**" in block
    assert "| Metric | Value | Meaning |" in block
    assert f"| `val_loss` | {VAL_LOSS:.4g} | final validation loss |" in block
    assert "**Expected results**: 1 confirmed, 1 refuted, 2 inconclusive" in block
    assert f"| `val_loss < 6` | ✅ confirmed | {VAL_LOSS:.4g} | 6 |" in block
    assert "| `final_loss > 7` | ❌ refuted |" in block and "| `mfu > 0.5` | ❔ inconclusive |" in block
    assert "**Anomalies**: none detected." in block
    assert "| Life | is what happens while you plan | greedy |" in block
    assert "**Sample quality**: distinct-1" in block
    assert "**Plots**:" in block and "![loss](../out/experiment_0.1.0/plots/loss.png)" in block
    cjk = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
    assert not cjk.search(block), cjk.findall(block)
    for name in rec_mod.AI:
        assert not cjk.search(record.block("ai", name).text), name
    assert record.block("ai", "analysis").text.startswith(f"- Run: finished, {STEPS} steps")
    assert "exp new NEXT --from 0.1.0" in record.block("ai", "suggestions").text
    assert results.untraceable(ws, record) == []


def test_the_parents_curve_and_the_verdict_labels_are_citable(ws, cli, tmp_path):
    """A hypothesis about the trend ("lower than the parent at every evaluation") needs the
    parent's own evaluations; a Chinese record says 成立, not "confirmed"."""
    parent, child = Version.parse("0.1.0"), Version.parse("0.1.1")
    new_record(ws, parent, parent=None, human={**HUMAN, "expected": "- val_loss < 6\n"})
    new_record(ws, child, parent=parent, human={**HUMAN, "expected": "- val_loss < 6\n"})
    lifecycle.set_config(ws, child, ["learning_rate=1.5e-3"])
    parent_rows = ran(ws, parent, val_loss=5.6)
    ran(ws, child)
    results.analyze(ws, parent)
    results.analyze(ws, child)
    ev = json.loads(cli("context", "0.1.1", "--json")[1])["evidence"]
    evals = {str(r["step"]): r["val_loss"] for r in parent_rows if "val_loss" in r}
    assert ev["references"]["parent"]["curve"]["val_loss"] == pytest.approx(evals)
    assert ev["verdicts"][0]["label"] == "成立"
    # the throughput's spread over the log lines (the first, start-up, left out): every line ran at TPS here
    assert ev["curve"]["tokens_per_s"] == pytest.approx({"min": TPS, "p10": TPS, "median": TPS, "p90": TPS, "max": TPS})
    step = max(evals, key=int)
    f = tmp_path / "a.md"
    f.write_text(f"- 第 {step} 步父实验的验证损失为 [[references.parent.curve.val_loss.{step}:.3f]]；"
                 f"预期 `val_loss < 6` [[verdicts.0.label]]。\n", encoding="utf-8")
    code, out, err = cli("fill", "0.1.1", "analysis", "--file", str(f))
    assert code == 0, err
    assert f"父实验的验证损失为 {evals[step]:.3f}；预期 `val_loss < 6` 成立。" in records.load(ws, child).block("ai", "analysis").text
    assert cli("check", "0.1.1")[0] == 0


def test_the_step_by_step_difference_to_the_parent_and_the_number_of_evaluations_are_citable(ws, cli, tmp_path):
    parent, child = Version.parse("0.1.0"), Version.parse("0.1.1")
    new_record(ws, parent, parent=None, human={**HUMAN, "expected": "- val_loss < 6\n"})
    new_record(ws, child, parent=parent, human={**HUMAN, "expected": "- val_loss < 6\n"})
    lifecycle.set_config(ws, child, ["learning_rate=1.5e-3"])
    parent_rows = ran(ws, parent, val_loss=5.6)
    child_rows = ran(ws, child)
    results.analyze(ws, parent)
    results.analyze(ws, child)
    ev = json.loads(cli("context", "0.1.1", "--json")[1])["evidence"]
    theirs = {str(r["step"]): r["val_loss"] for r in parent_rows if "val_loss" in r}
    ours = {str(r["step"]): r["val_loss"] for r in child_rows if "val_loss" in r}
    assert ev["curve"]["evaluations"] == len(ours)
    assert ev["references"]["parent"]["curve_deltas"]["val_loss"] == pytest.approx({s: ours[s] - theirs[s] for s in ours})
    step = min(ours, key=int)
    f = tmp_path / "a.md"
    f.write_text(f"- 共 {len(ours)} 个验证点；第 {step} 步比父实验低 [[references.parent.curve_deltas.val_loss.{step}:.3f]]。\n"
                 f"- 验证损失 9.99 与 9.99。\n", encoding="utf-8")
    code, _, err = cli("fill", "0.1.1", "analysis", "--file", str(f))
    assert code == 1 and "line 2 of the text: 9.99 (×2)" in err and "line 1 of the text" not in err
    f.write_text(f.read_text(encoding="utf-8").split("\n")[0] + "\n", encoding="utf-8")
    assert cli("fill", "0.1.1", "analysis", "--file", str(f))[0] == 0

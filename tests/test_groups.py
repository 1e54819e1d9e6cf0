"""Experiment groups and replicates: verdict statistics against hand-computed intervals (Student
t on one side, Welch on two, the straddling case), a replicated record's metrics (mean, sd, n,
95 % interval) in `exp show --json`, the record and the evidence; the group's analysis over
members whose runs end through the runner's own functions (`runner.begin`, `runner.conclude`),
partial while a member is pending; claims naming members judged and checked by `exp check`;
the group's review at a real terminal binding every member (a member edited afterwards makes
the approval lapse, naming it); the group's one git commit with every member's verdicts in its
trailers; the report and tracker CSV columns."""

from __future__ import annotations

import csv
import io
import json
import os
import math
import subprocess

import pytest
from conftest import fill, run_exp
from test_review import git_identity, terminal

from expkit import approval, catalog, claims, grouping, intervals, lifecycle, records, results, review, runner, store, verdicts
from expkit.script import LaunchOptions
from expkit.version import Version

P = Version.parse("1.5.0")
LRS = {"1.5.1": 1e-3, "1.5.2": 3e-3, "1.5.3": 1e-2}
#: per member: the val_loss of each replicate (seeds seed, seed+1, seed+2)
VAL = {"1.5.1": [5.40, 5.45, 5.50], "1.5.2": [5.00, 5.05, 5.10], "1.5.3": [5.38, 5.48, 5.58]}
TPS = {"1.5.1": [1000.0, 1010.0, 990.0], "1.5.2": [1000.0, 1005.0, 995.0], "1.5.3": [980.0, 985.0, 975.0]}
GROUP_EXPECTED = ("组的预期：\n- val_loss@1.5.2 < val_loss@1.5.1\n- tokens_per_s@1.5.3 >= tokens_per_s@1.5.1 * 0.9\n"
                  "- val_loss@1.5.3 < val_loss@1.5.1\n- val_loss@1.5.1 < 5.3\n")
HUMAN = {"goal": "扫描学习率。", "hypothesis": "3e-3 的验证损失最低。", "expected": GROUP_EXPECTED, "focus": "损失曲线。"}
MEMBER_HUMAN = {**HUMAN, "expected": "成员预期：\n- val_loss < 5.3\n- tokens_per_s >= 500\n"}
T2 = intervals.t_quantile(0.975, 2)  # 4.302653


# -- verdict statistics by hand --------------------------------------------------------------------------
def _reps(metric, values):
    return [{metric: v} for v in values]


def test_student_t_on_one_side_by_hand_including_the_straddle():
    values = [5.0, 5.1, 5.2]  # mean 5.1, sd 0.1
    half = 4.302653 * 0.1 / math.sqrt(3)  # 0.248414
    found = {}
    for text in ("val_loss@1.5.1 < 5.4", "val_loss@1.5.1 < 5.3", "val_loss@1.5.1 < 4.8"):
        c = claims.parse_claims(f"- {text}")[0][0]
        found[text] = verdicts.verdicts([c], {"val_loss": 5.1}, None, None, True,
                                        replicates={"this": _reps("val_loss", values)}, version="1.5.1")[0]
    sure, straddle, wrong = found.values()
    assert sure.verdict == "confirmed" and wrong.verdict == "refuted"
    assert straddle.verdict == verdicts.WITHIN_NOISE == "inconclusive (within noise)"
    assert "`exp set 1.5.1 replicates=6`" in straddle.reason
    for v in found.values():
        assert v.method == "student_t" and v.n == 3 and v.df == 2
        assert v.mean == pytest.approx(5.1) and v.sd == pytest.approx(0.1)
        assert v.ci_low == pytest.approx(5.1 - half, abs=1e-6) and v.ci_high == pytest.approx(5.1 + half, abs=1e-6)


def test_welch_between_two_members_by_hand_and_a_straddle():
    a, b = [5.0, 5.1, 5.2], [5.3, 5.4, 5.5]  # difference -0.3; se sqrt(0.01/3 + 0.01/3); df 4
    half = 2.776445 * math.sqrt(0.02 / 3)  # 0.226690
    c = claims.parse_claims("- val_loss@1.5.2 < val_loss@1.5.1")[0][0]
    assert (c.at, c.reference, c.ref_version, c.ref_metric) == ("1.5.2", "member", "1.5.1", "val_loss")
    v = verdicts.verdicts([c], {"val_loss": 5.1}, None, None, True, version="1.5.2",
                          replicates={"this": _reps("val_loss", a), "1.5.1": _reps("val_loss", b)},
                          members={"1.5.1": {"val_loss": 5.4}})[0]
    assert v.verdict == "confirmed" and v.method == "welch" and v.df == pytest.approx(4.0)
    assert v.reference == pytest.approx(5.4) and v.ci_low == pytest.approx(5.1 - half, abs=1e-6)
    assert v.ci_high == pytest.approx(5.1 + half, abs=1e-6)
    # closer means: the interval of the difference straddles 0
    close = verdicts.verdicts([c], {"val_loss": 5.1}, None, None, True, version="1.5.2",
                              replicates={"this": _reps("val_loss", a), "1.5.1": _reps("val_loss", [5.1, 5.2, 5.3])},
                              members={"1.5.1": {"val_loss": 5.2}})[0]
    assert close.verdict == verdicts.WITHIN_NOISE and close.method == "welch"
    # a member that has no run is named in the reason
    none = verdicts.verdicts([c], {"val_loss": 5.1}, None, None, True, members={"1.5.1": None})[0]
    assert none.verdict == "inconclusive" and none.reason == "1.5.1 has no run"


# -- runs that end the way the runner ends them -------------------------------------------------------------
def _rows(val_loss: float, tps: float, steps: int = 20) -> list[dict]:
    return [{"step": s, "loss": 8.0 - s * 0.1 + (val_loss - 5.0), "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": tps,
             "tokens_seen": 256 * s, "elapsed_s": 256 * s / tps,
             **({"val_loss": val_loss + 0.2 * (steps - s) / steps} if s % 10 == 0 else {})} for s in range(1, steps + 1)]


def _write_replicate(folder, val_loss: float, tps: float, load: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(val_loss, tps)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = {"status": "finished", "steps": 20, "final_loss": rows[-1]["loss"], "val_loss": val_loss,
               "best_val_loss": val_loss, "tokens_seen": 256 * 20, "tokens_per_s": tps, "wall_s": 256 * 20 / tps,
               "params": 123456, **({"load": load} if load else {})}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (folder / "status.json").write_text(json.dumps({"status": "finished", "step": 20}), encoding="utf-8")


def finish(ws, version: str, vals: list[float], tps: list[float]) -> None:
    """The run of ``version`` starts (runner.begin), leaves one trainer output per replicate in
    out/experiment_V/r{i}/ and its own status, and ends (runner.conclude: finalize, analyse)."""
    v = Version.parse(version)
    dead = subprocess.Popen(["true"])
    dead.wait()
    runner.begin(ws, v, LaunchOptions().check(), pid=dead.pid)
    out = ws.out_dir(v)
    load = {"loadavg_mean": 1.0, "cpus": 2, "others_cpu_mean": 0.1}
    for i, (vl, t) in enumerate(zip(vals, tps)):
        _write_replicate(out / f"r{i}", vl, t, load)
    run = records.load(ws, v).meta.get("run")
    if runner.replicated(run):  # each replicate starts and ends as its script's _start and _finalize say
        os.environ["EXP_RUN_TOKEN"] = run["token"]
        try:
            for i in range(len(vals)):
                runner.start_replicate(ws, v, LaunchOptions(), i, pid=dead.pid)
        finally:
            del os.environ["EXP_RUN_TOKEN"]
        for i in range(len(vals)):
            record, analysis, why = runner.conclude(ws, v, 0, replicate=i)
    else:
        (out / "status.json").write_text(json.dumps({"status": "finished", "step": 20}), encoding="utf-8")
        (out / "summary.json").write_text(json.dumps({"status": "finished", "steps": 20, "load": load}), encoding="utf-8")
        record, analysis, why = runner.conclude(ws, v, 0)
    assert why is None and record.status == "analyzed", why


def make_member(ws, version: str, lr: float, replicates: int = 3) -> None:
    """exp new X.Y.k --from X.Y.0, its sections, its config, and its group and change through the record API."""
    v = Version.parse(version)
    rec = lifecycle.create(ws, v, parent=P, description=f"lr {lr:g}")
    fill(rec.path, MEMBER_HUMAN)
    lifecycle.set_config(ws, v, [f"learning_rate={lr}", f"replicates={replicates}", "max_steps=20", "warmup_steps=2"])
    with records.update(ws, v) as r:
        r.meta["group"] = str(P)
        r.meta["changes"] = {"learning_rate": lr}
    _c = lifecycle.check_record(ws, v); assert _c["status"] == "ready", _c["problems"]


def make_group(ws, members=("1.5.1", "1.5.2", "1.5.3")) -> None:
    rec = lifecycle.create(ws, P, description="learning-rate sweep")
    fill(rec.path, HUMAN)
    lifecycle.set_config(ws, P, ["max_steps=20", "warmup_steps=2", "learning_rate=2e-3"])  # no member repeats it
    for v in members:
        make_member(ws, v, LRS[v])


@pytest.fixture
def group(ws):
    make_group(ws)
    for v in ("1.5.1", "1.5.2", "1.5.3"):
        finish(ws, v, VAL[v], TPS[v])
    return ws


# -- a replicated record ---------------------------------------------------------------------------------------
def test_a_replicated_record_has_the_mean_with_sd_n_and_interval_in_show_json_the_record_and_the_evidence(ws):
    make_group(ws, members=("1.5.1",))
    finish(ws, "1.5.1", VAL["1.5.1"], TPS["1.5.1"])
    proc = run_exp("show", "1.5.1", "--json", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    analysis = shown["analysis"]
    iv = intervals.t_interval(VAL["1.5.1"])
    assert analysis["metrics"]["val_loss"] == pytest.approx(5.45) and analysis["metrics"]["tokens_per_s"] == pytest.approx(1000.0)
    stat = analysis["replicate_stats"]["val_loss"]
    assert stat["n"] == 3 and stat["sd"] == pytest.approx(0.05) and stat["mean"] == pytest.approx(5.45)
    assert stat["ci_low"] == pytest.approx(iv.low) and stat["ci_high"] == pytest.approx(iv.high)
    assert stat["ci_high"] - 5.45 == pytest.approx(T2 * 0.05 / math.sqrt(3))
    assert len(analysis["replicates"]) == 3 and analysis["metrics"]["steps"] == 20
    # the member's own verdicts: the mean's interval (val_loss < 5.3 is refuted: the whole interval is above)
    found = {v["claim"]: v for v in shown["verdicts"]}
    assert found["val_loss < 5.3"]["verdict"] == "refuted" and found["val_loss < 5.3"]["n"] == 3, found["val_loss < 5.3"]
    assert found["tokens_per_s >= 500"]["verdict"] == "confirmed"
    # the record: mean ± half-width (sd, n)
    text = ws.record_path(Version.parse("1.5.1")).read_text(encoding="utf-8")
    assert "3 次重复实验" in text and f"5.45 ± {T2 * 0.05 / math.sqrt(3):.4g} (sd 0.05, n=3)" in text
    # citable evidence, and a plot with each replicate under the mean
    ev = results.evidence(ws, records.load(ws, Version.parse("1.5.1")))
    assert ev["replicates"]["n"] == 3 and ev["replicates"]["metrics"]["val_loss"]["ci_low"] == pytest.approx(iv.low)
    assert ev["metrics"]["val_loss"] == pytest.approx(5.45)
    assert (ws.out_dir(Version.parse("1.5.1")) / "plots" / "loss.png").stat().st_size > 1000


def test_a_record_of_one_run_stays_as_it_was(ws):
    make_group(ws, members=())
    lifecycle.check_record(ws, P)
    dead = subprocess.Popen(["true"])
    dead.wait()
    runner.begin(ws, P, LaunchOptions().check(), pid=dead.pid)
    _write_replicate(ws.out_dir(P), 5.2, 1000.0)
    runner.conclude(ws, P, 0)
    analysis = store.read_meta(ws, P)["analysis"]
    assert analysis["metrics"]["val_loss"] == 5.2 and "replicate_stats" not in analysis and "replicates" not in analysis
    assert "±" not in ws.record_path(P).read_text(encoding="utf-8").split("exp:generated metrics")[1].split("/exp")[0]


# -- the group's analysis ---------------------------------------------------------------------------------------
def test_group_analysis_is_partial_while_a_member_is_pending_then_whole(ws):
    make_group(ws)
    finish(ws, "1.5.1", VAL["1.5.1"], TPS["1.5.1"])
    finish(ws, "1.5.2", VAL["1.5.2"], TPS["1.5.2"])
    proc = run_exp("analyze", "1.5.0", "--json", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    partial = json.loads(proc.stdout)
    assert partial["group"] and partial["partial"] and partial["pending"] == ["1.5.3"]
    assert partial["status"] == "analyzed"  # the parent never ran: ready → analyzed, reviewable
    rows = {m["version"]: m for m in partial["members"]}
    assert rows["1.5.3"]["state"] == "pending" and rows["1.5.1"]["state"] == "analyzed"
    claims_ = {v["claim"]: v for v in partial["verdicts"]}
    assert claims_["val_loss@1.5.3 < val_loss@1.5.1"]["pending"] and "1.5.3 尚未完成（状态 ready）" == claims_[
        "val_loss@1.5.3 < val_loss@1.5.1"]["reason"]
    text = ws.record_path(P).read_text(encoding="utf-8")
    assert "<!-- exp:generated group -->" in text and "部分分析" in text and "1.5.3" in text
    assert "本记录自身没有运行" in text  # its metrics section points at the group's
    with pytest.raises(review.ReviewError, match="member 1.5.3 is ready"):  # a partial group is not reviewed
        review.require_group_reviewable(ws, records.load(ws, P))
    # the last member ends: the analysis is whole
    finish(ws, "1.5.3", VAL["1.5.3"], TPS["1.5.3"])
    whole = grouping.analyze(ws, P)
    assert not whole["partial"] and whole["pending"] == [] and whole["swept"] == ["learning_rate"]
    text = ws.record_path(P).read_text(encoding="utf-8")
    assert "部分分析" not in text and text.count("<!-- exp:generated group -->") == 1
    assert lifecycle.check(ws, records.load(ws, P)) == [] or all(
        p.level == "warning" for p in lifecycle.check(ws, records.load(ws, P)))


def test_group_rows_best_member_claims_and_plots(group):
    ws = group
    result = grouping.analyze(ws, P)
    rows = {m["version"]: m for m in result["members"]}
    assert rows["1.5.2"]["label"] == "learning_rate=0.003" and rows["1.5.2"]["n"] == 3
    st = rows["1.5.2"]["stats"]["val_loss"]
    iv = intervals.t_interval(VAL["1.5.2"])
    assert st["mean"] == pytest.approx(5.05) and st["ci_low"] == pytest.approx(iv.low) and st["ci_high"] == pytest.approx(iv.high)
    assert rows["1.5.1"]["verdict_counts"] == {"confirmed": 1, "refuted": 1, "inconclusive": 0}
    # val_loss < 5.3: 1.5.1's interval is above (refuted), 1.5.2's below, 1.5.3's straddles it
    assert result["member_verdict_counts"] == {"confirmed": 4, "refuted": 1, "inconclusive": 1}
    best = result["best"]
    assert best["version"] == "1.5.2" and best["metric"] == "val_loss" and best["overlap"] is False
    assert best["runner_up"] == "1.5.1"  # 5.45 against 1.5.3's 5.48
    found = {v["claim"]: v for v in result["verdicts"]}
    assert found["val_loss@1.5.2 < val_loss@1.5.1"]["verdict"] == "confirmed"
    assert found["val_loss@1.5.2 < val_loss@1.5.1"]["method"] == "welch"
    assert found["tokens_per_s@1.5.3 >= tokens_per_s@1.5.1 * 0.9"]["verdict"] == "confirmed"
    assert found["val_loss@1.5.3 < val_loss@1.5.1"]["verdict"] == verdicts.WITHIN_NOISE
    assert found["val_loss@1.5.1 < 5.3"]["verdict"] == "refuted" and found["val_loss@1.5.1 < 5.3"]["method"] == "student_t"
    assert result["verdict_counts"] == {"confirmed": 2, "refuted": 1, "inconclusive": 1}
    # member claims are the group's, not the members': no member was judged on them
    for v in LRS:
        assert all("@" not in x["claim"] for x in store.read_meta(ws, Version.parse(v))["analysis"]["verdicts"])
    for name in ("group_metric.png", "group_curves.png"):
        assert (ws.out_dir(P) / "plots" / name).stat().st_size > 1000
    saved = json.loads((ws.out_dir(P) / grouping.GROUP_FILE).read_text(encoding="utf-8"))
    assert saved["best"]["version"] == "1.5.2"
    text = ws.record_path(P).read_text(encoding="utf-8")
    assert "按 `val_loss` 最佳**：1.5.2" in text and "95% 置信区间不重叠" in text and "group_curves" in text
    # the parent's ai sections are drafted from the group's evidence, every number cited
    assert result["drafted"] == ["analysis", "diagnosis", "suggestions"] and result["untraceable"] == []
    assert "均值 5.05" in records.load(ws, P).block("ai", "analysis").text
    assert [p for p in lifecycle.check(ws, records.load(ws, P)) if p.level == "error"] == []
    filled = results.fill(ws, P, "analysis", "最佳成员的验证损失均值为 [[group.best.mean]]，n 为 [[group.members.1.n]]。")
    assert filled["text"] == "最佳成员的验证损失均值为 5.05，n 为 3。" and filled["untraceable"] == []
    assert grouping.analyze(ws, P)["drafted"] == ["diagnosis", "suggestions"]  # the filled section is kept


def test_exp_check_validates_claims_that_name_members(group):
    ws = group
    path = ws.record_path(P)
    fill(path, {**HUMAN, "expected": GROUP_EXPECTED + "- val_loss@1.5.9 < val_loss@1.5.1\n- val_loss < val_loss@1.5.1\n"})
    proc = run_exp("check", "1.5.0", "--json", cwd=ws.root)
    problems = json.loads(proc.stdout)["problems"]
    said = [p["message"] for p in problems if p["level"] == "error"]
    assert any("names 1.5.9, which is not a member of 1.5.0" in m for m in said), problems
    assert any("names a member on the right only" in m for m in said)
    assert not any("1.5.2" in m or "1.5.3" in m for m in said)  # the members it names are fine
    # a member may not hold a group's claim
    fill(ws.record_path(Version.parse("1.5.1")), {**MEMBER_HUMAN, "expected": "- val_loss@1.5.2 < 5\n"})
    found = lifecycle.check(ws, records.load(ws, Version.parse("1.5.1")))
    assert any("does not lead a group" in p.message and p.level == "error" for p in found)


def test_the_parent_as_a_side_and_the_context_an_assistant_reads(group):
    ws = group
    fill(ws.record_path(P), {**HUMAN, "expected": "- val_loss@1.5.0 < 9\n- val_loss@1.5.2 < val_loss@1.5.1\n"})
    result = grouping.analyze(ws, P)
    found = {v["claim"]: v for v in result["verdicts"]}
    assert found["val_loss@1.5.0 < 9"]["verdict"] == "inconclusive"
    assert found["val_loss@1.5.0 < 9"]["reason"] == "1.5.0（实验组的父实验）自身没有已分析的运行"
    context = results.context(ws, P)
    assert context["analyzed"] and context["group_analysis"]["best"]["version"] == "1.5.2"
    ev = context["evidence"]["group"]
    assert ev["size"] == 3 and ev["members"][1]["version"] == "1.5.2" and ev["best"]["version"] == "1.5.2"
    assert ev["members"][1]["stats"]["val_loss"]["ci_low"] == pytest.approx(intervals.t_interval(VAL["1.5.2"]).low)


def test_a_hand_edit_of_the_group_section_is_refused_and_regenerate_restores_it(group):
    ws = group
    grouping.analyze(ws, P)
    path = ws.record_path(P)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("**按 `val_loss` 最佳**", "**我觉得最佳**"), encoding="utf-8")
    proc = run_exp("analyze", "1.5.0", cwd=ws.root)
    assert proc.returncode == 1 and "'group' was edited by hand" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "我觉得最佳" in path.read_text(encoding="utf-8")  # nothing of the person's was lost
    proc = run_exp("set", "1.5.0", "--regenerate", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    assert "我觉得最佳" not in path.read_text(encoding="utf-8") and "按 `val_loss` 最佳" in path.read_text(encoding="utf-8")
    assert any("group" in p.name for p in ws.discarded_dir().iterdir())
    assert run_exp("analyze", "1.5.0", cwd=ws.root).returncode == 0


# -- review and commit of the group ----------------------------------------------------------------------------
def _git(ws, *args):
    return subprocess.run(["git", *args], cwd=ws.root, check=True, capture_output=True, text=True).stdout


def test_group_review_binds_every_member_and_commit_commits_them_all_in_one(group, tmp_path, monkeypatch):
    ws = group
    git_identity(monkeypatch, tmp_path)
    _git(ws, "init", "-q")
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "workspace")
    grouping.analyze(ws, P)
    t = terminal(ws, "1.5.0")
    t.expect(review.PROMPT.strip())
    screen = t.screen
    for v in LRS:
        assert v in screen
    assert "val_loss@1.5.2 < val_loss@1.5.1" in screen and "binds the group record and every member" in screen
    t.send("a")
    t.expect("approved")
    assert t.wait() == 0
    state = approval.approval_state(ws, records.load(ws, P))
    assert state["valid"] and state["members"] == sorted(LRS)
    for v in LRS:
        assert store.read_meta(ws, Version.parse(v))["status"] == "approved"
    # a member edited after the approval: the group's approval lapses, naming it
    path = ws.record_path(Version.parse("1.5.2"))
    path.write_text(path.read_text(encoding="utf-8").replace("损失曲线。", "损失曲线与梯度。"), encoding="utf-8")
    state = approval.approval_state(ws, records.load(ws, P))
    assert state["stale"] and state["changed"] == ["member 1.5.2"]
    proc = run_exp("commit", "1.5.0", cwd=ws.root)
    assert proc.returncode == 1 and "member 1.5.2" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    shown = json.loads(run_exp("show", "1.5.0", "--json", cwd=ws.root).stdout)
    assert any("member 1.5.2" in w for w in shown["warnings"])
    # reviewed again, then one commit of the group
    assert records.load(ws, Version.parse("1.5.2")).status in ("approved", "analyzed")
    lifecycle.check_record(ws, Version.parse("1.5.2"))  # its own approval went stale too: back to analyzed
    lifecycle.check_record(ws, P)
    t = terminal(ws, "1.5.0")
    t.expect(review.PROMPT.strip())
    t.send("a")
    t.expect("approved")
    assert t.wait() == 0
    before = _git(ws, "rev-parse", "HEAD").strip()
    proc = run_exp("commit", "1.5.0", "--json", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert _git(ws, "rev-parse", "HEAD~1").strip() == before  # one commit
    files = set(_git(ws, "show", "--name-only", "--format=", "HEAD").split())
    for v in ("1.5.0", *LRS):
        assert f"experiment/experiment_{v}.md" in files and f"experiment/experiment_{v}.state.json" in files
    assert "out/experiment_1.5.0/group_analysis.json" in info["paths"], info["paths"]
    assert "out/experiment_1.5.2/r1/summary.json" in info["paths"]
    message = _git(ws, "log", "-1", "--format=%B")
    assert "Verdicts: 6 confirmed, 2 refuted, 2 inconclusive" in message  # the members' 4/1/1 and the group's 2/1/1
    assert "Group-Verdicts: 2 confirmed, 1 refuted, 1 inconclusive" in message
    assert "Member: 1.5.2 learning_rate=0.003 (2 confirmed)" in message
    assert info["members"] == sorted(LRS)
    for v in ("1.5.0", *LRS):
        assert store.read_meta(ws, Version.parse(v))["status"] == "committed"
    assert _git(ws, "status", "--porcelain", "experiment").strip() == ""


# -- report and tracker ------------------------------------------------------------------------------------------
def test_report_and_tracker_show_groups_and_replicates(group):
    ws = group
    grouping.analyze(ws, P)
    proc = run_exp("report", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    text = (ws.experiment_dir / "experiment_tracker.csv").read_text(encoding="utf-8-sig")
    rows = {r["version"]: r for r in csv.DictReader(io.StringIO(text))}
    m = rows["1.5.2"]
    assert m["group"] == "1.5.0" and m["n"] == "3" and float(m["val_loss"]) == pytest.approx(5.05)
    assert float(m["val_loss_sd"]) == pytest.approx(0.05) and float(m["tokens_per_s_sd"]) == pytest.approx(5.0)
    assert rows["1.5.0"]["group"] == "" and rows["1.5.0"]["n"] == ""
    md = (ws.experiment_dir / "EXPERIMENT_REPORT.md").read_text(encoding="utf-8")
    groups_part = md.split("## 实验组")[1].split("## 谱系")[0]
    assert "### 1.5.0" in groups_part and all(v in groups_part for v in LRS)
    assert "5.05 ± 0.05 (n=3)" in groups_part
    assert catalog.rows(ws)[1]["group"] == "1.5.0"


# -- a tiny real group ------------------------------------------------------------------------------------------
def test_a_group_of_two_tiny_real_trainer_runs_is_analysed_as_a_group(ws):
    from test_runner import TINY

    parent = Version.parse("1.6.0")
    rec = lifecycle.create(ws, parent, description="tiny lr sweep")
    fill(rec.path, {**HUMAN, "expected": "- val_loss@1.6.2 < val_loss@1.6.1 + 5\n- tokens_per_s@1.6.2 >= 1\n"})
    lifecycle.set_config(ws, parent, [*TINY, "max_steps=10"])
    for v, lr in (("1.6.1", "0.002"), ("1.6.2", "0.001")):
        version = Version.parse(v)
        r = lifecycle.create(ws, version, parent=parent, description=f"lr {lr}")
        fill(r.path, MEMBER_HUMAN)
        lifecycle.set_config(ws, version, [f"learning_rate={lr}"])
        with records.update(ws, version) as m:
            m.meta["group"], m.meta["changes"] = str(parent), {"learning_rate": float(lr)}
        proc = run_exp("run", v, cwd=ws.root, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert store.read_meta(ws, version)["status"] == "analyzed"
    proc = run_exp("analyze", "1.6.0", "--json", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["partial"] and [m["n"] for m in result["members"]] == [1, 1]
    assert all(math.isfinite(m["stats"]["val_loss"]["mean"]) for m in result["members"])
    assert result["best"]["sure"] in ("single_runs", "single_runs_within_noise")
    found = {x["claim"]: x for x in result["verdicts"]}
    assert found["val_loss@1.6.2 < val_loss@1.6.1 + 5"]["verdict"] == "confirmed"
    assert found["tokens_per_s@1.6.2 >= 1"]["verdict"] == "confirmed"
    assert (ws.out_dir(parent) / "plots" / "group_curves.png").is_file()
    assert store.read_meta(ws, parent)["status"] == "analyzed"

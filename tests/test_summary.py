"""`exp summary`: experiment/SUMMARY.md from approved or committed records only.

Records are analysed for real (`results.analyze` over fake trainer outputs, the runner's own
ending for a replicated group), approved through `review.record_decision` and committed through
`commit.commit` in a real git repository. The tests check that only records whose approval holds
give numbers (a pending, a stale and a changed-after-commit record give none), that every number
of the file is a citation which re-resolves to its record's evidence, that a refuted expectation
is reported as refuted, the resume bullets, the JSON, escaping of a person's text, zh and en, and
the command through real `exp` subprocesses."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import fill, run_exp
from test_reporting import fake_run, new
from test_review import REVIEWER, git_identity

from expkit import citations, commit, comparison, lifecycle, records, results, review, store, summary, view
from expkit.version import Version
from expkit.workspace import Workspace

#: A description a person wrote: HTML, a table pipe, emphasis, a link and a would-be citation.
NASTY = "<script>alert(1)</script> | **bold** _x_ [[metrics.val_loss]] [link](http://example.com) `code` #3"


def _git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def _script(ws, version: str) -> None:
    path = ws.run_script_path(Version.parse(version))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/usr/bin/env bash\n# experiment {version}\n", encoding="utf-8")


def approve(ws, version: str) -> None:
    _script(ws, version)
    review.record_decision(ws, Version.parse(version), "approve", "", REVIEWER)


@pytest.fixture
def project(ws, tmp_path, monkeypatch):
    """0.1.0 committed (val ≈ 5.05, `val_loss < 5` refuted); 0.1.1 from it, approved (≈ 4.55, both
    expectations confirmed); 0.1.2 from it, analysed but not reviewed (≈ 4.05: the best of all,
    pending); 0.1.3 a draft."""
    git_identity(monkeypatch, tmp_path)
    _git(ws.root, "init", "-q", "-b", "main")
    _git(ws.root, "add", "-A")
    _git(ws.root, "commit", "-qm", "workspace")
    new(ws, "0.1.0", desc=NASTY)
    fake_run(ws, "0.1.0", 5.0)
    new(ws, "0.1.1", "0.1.0", desc="half lr")
    fake_run(ws, "0.1.1", 4.5, lr=1.5e-3)
    new(ws, "0.1.2", "0.1.0", desc="quarter lr")
    fake_run(ws, "0.1.2", 4.0, lr=7.5e-4)
    new(ws, "0.1.3", "0.1.0", desc="not run")
    approve(ws, "0.1.0")
    commit.commit(ws, Version.parse("0.1.0"))
    approve(ws, "0.1.1")
    return ws


def evidence_of(ws, version: str) -> dict:
    return results.evidence(ws, records.load(ws, Version.parse(version)))


def pieces(r: dict) -> list[dict]:
    """Every line of the file that carries numbers: the overview and the bullets (with --style
    bullets, the findings are the bullets; each finding's text is the line that style writes)."""
    found = [*r["overview"], *r["bullets"]]
    if r["style"] == "resume":
        return found
    found += [*r["best"], *r["improvements"], *r["groups"]]
    for items in r["hypotheses"].values():
        found += items
    return found


def assert_traceable(ws, r: dict) -> str:
    """Each line's source re-resolves, against its record's evidence (or the summary's counts), to
    the line written in SUMMARY.md; each citation's value is the evidence's; and no number of the
    file stands outside a citation (versions, hashes in code, dates and quoted descriptions aside)."""
    text = (ws.root / r["path"]).read_text(encoding="utf-8")
    lines = text.split("\n")
    evidences = {None: r["counts"]}
    cited_on: dict[int, list[str]] = {}
    for p in pieces(r):
        if p["record"] not in evidences:
            evidences[p["record"]] = evidence_of(ws, p["record"])
        ev = evidences[p["record"]]
        again, cited = citations.resolve(p["source"], ev)
        assert again == p["text"], p
        assert p["text"] in lines, p["text"]
        assert [c.text for c in cited] == [c["text"] for c in p["citations"]]
        for c in p["citations"]:
            found, value = citations._lookup(ev, c["path"])
            assert found and value == c["value"], c
            assert c["record"] == p["record"]
        cited_on.setdefault(lines.index(p["text"]) + 1, []).extend(c["text"] for c in p["citations"])
    human = {e.version: summary.md_text(e.meta.get("description") or "") for e in store.entries(ws)}
    bare = citations.check(text, {}, [], human={str(k): v for k, v in human.items()})
    for f in bare:
        assert any(f.number in t for t in cited_on.get(f.line, [])), (f, lines[f.line - 1])
    return text


# -- what counts ------------------------------------------------------------------------------------------
def test_only_approved_and_committed_records_give_numbers_and_the_others_are_pending(project):
    ws = project
    r = summary.write_summary(ws, lang="en")
    assert r["path"] == "experiment/SUMMARY.md"
    c = r["counts"]
    assert (c["records"], c["counted"], c["approved"], c["committed"], c["pending"], c["groups"]) == (4, 2, 1, 1, 2, 0)
    assert [x["version"] for x in r["counted"]] == ["0.1.0", "0.1.1"]
    assert {p["version"]: p["reason"] for p in r["pending"]} == {"0.1.2": "not_reviewed", "0.1.3": "not_reviewed"}
    # the best is the best of the counted ones, though the pending 0.1.2 is lower still
    (best,) = r["best"]
    ev = evidence_of(ws, "0.1.1")
    assert (best["task"], best["metric"], best["direction"], best["version"]) == ("pretrain", "best_val_loss", "lower", "0.1.1")
    assert best["value"] == ev["metrics"]["best_val_loss"] < evidence_of(ws, "0.1.0")["metrics"]["best_val_loss"]
    pending_value = evidence_of(ws, "0.1.2")["metrics"]["best_val_loss"]
    assert pending_value < best["value"]
    # 0.1.1 against its parent 0.1.0: the stored deltas, marked better
    (imp,) = r["improvements"]
    delta = ev["references"]["parent"]["deltas"]["best_val_loss"]
    assert (imp["version"], imp["role"], imp["reference"], imp["improved"]) == ("0.1.1", "parent", "0.1.0", True)
    assert (imp["value"], imp["reference_value"], imp["abs"], imp["rel"]) == (delta["value"], delta["reference"], delta["abs"], delta["rel"])
    text = assert_traceable(ws, r)
    # nothing of a pending record: no citation of it, none of its numbers, but it is listed
    assert all(p["record"] in (None, "0.1.0", "0.1.1") for p in pieces(r))
    assert citations._render(pending_value, None) not in text
    pending = text.split("## Pending (not counted)")[1].split("##")[0]
    assert "[0.1.2](experiment_0.1.2.md)" in pending and "analyzed: not reviewed yet" in pending
    assert "[0.1.3](experiment_0.1.3.md)" in pending and "draft: not reviewed yet" in pending
    # each counted record: linked, with its approved content hash (short in lines, full in the sources)
    for x in r["counted"]:
        sha = records.load(ws, Version.parse(x["version"])).meta["review"]["approved"]["record_sha256"]
        assert x["sha256"] == sha and x["short"] == sha[:summary.SHORT_HASH]
        assert f"`{sha}`" in text.split("## Sources")[1]
    assert f"[0.1.1](experiment_0.1.1.md) `sha256:{r['counted'][1]['short']}`" in text
    # no clock in the file: the same records write the same bytes
    assert summary.write_summary(ws, lang="en") == r and (ws.root / r["path"]).read_text(encoding="utf-8") == text


def test_an_approval_that_no_longer_holds_makes_the_record_pending(project):
    ws = project
    # 0.1.1 edited after its approval; 0.1.0 edited after its commit
    for v, old, new_text in (("0.1.1", "曲线。", "曲线与梯度。"), ("0.1.0", "比较学习率。", "比较学习率！")):
        path = ws.record_path(Version.parse(v))
        path.write_text(path.read_text(encoding="utf-8").replace(old, new_text, 1), encoding="utf-8")
    r = summary.write_summary(ws, lang="en")
    reasons = {p["version"]: p for p in r["pending"]}
    assert reasons["0.1.1"]["reason"] == "stale" and "experiment/experiment_0.1.1.md" in reasons["0.1.1"]["why"]
    assert reasons["0.1.0"]["reason"] == "changed_after_commit"
    assert r["counts"]["counted"] == 0 and r["best"] == [] and r["improvements"] == [] and r["bullets"] == []
    assert all(not items for items in r["hypotheses"].values())
    text = assert_traceable(ws, r)
    assert "No record is approved or committed yet" in text
    assert "approved, but `experiment/experiment_0.1.1.md` changed since the approval" in text
    assert "committed, but `experiment/experiment_0.1.0.md` changed since the commit" in text


def test_a_refuted_expectation_is_reported_as_refuted(project):
    ws = project
    r = summary.write_summary(ws, lang="en")
    refuted = r["hypotheses"]["refuted"]
    assert [(h["version"], h["claim"]) for h in refuted] == [("0.1.0", "val_loss < 5")]
    ev = evidence_of(ws, "0.1.0")
    verdict = next(v for v in ev["verdicts"] if v["claim"] == "val_loss < 5")
    assert verdict["verdict"] == "refuted" and refuted[0]["observed"] == verdict["observed"]
    assert {(h["version"], h["claim"]) for h in r["hypotheses"]["confirmed"]} == {
        ("0.1.1", "val_loss < 5"), ("0.1.1", "best_val_loss <= parent - 0.05")}
    text = (ws.root / r["path"]).read_text(encoding="utf-8")
    section = text.split("### Refuted")[1].split("###")[0]
    assert refuted[0]["text"] in section and "`val_loss < 5` — refuted: observed" in refuted[0]["text"]
    assert "0.1.0" not in text.split("### Confirmed")[1].split("###")[0]
    zh = summary.write_summary(ws, lang="zh")
    assert "`val_loss < 5` —— 不成立：实测" in zh["hypotheses"]["refuted"][0]["text"]
    assert "### 不成立（被推翻）" in (ws.root / zh["path"]).read_text(encoding="utf-8")
    resume = summary.write_summary(ws, lang="en", style="resume")
    assert any(b["text"].startswith("- Expectation refuted: `val_loss < 5` does not hold") and b["record"] == "0.1.0"
               for b in resume["bullets"])


def test_resume_gives_three_to_six_bullets_each_with_its_record_and_cited_number(project):
    ws = project
    for lang in ("en", "zh"):
        r = summary.write_summary(ws, lang=lang, style="resume")
        bullets = r["bullets"]
        assert summary.RESUME_MIN <= len(bullets) <= summary.RESUME_MAX
        short = {x["version"]: x["short"] for x in r["counted"]}
        for b in bullets:
            assert b["record"] in short and b["citations"], b
            assert f"[{b['record']}](experiment_{b['record']}.md) `sha256:{short[b['record']]}`" in b["text"]
        lines = assert_traceable(ws, r).split("\n")
        at = [lines.index(b["text"]) for b in bullets]
        assert at == sorted(at) and at[-1] - at[0] == len(at) - 1  # one list, in order
    # the best result leads, the improvement over the parent follows
    r = summary.write_summary(ws, lang="en", style="resume")
    assert r["bullets"][0]["text"].startswith("- Reached `best_val_loss` ") and r["bullets"][0]["record"] == "0.1.1"
    assert r["bullets"][1]["text"].startswith("- Improved `best_val_loss` from ") and "over parent [0.1.0]" in r["bullets"][1]["text"]


def test_a_persons_markdown_and_html_stay_text(project):
    pytest.importorskip("markdown_it")
    from markdown_it import MarkdownIt

    ws = project
    r = summary.write_summary(ws, lang="en")
    text = (ws.root / r["path"]).read_text(encoding="utf-8")
    assert "<script>" not in text and "[[" not in text
    assert summary.md_text(NASTY) in text
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert not [t for t in tokens if t.type.startswith("html")]
    inline = [c for t in tokens if t.type == "inline" for c in (t.children or [])]
    assert not [c for c in inline if c.type.startswith("html")]
    assert not any(c.type == "link_open" and c.attrGet("href") == "http://example.com" for c in inline)
    assert "<script>alert(1)</script> | **bold** _x_ [[metrics.val_loss]]" in "".join(c.content for c in inline if c.type == "text")
    # the sources table keeps its six columns in every row
    rows = [t for t in tokens if t.type == "tr_open"]
    cells_per_row = []
    for i, t in enumerate(tokens):
        if t.type == "tr_open":
            j, n = i + 1, 0
            while tokens[j].type != "tr_close":
                n += tokens[j].type in ("td_open", "th_open")
                j += 1
            cells_per_row.append(n)
    assert rows and set(cells_per_row) >= {4, 6} and set(cells_per_row) <= {4, 6}


def test_zh_is_the_default_of_a_zh_workspace_and_en_is_asked_for(project):
    ws = project
    assert ws.default_lang == "zh"
    zh = summary.write_summary(ws)
    text = (ws.root / zh["path"]).read_text(encoding="utf-8")
    assert zh["lang"] == "zh" and text.startswith("# 项目总结\n")
    for heading in ("## 概览", "## 各任务最佳结果", "## 相对父实验与基线", "## 预期结果", "## 待审（不计入）", "## 来源"):
        assert heading in text
    assert "- 计入：4 条记录中的 2 条（已批准 1，已提交 1）；待审 2 条，不贡献任何数字。" in text
    assert_traceable(ws, zh)
    en = summary.write_summary(ws, lang="en")
    text = (ws.root / en["path"]).read_text(encoding="utf-8")
    assert text.startswith("# Project summary\n") and "- Counted: 2 of 4 records (1 approved, 1 committed); 2 pending" in text
    with pytest.raises(summary.UsageError):
        summary.write_summary(ws, lang="fr")
    with pytest.raises(summary.UsageError):
        summary.write_summary(ws, style="essay")


# -- tasks, groups and replicates ---------------------------------------------------------------------
TOY = '\n[tool.exp.tasks.toy]\ncommand = "python toy.py --config {config} --out-dir {out_dir}"\nmetrics = { score = "higher", loss = "lower" }\n'
TOY_HUMAN = {"goal": "分数。", "hypothesis": "分数更高。", "expected": "- score >= 0.75\n", "focus": "分数。"}


def analysed(ws, version: str, task: str, table: dict, claim: tuple[str, str, float], baseline: dict | None = None) -> None:
    """An approved record of ``task``, analysed from its trainer's numbers (the analysis in the
    shape `results.compute` stores; deltas by `comparison.metric_deltas`); ``claim``: (text,
    metric, threshold) of its one expected result, judged `>=`."""
    v = Version.parse(version)
    rec = lifecycle.create(ws, v, task=task, description=f"{task} {version}")
    text, metric, threshold = claim
    fill(rec.path, {**TOY_HUMAN, "expected": f"- {text}\n"})
    verdict = "confirmed" if table[metric] >= threshold else "refuted"
    with records.update(ws, v) as r:
        r.meta["run"] = {"status": "finished", "exit_code": 0}
        r.meta["analysis"] = {
            "metrics": table, "verdicts": [{"claim": text, "metric": metric, "verdict": verdict,
                                            "observed": table[metric], "reference": threshold}],
            "verdict_counts": {"confirmed": int(verdict == "confirmed"), "refuted": int(verdict == "refuted"), "inconclusive": 0},
            "anomalies": [],
            "references": ({"baseline": {"version": baseline["version"], "has_run": True,
                                         "deltas": comparison.metric_deltas(table, baseline["table"])}} if baseline else {}),
        }
        r.meta["status"] = "analyzed"
        view.regenerate(ws, r, ("execution", "metrics"))
    approve(ws, version)


def test_the_best_of_each_task_follows_its_direction(project):
    ws = project
    (ws.root / "pyproject.toml").write_text((ws.root / "pyproject.toml").read_text(encoding="utf-8") + TOY, encoding="utf-8")
    ws = Workspace.find()
    analysed(ws, "2.0.0", "toy", {"score": 0.70, "loss": 0.9}, ("score >= 0.75", "score", 0.75))
    analysed(ws, "2.0.1", "toy", {"score": 0.80, "loss": 1.2}, ("score >= 0.75", "score", 0.75),
             baseline={"version": "2.0.0", "table": {"score": 0.70, "loss": 0.9}})
    r = summary.write_summary(ws, lang="en")
    best = {b["task"]: b for b in r["best"]}
    assert set(best) == {"pretrain", "toy"} and r["counts"]["tasks"] == 2
    # score is the toy task's first metric, its primary: higher is better
    assert (best["toy"]["metric"], best["toy"]["direction"], best["toy"]["version"], best["toy"]["value"]) == (
        "score", "higher", "2.0.1", 0.80)
    imp = next(i for i in r["improvements"] if i["version"] == "2.0.1")
    assert (imp["role"], imp["reference"], imp["metric"], imp["improved"], imp["change"]) == ("baseline", "2.0.0", "score", True, "better")
    assert "vs baseline [2.0.0](experiment_2.0.0.md): `score` 0.8 vs 0.7 (+0.1, +14.3%), better" in imp["text"]
    assert [h["version"] for h in r["hypotheses"]["refuted"]] == ["0.1.0", "2.0.0"]
    assert_traceable(ws, r)


def test_a_classifier_is_judged_on_macro_f1_and_against_its_majority_class_baseline(ws):
    analysed(ws, "3.0.0", "classify", {"test_macro_f1": 0.41, "test_acc": 0.52, "majority_macro_f1": 0.08, "majority_acc": 0.31},
             ("test_macro_f1 >= 0.3", "test_macro_f1", 0.3))
    analysed(ws, "3.0.1", "classify", {"test_macro_f1": 0.37, "test_acc": 0.58, "majority_macro_f1": 0.08, "majority_acc": 0.31},
             ("test_macro_f1 >= 0.3", "test_macro_f1", 0.3))
    r = summary.write_summary(ws, lang="en")
    (best,) = r["best"]
    assert (best["task"], best["metric"], best["direction"], best["version"]) == ("classify", "test_macro_f1", "higher", "3.0.0")
    own = {i["version"]: i for i in r["improvements"]}
    assert set(own) == {"3.0.0", "3.0.1"} and all(i["role"] == "own_baseline" for i in own.values())
    assert (own["3.0.0"]["reference"], own["3.0.0"]["value"], own["3.0.0"]["reference_value"], own["3.0.0"]["improved"]) == (
        "majority_macro_f1", 0.41, 0.08, True)
    assert own["3.0.0"]["abs"] is None  # the evidence holds no delta of the two: none is computed and written
    assert "`test_macro_f1` 0.41 vs `majority_macro_f1` 0.08, better" in own["3.0.0"]["text"]
    assert_traceable(ws, r)
    zh = summary.write_summary(ws, lang="zh", style="resume")
    assert zh["bullets"][0]["text"].startswith("- classify 任务最佳：测试集宏 F1 `test_macro_f1` 达到 0.41（越高越好）")
    assert any("同一运行测得的基线" in b["text"] for b in zh["bullets"])
    assert summary.RESUME_MIN <= len(zh["bullets"]) <= summary.RESUME_MAX
    assert_traceable(ws, zh)


def test_a_group_with_replicates_gives_intervals_and_its_best_member(ws):
    from test_groups import LRS, P, TPS, VAL, finish, make_group

    from expkit import grouping

    make_group(ws)
    for v in LRS:
        finish(ws, v, VAL[v], TPS[v])
    grouping.analyze(ws, P)
    review.record_group_decision(ws, P, "approve", "", REVIEWER)
    r = summary.write_summary(ws, lang="en")
    c = r["counts"]
    assert (c["counted"], c["groups"], c["pending"]) == (4, 1, 0)
    (group,) = r["groups"]
    ev = evidence_of(ws, str(P))
    assert group["version"] == str(P) and group["members"] == sorted(LRS) and group["best"] == ev["group"]["best"]["version"]
    (best,) = r["best"]
    member = evidence_of(ws, best["version"])
    stats = member["replicates"]["metrics"][best["metric"]]
    assert best["interval"]["n"] == stats["n"] == 3
    assert (best["interval"]["ci_low"], best["interval"]["ci_high"]) == (stats["ci_low"], stats["ci_high"])
    assert f"(CI [{citations._render(stats['ci_low'], None)}, {citations._render(stats['ci_high'], None)}], n=3)" in best["text"]
    text = assert_traceable(ws, r)
    assert "- Intervals (CI) are 95% intervals over replicates" in text
    assert any("mean" in h["text"] and ", n=3" in h["text"] for h in r["hypotheses"]["confirmed"])


# -- nothing approved, and the command ------------------------------------------------------------------
def test_with_nothing_approved_the_summary_says_so_and_lists_the_pending(ws):
    new(ws, "0.1.0", desc="base")
    fake_run(ws, "0.1.0", 5.0)
    r = summary.write_summary(ws, lang="en", style="resume")
    text = (ws.root / r["path"]).read_text(encoding="utf-8")
    assert r["counts"]["counted"] == 0 and r["bullets"] == [] and [p["version"] for p in r["pending"]] == ["0.1.0"]
    assert "No record is approved or committed yet" in text and "[0.1.0](experiment_0.1.0.md) “base”" in text
    assert_traceable(ws, r)


def test_the_command_through_real_processes(project, tmp_path):
    ws = project
    proc = run_exp("summary", "--json", "--lang", "en", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert set(r) >= {"path", "lang", "style", "counts", "counted", "best", "improvements", "hypotheses", "groups",
                      "pending", "bullets"}
    assert set(r["hypotheses"]) == {"confirmed", "refuted", "inconclusive"}
    assert r["path"] == "experiment/SUMMARY.md" and (ws.root / r["path"]).is_file()
    for b in r["bullets"]:
        assert set(b) >= {"text", "source", "record", "citations"}
    proc = run_exp("summary", "--style", "resume", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("2 of 4 record(s) counted (1 approved, 1 committed); 2 pending\n")
    assert out.rstrip().endswith("wrote experiment/SUMMARY.md") and "[0.1.1](experiment_0.1.1.md)" in out
    assert (ws.root / "experiment/SUMMARY.md").read_text(encoding="utf-8").startswith("# 项目总结：要点\n")
    bad = run_exp("summary", "--style", "essay", cwd=ws.root)
    assert bad.returncode == 2 and bad.stderr.startswith("exp: error: --style must be bullets or resume")
    assert "Traceback" not in bad.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_exp("summary", cwd=elsewhere, env={"EXP_ROOT": ""})
    assert proc.returncode != 0 and proc.stderr.startswith("exp: error: ") and len(proc.stderr.strip().split("\n")) == 1
    assert "Traceback" not in proc.stderr

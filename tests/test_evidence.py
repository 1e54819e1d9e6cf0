"""expkit.evidence and expkit.citations: the evidence object, citations of it, and the check of the AI's numbers.

Pure functions of plain data: the inputs below have the shapes ``results.compute()`` stores
(``meta["analysis"]``), the TrainConfig dump, the runner's ``meta["run"]``, the trainer's
summary.json and metrics.jsonl lines; every expected value is computed by hand from them.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expkit import citations as C
from expkit import evidence as E
from expkit import results
from expkit.anomalies import Anomaly
from expkit.comparison import metric_deltas
from expkit.diagnosis import diagnose
from expkit.config import TrainConfig
from expkit.errors import ExpError
from expkit.numbers import format_number, format_percent

# -- a run: 60 steps, an eval every 10, a parent that ran, one spike -------------------------------------

CONFIG = {**TrainConfig().model_dump(), "max_steps": 60, "warmup_steps": 10, "eval_interval": 10, "dropout": 0.0}
VAL = {10: 5.9, 20: 5.61, 30: 5.45, 40: 5.33, 50: 5.26, 60: 5.2318}
ROWS = [
    {"step": s, "loss": round(8.0 - s / 20, 4), "lr": 3e-3, "tokens_per_s": 1000.0, "tokens_seen": 512 * s,
     **({"val_loss": VAL[s]} if s in VAL else {})}
    for s in [1, *range(5, 61, 5)]
]
ROWS[3]["loss"] = math.nan  # a non-finite loss at step 15 (not an eval step): never evidence
METRICS = {
    "steps": 60, "final_loss": 5.0, "best_train_loss": 5.0, "val_loss": 5.2318, "best_val_loss": 5.2318,
    "val_ppl": 187.18, "tokens_seen": 30720, "tokens_per_s": 1000.0, "wall_s": 30.72, "params": 123456,
    "grad_norm": 0.8, "distinct_1": 0.37, "distinct_2": 0.8, "repetition_rate": 0.12,
}
PARENT_DELTAS = {
    "val_loss": {"value": 5.2318, "reference": 5.4, "abs": 5.2318 - 5.4, "rel": (5.2318 - 5.4) / 5.4},  # -3.11%
    "tokens_per_s": {"value": 1000.0, "reference": 1250.0, "abs": -250.0, "rel": -0.2},
    "repetition_rate": {"value": 0.12, "reference": 0.15, "abs": 0.12 - 0.15, "rel": (0.12 - 0.15) / 0.15},
}
ANALYSIS = {
    "analyzed_at": "2025-03-14T09:31:07+00:00",
    "run_status": "finished",
    "metrics": METRICS,
    "verdicts": [
        {"claim": "val_loss < 6", "verdict": "confirmed", "observed": 5.2318, "reference": 6.0, "reason": None,
         "metric": "val_loss", "margin": 5.2318 - 6.0},
        {"claim": "repetition_rate < 0.05", "verdict": "refuted", "observed": 0.12, "reference": 0.05, "reason": None,
         "metric": "repetition_rate", "margin": 0.12 - 0.05},
        {"claim": "val_loss <= parent - 0.1", "verdict": "confirmed", "observed": 5.2318, "reference": 5.3,
         "reason": None, "metric": "val_loss"},  # an older analysis without margin
        {"claim": "mfu > 0.5", "verdict": "inconclusive", "observed": None, "reference": 0.5,
         "reason": "the run did not log mfu", "metric": "mfu"},
    ],
    "verdict_counts": {"confirmed": 2, "refuted": 1, "inconclusive": 1},
    "anomalies": [
        {"kind": "spike", "metric": "loss", "step": 35, "end_step": 35, "message": "loss 6.9 at step 35 ...",
         "evidence": {"loss": 6.9, "baseline": 6.3, "jump": 0.6, "mads": 7.5, "lines": 1}},
    ],
    "references": {
        "parent": {"version": "1.4.0", "has_run": True, "config_diff": {"learning_rate": [1e-3, 3e-3]},
                   "deltas": PARENT_DELTAS},
        "baseline": {"version": "1.0.0", "has_run": False, "config_diff": {}},
    },
    "changes": {"learning_rate": [1e-3, 3e-3]},
    "samples": {"distinct_1": 0.37, "distinct_2": 0.8, "repetition_rate": 0.12},
    "diagnosis": [], "suggestions": [], "notes": [], "plots": [], "drafts": {"analysis": "ab" * 32},
}
RUN = {
    "started": "2025-03-14T09:26:53+00:00", "ended": "2025-03-14T09:31:07+00:00", "duration_s": 254.0,
    "exit_code": 0, "status": "finished", "backend": "torchrun", "processes": 2, "last_step": 60,
    "host": "node3", "command": "bash run_file/experiment_1.4.1.sh", "git_sha": "f" * 40, "git_dirty": False,
    "token": "0123456789abcdef", "log_tail": "step 60 | loss 5.0", "gpus": "NVIDIA H100, NVIDIA H100",
    "env": {"python": "3.11.9", "torch": "2.5.0"}, "resumed": ["2025-03-14T09:28:00+00:00"], "pid": 4242,
}
SUMMARY = {
    "status": "finished", "steps": 60, "final_loss": 5.0, "val_loss": 5.2318, "wall_s": 30.72, "params": 123456,
    "param_counts": {"total": 123456, "embedding": 81920, "memory": 0, "experts": 0, "non_embedding": 41536,
                     "active": 123456},
    "world_size": 2, "device": "cuda:0", "peak_mem_mb": 596.9, "param_sha256": "ab" * 32, "mfu": 0.0123,
}
HUMAN = {
    "goal": "检验学习率 3e-3 的效果。",
    "hypothesis": "学习率提高后约 300 步收敛，验证损失低于 6。",
    "expected": "- val_loss < 6\n- repetition_rate < 0.05\n- val_loss <= parent - 0.1\n- mfu > 0.5\n",
}


@pytest.fixture
def ev() -> dict:
    return E.build(copy.deepcopy(ANALYSIS), dict(CONFIG), dict(RUN), dict(SUMMARY), copy.deepcopy(ROWS))


def numbers(text: str, ev: dict, **kw) -> list[tuple[int, str]]:
    return [(f.line, f.number) for f in C.check(text, ev, **kw)]


# -- the evidence object -----------------------------------------------------------------------------


def test_build_has_every_section_json_safe(ev):
    assert list(ev) == ["metrics", "params", "curve", "verdicts", "verdict_counts", "references", "samples",
                        "anomaly_counts", "anomalies", "config", "run"]
    json.dumps(ev, allow_nan=False)  # no NaN, no Inf, nothing but JSON
    empty = E.build(None, None, None)
    assert empty == {"metrics": {}, "params": {}, "curve": {}, "verdicts": [], "verdict_counts": {}, "references": {},
                     "samples": {}, "anomaly_counts": {"total": 0}, "anomalies": [], "config": {}, "run": {}}


def test_build_metrics_and_params(ev):
    # the analysis' table, completed by what only summary.json has
    assert ev["metrics"] == {**METRICS, "world_size": 2, "peak_mem_mb": 596.9, "mfu": 0.0123}
    assert ev["params"] == SUMMARY["param_counts"]
    # without a breakdown the total still has its place
    assert E.build({"metrics": {"params": 99}}, {}, {})["params"] == {"total": 99}
    assert E.build({}, {}, {}, {"params": 77})["params"] == {"total": 77}


def test_build_curve_every_eval_and_the_train_loss_there(ev):
    assert ev["curve"]["val_loss"] == {str(s): v for s, v in VAL.items()}
    # the train loss at the eval steps and at the first and last line; 15's NaN is no evidence
    assert ev["curve"]["loss"] == {"1": 7.95, "10": 7.5, "20": 7.0, "30": 6.5, "40": 6.0, "50": 5.5, "60": 5.0}
    assert ev["curve"]["steps"] == [1, 10, 20, 30, 40, 50, 60]
    assert E.build({}, {}, {}, rows=[{"step": 1, "loss": math.inf}, {"loss": 3.0}, "torn"])["curve"] == {}


def test_build_verdicts_counts_references_anomalies(ev):
    v = ev["verdicts"]
    assert v[0] == {"claim": "val_loss < 6", "metric": "val_loss", "verdict": "confirmed", "observed": 5.2318,
                    "reference": 6.0, "margin": 5.2318 - 6.0}
    assert v[2]["margin"] == pytest.approx(-0.0682)  # computed where the analysis lacks it
    assert v[3] == {"claim": "mfu > 0.5", "metric": "mfu", "verdict": "inconclusive", "reference": 0.5}
    assert ev["verdict_counts"] == {"confirmed": 2, "refuted": 1, "inconclusive": 1, "total": 4}
    parent = ev["references"]["parent"]
    assert parent["version"] == "1.4.0" and parent["has_run"] is True
    assert parent["config"] == {"learning_rate": 1e-3}  # theirs; ours is config.learning_rate
    assert parent["deltas"]["tokens_per_s"] == {"value": 1000.0, "reference": 1250.0, "abs": -250.0, "rel": -0.2,
                                                "ratio": 0.8}
    assert ev["references"]["baseline"] == {"version": "1.0.0", "has_run": False, "deltas": {}, "config": {}}
    assert ev["anomaly_counts"] == {"total": 1, "spike": 1}
    assert ev["anomalies"] == [{"kind": "spike", "metric": "loss", "step": 35, "end_step": 35, "loss": 6.9,
                                "baseline": 6.3, "jump": 0.6, "mads": 7.5, "lines": 1}]
    # the front matter keeps 20 anomalies and says how many there were
    assert E.build({"anomalies": ANALYSIS["anomalies"], "anomalies_total": 31}, {}, {})["anomaly_counts"] == \
        {"total": 31, "spike": 1}


def test_build_run_keeps_quantities_not_clocks_tokens_or_versions(ev):
    assert ev["run"] == {"duration_s": 254.0, "exit_code": 0, "status": "finished", "backend": "torchrun",
                         "processes": 2, "last_step": 60, "host": "node3", "git_dirty": False,
                         "gpus": "NVIDIA H100, NVIDIA H100", "resumes": 1}
    # the script's wall time and the trainer's time, apart and named so
    assert ev["run"]["duration_s"] == 254.0 and ev["metrics"]["wall_s"] == 30.72
    assert ev["config"] == {k: v for k, v in CONFIG.items() if v is not None}  # intermediate_size None: no value
    assert ev["samples"] == ANALYSIS["samples"]


def test_paths_are_dotted_with_numbers_for_indices_and_steps(ev):
    p = E.paths(ev)
    for path in ("metrics.val_loss", "params.embedding", "metrics.peak_mem_mb", "curve.val_loss.60", "curve.loss.1",
                 "curve.steps.0", "verdicts.1.reference", "verdicts.0.margin", "verdict_counts.total",
                 "references.parent.deltas.val_loss.ratio", "references.parent.config.learning_rate",
                 "samples.repetition_rate", "anomaly_counts.spike", "anomalies.0.jump", "config.seed",
                 "run.duration_s", "metrics.wall_s"):
        assert path in p, path
    assert len(p) == len(set(p)) and not any(x.startswith("run.env") or x == "run.started" for x in p)


# -- citations ----------------------------------------------------------------------------------------


def test_resolve_formats_and_records_each_citation(ev):
    source = ("val_loss [[metrics.val_loss]] ([[references.parent.deltas.val_loss.rel:.1%]] vs the parent)\n"
              "tokens [[metrics.tokens_seen:,d]] in [[ metrics.wall_s : .1f ]] s; model [[config.model_type]]\n"
              "margin [[verdicts.0.margin:+.2f]], val_loss at step 20 [[curve.val_loss.20:.3f]], "
              "first eval at step [[curve.steps.1]], dirty [[run.git_dirty]], params [[params.total:,d]]")
    text, cites = C.resolve(source, ev)
    assert text == ("val_loss 5.232 (-3.1% vs the parent)\n"
                    "tokens 30,720 in 30.7 s; model model_original\n"
                    "margin -0.77, val_loss at step 20 5.610, first eval at step 10, dirty false, params 123,456")
    assert [(c.path, c.format, c.text, c.line) for c in cites] == [
        ("metrics.val_loss", None, "5.232", 1), ("references.parent.deltas.val_loss.rel", ".1%", "-3.1%", 1),
        ("metrics.tokens_seen", ",d", "30,720", 2), ("metrics.wall_s", ".1f", "30.7", 2),
        ("config.model_type", None, "model_original", 2), ("verdicts.0.margin", "+.2f", "-0.77", 3),
        ("curve.val_loss.20", ".3f", "5.610", 3), ("curve.steps.1", None, "10", 3), ("run.git_dirty", None, "false", 3),
        ("params.total", ",d", "123,456", 3),
    ]
    for c in cites:
        assert text[c.start:c.end] == c.text
        assert text.split("\n")[c.line - 1].count(c.text) >= 1
    assert cites[0].value == 5.2318 and cites[2].value == 30720


def test_an_integral_float_takes_an_integer_format():
    ev = {"metrics": {"tokens_seen": 30720.0}}
    assert C.resolve("[[metrics.tokens_seen:,d]]", ev)[0] == "30,720"


def test_citation_round_trips_through_json(ev):
    _, cites = C.resolve("a [[metrics.val_loss:.2f]] b", ev)
    stored = json.loads(json.dumps([c.to_dict() for c in cites]))
    assert stored == [{"path": "metrics.val_loss", "format": ".2f", "value": 5.2318, "text": "5.23", "line": 1,
                       "start": 2, "end": 6}]
    assert [C.Citation.from_dict(d) for d in stored] == cites


def test_citations_in_code_are_left_literal(ev):
    source = "`[[metrics.val_loss]]` and ``a `[[x]]` b``\n```\n[[metrics.nope]]\n```\n[[metrics.steps]]"
    text, cites = C.resolve(source, ev)
    assert text == "`[[metrics.val_loss]]` and ``a `[[x]]` b``\n```\n[[metrics.nope]]\n```\n60"
    assert [(c.path, c.line, c.start) for c in cites] == [("metrics.steps", 5, len(text) - 2)]


def test_an_unknown_path_names_its_line_and_the_nearest_paths(ev):
    with pytest.raises(C.CitationError) as err:
        C.resolve("first\nsecond\nval_loss is [[metrics.val_los]]", ev, version="1.4.1")
    assert str(err.value) == (
        "line 3: [[metrics.val_los]] is not in the evidence; did you mean metrics.val_loss, metrics.val_ppl, "
        "metrics.final_loss? (`exp context 1.4.1 --json` lists the evidence)")
    assert isinstance(err.value, ExpError)
    with pytest.raises(C.CitationError, match=r"^line 1: \[\[nothing.like.it\]\] is not in the evidence \(`exp "):
        C.resolve("[[nothing.like.it]]", ev)  # nothing close: no guess
    with pytest.raises(C.CitationError, match=r"did you mean curve\.val_loss\.60"):
        C.resolve("[[curve.val_loss.61]]", ev)
    with pytest.raises(C.CitationError, match=r"did you mean verdicts\.1\.reference"):
        C.resolve("[[verdicts.1.referenc]]", ev)


def test_a_group_or_a_bad_format_is_refused_in_one_line(ev):
    with pytest.raises(C.CitationError) as err:
        C.resolve("x\n[[references.parent.deltas.val_loss]]", ev)
    assert str(err.value).startswith(
        "line 2: [[references.parent.deltas.val_loss]] is a group, not one value; it holds "
        "references.parent.deltas.val_loss.value, references.parent.deltas.val_loss.reference, ")
    for bad in ("[[metrics.val_loss:,d]]", "[[metrics.val_loss:.1q]]", "[[config.model_type:.1%]]"):
        with pytest.raises(C.CitationError) as err:
            C.resolve(f"ok\n\n{bad}", ev)
        assert str(err.value).startswith(f"line 3: {bad}: ") and "is not a format for" in str(err.value)
        assert "\n" not in str(err.value)


# -- the check: citations ------------------------------------------------------------------------------


def test_resolved_text_checks_clean_and_goes_stale_with_the_evidence(ev):
    # the sentences name nothing: only the citations vouch for the numbers
    text, cites = C.resolve("It reached [[metrics.val_loss]] after [[metrics.steps]]; "
                            "[[samples.repetition_rate:.0%]] and [[anomaly_counts.spike]] more.", ev)
    assert text == "It reached 5.232 after 60; 12% and 1 more."
    assert C.check(text, ev, cites) == []
    assert numbers(text, ev) == [(1, "5.232"), (1, "60"), (1, "12%"), (1, "1")]  # without them: all bare

    ev["metrics"]["val_loss"] = 5.19  # analysed again
    assert [f.to_dict() for f in C.check(text, ev, cites)] == [
        {"line": 1, "number": "5.232",
         "reason": "cited metrics.val_loss now reads 5.19, the text shows 5.232: run exp fill again"}]
    del ev["anomaly_counts"]["spike"]
    assert [f.reason for f in C.check(text, ev, [c.to_dict() for c in cites])][1] == \
        "cited anomaly_counts.spike is no longer in the evidence: run exp fill again"


def test_a_citation_edited_by_hand_is_checked_as_a_bare_number(ev):
    text, cites = C.resolve("line one\nval_loss [[metrics.val_loss]] at the end", ev)
    assert C.check(text.replace("5.232", "5.23"), ev, cites) == []  # shorter, still true at its precision
    assert numbers(text.replace("5.232", "5.38"), ev, citations=cites) == [(2, "5.38")]


def test_an_unresolved_citation_is_a_finding(ev):
    found = C.check("ok\nval_loss [[metrics.val_loss]] here, `[[kept]]` literal", ev)
    assert [(f.line, f.number) for f in found] == [(2, "[[metrics.val_loss]]")]
    assert "exp fill" in found[0].reason


# -- the check: bare numbers and the quantity their sentence names -------------------------------------


def test_old_failure_percent_of_an_unrelated_quantity(ev):
    """"12% better than the parent" passed because repetition_rate was 0.12."""
    found = C.check("Val loss is 12% better than the parent.", ev)
    assert [(f.line, f.number) for f in found] == [(1, "12%")]
    assert found[0].reason == (
        "12% matches metrics.repetition_rate (0.12), references.parent.deltas.repetition_rate.value (0.12) and 2 more, "
        "which this sentence does not name; the sentence names references.parent.deltas.val_loss.rel = -3.115%")
    assert C.check("The repetition rate is 12%, against the parent's 15%.", ev) == []
    assert C.check("Throughput is 20% lower than the parent's.", ev) == []  # tokens_per_s rel -0.2
    ev["references"]["parent"]["deltas"]["val_loss"]["rel"] = -0.12
    assert C.check("Val loss is 12% better than the parent.", ev) == []


def test_old_failure_a_factor_from_a_version(ev):
    """"3x faster" passed through the Python version 3.11."""
    assert not [p for p in E.paths(ev) if p.startswith("run.env")]  # the environment's versions are not evidence
    (f,) = C.check("Training was 3x faster than the parent.", ev)
    assert f.number == "3x" and f.reason == ("no value of the evidence rounds to 3x; the sentence names "
                                             "references.parent.deltas.tokens_per_s.ratio = 0.8")
    with_version = E.build(ANALYSIS, CONFIG, {**RUN, "python": "3.11.9"})  # a string: never a number
    assert numbers("Training was 3x faster than the parent.", with_version) == [(1, "3x")]
    assert C.check("Throughput was 0.8x the parent's.", ev) == []  # tokens_per_s ratio 1000/1250
    assert C.check("吞吐是父实验的 0.8 倍。", ev) == []
    assert numbers("Throughput was 0.9x the parent's.", ev) == [(1, "0.9x")]


def test_old_failure_a_bare_integer_near_any_value(ev):
    """Bare integers passed at ±0.5 against whatever value lay near."""
    found = C.check("The model has 5 layers.", ev)  # final_loss 5.0 lies near, layers are 2
    assert [f.number for f in found] == ["5"] and found[0].reason.endswith(
        "which this sentence does not name; the sentence names config.num_hidden_layers = 2")
    assert C.check("The model has 2 layers and 4 attention heads.", ev) == []
    assert numbers("模型共 5 层。", ev) == [(1, "5")]
    assert C.check("模型共 2 层，种子 1337。", ev) == []


def test_old_failure_low_precision_coincidences(ev):
    """0.2 and 0.37 passed by coincidence with unrelated values."""
    assert numbers("Dropout 0.2 would help.", ev) == [(1, "0.2")]  # tokens_per_s rel is -0.2, dropout is 0
    assert numbers("About 0.37 of the batches were reused.", ev) == [(1, "0.37")]  # distinct_1 is 0.37
    assert C.check("distinct-1 is 0.37, distinct-2 is 0.8.", ev) == []


def test_old_failure_the_humans_numbers(ev):
    """The expected threshold 0.05 and a quoted "约 300 步" were flagged; in backticks they passed."""
    assert C.check("repetition_rate 0.12 missed the expected threshold 0.05 by 0.07.", ev) == []
    assert C.check("重复率 0.12，高于预期阈值 0.05。", ev) == []
    assert C.check("假设说“学习率提高后约 300 步收敛”，但只跑了 60 步。", ev, human=HUMAN) == []
    assert C.check('The hypothesis said "约300步收敛", and the run stopped at step 60.', ev, human=HUMAN) == []
    assert C.check("`约 300 步` 未能验证。", ev) == []
    # not verbatim: no exemption; without the human text: none either
    assert numbers("假设说“约 250 步收敛”。", ev, human=HUMAN) == [(1, "250")]
    assert numbers("假设说“约 300 步收敛”。", ev) == [(1, "300")]
    assert numbers("「学习率提高后约 300 步收敛」与『验证损失低于 6』", ev, human=HUMAN) == []


def test_a_named_loss_is_not_the_other_loss(ev):
    # final (train) loss 5.0, val_loss 5.2318: "验证损失" and "val loss" are not 损失 / loss
    assert C.check("训练损失 5.0，验证损失 5.23。", ev) == []
    assert numbers("验证损失 5.0。", ev) == [(1, "5.0")]
    assert numbers("The val loss reached 5.0.", ev) == [(1, "5.0")]
    assert C.check("The train loss reached 5.0 and the validation loss 5.23.", ev) == []
    assert C.check("Losses: 5.0 (train) and 5.23 (val_loss).", ev) == []
    assert C.check("The loss fell from 7.95 at step 1 to 5.0 at step 60.", ev) == []
    assert C.check("Val loss was 5.61 at step 20 and 5.33 at step 40.", ev) == []
    assert numbers("Val loss was 5.50 at step 50.", ev) == [(1, "5.50")]  # 5.5 is the train loss there
    assert numbers("Val loss was 5.26 at step 45.", ev) == [(1, "45")]  # no eval, no anomaly at 45


def test_the_clause_is_the_context(ev):
    # a comma keeps the clause; a period with a space, a semicolon, 。；！？ and a line end end it
    assert C.check("val_loss 5.23 vs 5.4 for the parent, -3.1%.", ev) == []
    assert numbers("val_loss 5.23. Then 5.4 for the parent", ev) == [(1, "5.4")]
    assert numbers("验证损失 5.23；父实验 5.4", ev) == [(1, "5.4")]
    assert numbers("验证损失 5.23。5.4 是父实验的", ev) == [(1, "5.4")]
    assert numbers("val_loss\n5.23", ev) == [(2, "5.23")]
    assert C.check("父实验的验证损失为 5.4，本次低 3.1%。", ev) == []


def test_a_table_cell_is_named_by_its_column_head(ev):
    text = "\n".join([
        "| step | val_loss | train loss |",
        "|---|---|---|",
        "| 10 | 5.9 | 7.5 |",
        "| 60 | 5.232 | 5.0 |",
        "| 70 | 5.1 | 4.9 |",
        "",
        "60 5.232",  # after the table: no head
    ])
    assert numbers(text, ev) == [(5, "70"), (5, "5.1"), (5, "4.9"), (7, "60"), (7, "5.232")]


def test_times_memory_and_parameters_by_name(ev):
    assert C.check("The script ran 254 s, the trainer 30.72 s.", ev) == []
    assert C.check("运行总耗时 254 秒，训练耗时 30.72 秒。", ev) == []
    assert numbers("duration_s was 30.72; wall_s was 254", ev) == [(1, "30.72"), (1, "254")]  # kept apart
    assert C.check("Peak memory 596.9MB; 峰值显存 597 MB.", ev) == []
    assert numbers("Memory 596.9 steps", ev) == []  # memory is named
    assert numbers("596.9MB", ev) == []  # the unit is a name: MB
    assert C.check("123,456 parameters, 81,920 of them in the embedding; 非嵌入参数 41,536。", ev) == []
    assert numbers("81,920 parameters", ev) == [(1, "81,920")]  # that is the embedding, not the total
    assert C.check("Throughput 1.0k tokens/s over 30.7k tokens.", ev) == []
    assert C.check("2 processes on 2 GPUs; 1 resume.", ev) == []


def test_verdicts_counts_anomalies_by_name(ev):
    assert C.check("2 of 4 expected results confirmed, 1 refuted, 1 inconclusive.", ev) == []
    assert C.check("预期结果：2 条成立，1 条不成立，1 条无法判定。", ev) == []
    assert C.check("val_loss 5.232 clears the threshold 6 by a margin of 0.77.", ev) == []
    assert C.check("One loss spike at step 35: loss 6.9 against a median of 6.3 (+0.6, 7.5 MADs).", ev) == []
    assert C.check("第 35 步出现 1 处损失尖峰。", ev) == []
    assert numbers("1 anomaly at step 36", ev) == [(1, "36")]
    assert C.check("The learning rate went from 1e-3 (parent) to 3e-3.", ev) == []
    assert C.check("学习率从 0.001 提高到 0.003，预热 10 步，共 60 步。", ev) == []


def test_a_finding_names_what_the_sentence_does_name(ev):
    (f,) = C.check("val_loss fell to 5.24", ev)
    assert f.reason == "no value of the evidence rounds to 5.24; the sentence names metrics.val_loss = 5.232"
    (f,) = C.check("It improved by 42 points", ev)
    assert f.reason == ("no value of the evidence rounds to 42; name the quantity next to the number, "
                        "or cite it as [[path]]")


def test_exempt_spans(ev):
    text = "\n".join([
        "1. Run 1.4.1 against v2.0.1 and experiment_1.4.1 (versions)",
        "2) 日期 2026-11-22、2026年11月22日、11月22日 与时间 13:48:47",
        "3、Link https://example.com/issues/4242 and 2026-11-22T13:49:18+00:00",
        "## 4. Results on H100 in bf16, distinct-2 and top_k, GPT-2",
        "# 5 Heading number",
        "Propose `exp set 1.4.2 seed=43 learning_rate=8e-5` next.",
        "```bash",
        "exp set 1.4.2 batch_size=64",
        "```",
        "- 42 is made up",
    ])
    assert numbers(text, ev) == [(10, "42")]


def test_an_unclosed_fence_runs_to_the_end(ev):
    assert C.check("ok\n```\n77 made up\n88", ev) == []


def test_line_numbers_and_order(ev):
    text = "验证损失 5.23\n验证损失 5.24\n\n- 尖峰 2 处（第 35 步）\n- val_loss 9.99, loss 77"
    assert numbers(text, ev) == [(2, "5.24"), (4, "2"), (5, "9.99"), (5, "77")]


# -- the precision rule (the old one, now against a named leaf) ------------------------------------------


SCORE = {"val_loss": 5.2318, "delta": -0.1234, "rel": 0.125, "tokens_seen": 1234, "lr": 0.003, "min_lr": 8e-05,
         "params": 3_400_000, "val_ppl": 1626.4, "half": 5.25, "big": 2_000_000_000}


@pytest.mark.parametrize("key,written,ok", [
    ("val_loss", "5.23", True), ("val_loss", "5.2", True), ("val_loss", "5.232", True), ("val_loss", "5.2318", True),
    ("val_loss", "5", True), ("val_loss", "5.24", False), ("val_loss", "5.20", False), ("val_loss", "5.231", False),
    ("val_loss", "6", False), ("delta", "0.12", True), ("delta", "-0.12", True), ("delta", "0.123", True),
    ("delta", "0.14", False), ("rel", "12.5%", True), ("rel", "12.50%", True), ("rel", "13%", True),
    ("rel", "12%", True), ("rel", "14%", False), ("rel", "0.125", True), ("rel", "0.12", True), ("rel", "0.13", True),
    ("tokens_seen", "1,234", True), ("tokens_seen", "1,235", False), ("tokens_seen", "1234.0", True),
    ("tokens_seen", "1.2k", True), ("tokens_seen", "1.3k", False), ("lr", "3e-3", True), ("lr", "3.0e-3", True),
    ("lr", "3E-03", True), ("lr", "0.003", True), ("min_lr", "8.0e-05", True), ("min_lr", "8e-5", True),
    ("min_lr", "8.1e-05", False), ("params", "3.4M", True), ("params", "3.5M", False), ("params", "3,400,000", True),
    ("val_ppl", "1626", True), ("val_ppl", "1626.4", True), ("val_ppl", "1627", False),
    ("half", "5.2", True), ("half", "5.3", True), ("half", "5.25", True), ("half", "5.4", False), ("half", "5.1", False),
    ("big", "2B", True), ("big", "2.0B", True), ("big", "2.1B", False), ("val_loss", "5.23s", True),
    ("rel", "0.125x", True), ("rel", "0.125×", True), ("val_ppl", "1.6k", True),
])
def test_precision_rule_at_its_edges(key, written, ok):
    ev = {"metrics": SCORE}
    name = key.replace("_", " ") if key != "min_lr" else "min lr"
    assert numbers(f"the {name} is {written} here", ev) == ([] if ok else [(1, written)])


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**15, 10**15)))
def test_every_formatted_number_checks_clean_against_its_value(x):
    ev = {"metrics": {"val_loss": x}}
    assert C.check(f"val_loss {format_number(x)} here", ev) == []
    if isinstance(x, float):
        assert C.check(f"val_loss {format_percent(x)} here", ev) == []


# -- property: resolve then check is clean ----------------------------------------------------------------

_KEYS = st.text(alphabet="abcdefgh_", min_size=1, max_size=6).filter(lambda k: k.strip("_"))
_VALUES = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-10**9, 10**9),
                    st.text(alphabet="abc xyz", max_size=5), st.booleans())
_FORMATS = (None, ".3f", ".1%", "+.2f", ".4g", "e")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(_KEYS, st.one_of(_VALUES, st.dictionaries(_KEYS, _VALUES, max_size=4),
                                       st.lists(_VALUES, max_size=3)), min_size=1, max_size=6),
       st.lists(st.sampled_from(_FORMATS), min_size=1, max_size=6))
def test_resolve_then_check_is_clean_and_stale_when_changed(evidence, formats):
    leaves = E.paths(evidence)
    if not leaves:
        return
    parts = []
    for i, path in enumerate(leaves):
        value = C._lookup(evidence, path)[1]
        fmt = formats[i % len(formats)] if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        parts.append(f"[[{path}:{fmt}]]" if fmt else f"[[{path}]]")
    text, cites = C.resolve("Values: " + "; ".join(parts) + ".", evidence)
    assert len(cites) == len(leaves)
    assert C.check(text, evidence, cites) == []
    changed = next((c for c in cites if isinstance(c.value, float) and c.format is None and c.value != 0), None)
    if changed is not None:
        node = evidence
        *head, last = changed.path.split(".")
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = abs(changed.value) * 2 + 1  # renders otherwise
        found = C.check(text, evidence, cites)
        assert any(f.reason.startswith(f"cited {changed.path} now reads") for f in found)


# -- the tool's own texts pass --------------------------------------------------------------------------


def _anomalies() -> list[Anomaly]:
    return [
        Anomaly("nonfinite", "loss", 15, 15, {"value": math.nan, "count": 1}),
        Anomaly("divergence", "loss", 30, 60, {"min": 5.5, "min_step": 30, "final": 6.4, "rise": 0.9,
                                                 "rise_ratio": 0.9 / 5.5}),
        Anomaly("spike", "loss", 35, 35, {"loss": 6.9, "baseline": 6.3, "jump": 0.6, "mads": 7.5, "lines": 1}),
        Anomaly("spike", "loss", 45, 45, {"loss": 6.1, "baseline": 5.8, "jump": 0.3, "mads": 6.2, "lines": 1}),
        Anomaly("overfitting", "val_loss", 40, 60, {"val_from": 5.33, "val_to": 5.41, "train_from": 6.0,
                                                      "train_to": 5.0, "gap_from": -0.67, "gap_to": 0.41}),
        Anomaly("plateau", "loss", 45, 60, {"loss_from": 5.3, "loss_to": 5.29, "improvement_ratio": 0.0019,
                                              "lr_ratio": 0.95}),
        Anomaly("throughput_drop", "tokens_per_s", 20, 25, {"min": 310.0, "median": 1000.0, "ratio": 0.31,
                                                              "lines": 2}),
        Anomaly("stall", "elapsed_s", 40, 45, {"gap_s": 312.5, "extra_s": 310.0, "median_step_s": 0.5,
                                                 "factor": 125.0}),
        Anomaly("early_stop", "step", 60, 60, {"max_steps": 360, "done_ratio": 60 / 360}),
    ]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_drafts_and_diagnosis_of_exp_analyze_check_clean(lang):
    anomalies = _anomalies()
    claims = [{**v, "line": 1} for v in ANALYSIS["verdicts"]]
    this = {**METRICS, "tokens_per_s": 800.0}
    parent_table = {"val_loss": 5.4, "tokens_per_s": 1000.0, "final_loss": 5.3}
    deltas = metric_deltas(this, parent_table)
    diagnosis, suggestions = diagnose(anomalies, claims, {"parent 1.4.0": deltas}, lang)
    analysis = {
        **ANALYSIS, "metrics": this,
        "anomalies": [a.to_dict(lang) for a in anomalies],
        "references": {"parent": {"version": "1.4.0", "has_run": True,
                                  "deltas": deltas}},
        "diagnosis": [f.to_dict() for f in diagnosis], "suggestions": [f.to_dict() for f in suggestions],
    }
    ev = E.build(analysis, CONFIG, RUN, SUMMARY, ROWS)
    texts = results.drafts(analysis, lang, "1.4.1")
    assert {f.rule for f in diagnosis} == {a.kind for a in anomalies} | {"claim_refuted", "claim_inconclusive",
                                                                          "delta_better", "delta_slower"}
    for name, text in texts.items():
        assert C.check(text, ev) == [], (name, text, [f.to_dict() for f in C.check(text, ev)])
    for a in analysis["anomalies"]:
        assert C.check(a["message"], ev) == [], a["message"]


# -- speed --------------------------------------------------------------------------------------------


def test_a_long_text_against_thousands_of_leaves_flags_only_the_made_up_numbers():
    rows = [{"step": s, "loss": 2.5 + 6 * math.exp(-s / 3000), "val_loss": 2.6 + 6 * math.exp(-s / 3000)}
            for s in range(100, 100_001, 100)]
    ev = E.build(ANALYSIS, CONFIG, RUN, SUMMARY, rows)
    assert len(E.paths(ev)) > 3000
    line = ("- 验证损失在第 {s} 步为 {v}，训练损失 {t}；val_loss {v} vs 5.4 for the parent (-3.1%), "
            "throughput 1000 tokens/s, `exp set 1.4.2 seed=43`{made_up}.")
    text = "\n".join(line.format(s=s, v=format_number(r["val_loss"]), t=format_number(r["loss"]),
                                 made_up=", made-up 77.7" if s % 2000 == 0 else "")
                     for s, r in zip(range(100, 10_001, 100), rows))
    assert len(text.split("\n")) == 100
    assert [f.line for f in C.check(text, ev)] == [20, 40, 60, 80, 100]  # the made-up number, and only it

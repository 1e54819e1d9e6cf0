"""Verdicts that account for noise: the t quantile and the intervals against hand-computed values,
intervals judged against a claim (including the straddling case), Welch against a replicated
reference, single runs with a noise floor or the spread of same-config runs, the environment
check, the throughput-shift anomaly, the `==`/`!=` refusal, and all of it through `exp analyze`,
`exp show --json`, `exp check` and the evidence."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_exp
from test_results import HUMAN, PARENT, end_run, new_record, write_run

from expkit import anomalies, catalog, citations, claims, intervals, lifecycle, metrics, records, results, verdicts
from expkit.claims import parse_claims
from expkit.version import Version

# -- the t quantile and the intervals ----------------------------------------------------------------


@pytest.mark.parametrize("df, expected", [(1, 12.706205), (2, 4.302653), (5, 2.570582), (10, 2.228139),
                                          (30, 2.042272), (120, 1.979930)])
def test_t_quantile_matches_the_tables(df, expected):
    assert intervals.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-7)
    assert intervals.t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-7)
    assert intervals.t_cdf(intervals.t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)


def test_t_quantile_other_levels_and_fractional_degrees_of_freedom():
    assert intervals.t_quantile(0.995, 10) == pytest.approx(3.169273, abs=5e-7)
    assert intervals.t_quantile(0.95, 4) == pytest.approx(2.131847, abs=5e-7)
    assert intervals.t_quantile(0.5, 3) == 0.0
    # between the integer neighbours, decreasing in df
    assert intervals.t_quantile(0.975, 4) > intervals.t_quantile(0.975, 4.5) > intervals.t_quantile(0.975, 5)
    assert intervals.betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - sum_{j<2} C(4,j).4^j.6^(4-j)
    with pytest.raises(ValueError):
        intervals.t_quantile(1.0, 3)


def test_t_interval_by_hand():
    # 2.50, 2.53, 2.47: mean 2.50, sd 0.03, half-width 4.302653 * 0.03 / sqrt(3) = 0.074524
    iv = intervals.t_interval([2.50, 2.53, 2.47])
    assert iv.mean == pytest.approx(2.50) and iv.df == 2
    assert iv.half == pytest.approx(4.302653 * 0.03 / math.sqrt(3), rel=1e-6)
    assert (iv.low, iv.high) == (pytest.approx(2.425476, abs=1e-6), pytest.approx(2.574524, abs=1e-6))
    with pytest.raises(ValueError):
        intervals.t_interval([2.5])


def test_welch_interval_and_satterthwaite_df_by_hand():
    a, b = [2.50, 2.53, 2.47], [2.60, 2.65, 2.62, 2.58]
    # sd_a = 0.03, sd_b = sqrt(0.00263333/3)... computed explicitly:
    mb = sum(b) / 4
    var_b = sum((x - mb) ** 2 for x in b) / 3
    va, vb = 0.03 ** 2 / 3, var_b / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    iv = intervals.welch_interval(a, b)
    assert iv.df == pytest.approx(df) and iv.df == pytest.approx(4.4416, abs=1e-4)
    assert iv.mean == pytest.approx(2.50 - mb)
    assert iv.half == pytest.approx(intervals.t_quantile(0.975, df) * math.sqrt(va + vb))
    assert intervals.welch_interval([1.0, 1.0], [0.5, 0.5]) == intervals.Interval(0.5, 0.0, None)  # no spread


# -- judging a claim on an interval ---------------------------------------------------------------


def reps(metric: str, *values: float) -> list[dict]:
    return [{metric: v} for v in values]


def judge(text: str, this: list[float], ref: list[float] | None = None, **kw) -> verdicts.Verdict:
    cl, bad = parse_claims(f"- {text}")
    assert not bad
    metric = cl[0].metric
    mean = sum(this) / len(this)
    ref_table = {metric: sum(ref) / len(ref)} if ref else None
    return verdicts.verdicts(cl, {metric: mean}, ref_table, ref_table, run_ok=True, version="1.2.3",
                             replicates={"this": reps(metric, *this), "parent": reps(metric, *(ref or [])),
                                         "baseline": reps(metric, *(ref or []))}, **kw)[0]


def test_whole_interval_decides_and_a_straddle_is_within_noise():
    # interval [2.4255, 2.5745] (above): below 2.6 everywhere, above 2.4 everywhere, straddles 2.5
    ok = judge("val_loss < 2.6", [2.50, 2.53, 2.47])
    assert ok.verdict == "confirmed" and ok.method == "student_t" and ok.n == 3
    assert (ok.ci_low, ok.ci_high) == (pytest.approx(2.425476, abs=1e-6), pytest.approx(2.574524, abs=1e-6))
    assert ok.sd == pytest.approx(0.03) and ok.mean == pytest.approx(2.5) and ok.df == 2
    assert judge("val_loss < 2.4", [2.50, 2.53, 2.47]).verdict == "refuted"
    assert judge("val_loss > 2.4", [2.50, 2.53, 2.47]).verdict == "confirmed"
    straddle = judge("val_loss < 2.55", [2.50, 2.53, 2.47])  # the mean alone would say confirmed
    assert straddle.verdict == "inconclusive (within noise)" and verdicts.verdict_kind(straddle.verdict) == "inconclusive"
    assert "[2.425, 2.575]" in straddle.reason and "straddles the threshold 2.55" in straddle.reason
    assert "`exp set 1.2.3 replicates=6`" in straddle.reason
    d = straddle.to_dict()
    assert {k: d[k] for k in ("n", "method", "df")} == {"n": 3, "method": "student_t", "df": 2}


def test_a_claim_against_a_replicated_reference_uses_welch_on_the_difference():
    this, base = [2.50, 2.53, 2.47], [2.60, 2.65, 2.62, 2.58]
    # difference this - (base - 0.1): mean 2.5 - 2.5125 = -0.0125, half 0.0611: straddles 0
    v = judge("val_loss <= baseline - 0.1", this, base)
    assert v.method == "welch" and v.verdict == "inconclusive (within noise)"
    half = intervals.welch_interval(this, base).half
    assert v.reference == pytest.approx(2.6125 - 0.1)
    assert (v.ci_low, v.ci_high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert v.df == pytest.approx(4.4416, abs=1e-4)
    assert judge("val_loss <= baseline", this, base).verdict == "confirmed"  # 2.5 ± 0.061 vs 2.6125
    assert judge("tokens_per_s >= parent * 1.1", [1100.0, 1110.0, 1090.0], [1000.0, 1010.0, 990.0]).verdict == \
        "inconclusive (within noise)"  # 1100 vs 1100 (1000 * 1.1 per replicate)
    # a single reference value is a fixed threshold: the replicates' own t interval
    assert judge("val_loss <= baseline", this, [2.6]).method == "student_t"


def test_one_run_within_the_noise_floor_is_inconclusive_and_says_how_to_settle_it():
    v = judge("val_loss < 2.5", [2.49])
    assert v.verdict == "inconclusive (within noise)" and v.n == 1 and v.method == "noise_floor"
    assert v.ci_low is None and v.sd is None
    assert v.reason.startswith("n=1: the margin 0.01 is within val_loss's noise floor 0.02")
    assert "`exp set 1.2.3 replicates=3`" in v.reason and "another seed" in v.reason
    assert verdicts.NOISE_FLOORS["val_loss"] == ("abs", 0.02)
    beyond = judge("val_loss < 2.5", [2.45])
    assert beyond.verdict == "confirmed" and beyond.n == 1 and "n=1" in beyond.noise
    assert judge("tokens_per_s >= 1000", [1030.0]).verdict == "inconclusive (within noise)"  # 5% of 1000 = 50
    assert judge("steps >= 60", [60.0]).method == "exact"  # a count has no noise floor


def test_one_run_uses_the_spread_of_same_config_runs_and_says_so():
    noise = {"val_loss": verdicts.Noise(sd=0.01, runs=3, versions=("1.2.3", "1.2.4", "1.2.5"))}
    v = judge("val_loss < 2.5", [2.47], noise=noise)
    # 2.47 ± t(0.975, 2) * 0.01 = [2.42697, 2.51303]: straddles 2.5
    assert v.method == "same_config_spread" and v.verdict == "inconclusive (within noise)"
    assert v.ci_high == pytest.approx(2.47 + 4.302653 * 0.01, abs=1e-6)
    assert "spread of 3 runs of the same config" in v.noise and "1.2.4" in v.noise and v.noise.startswith("n=1")
    assert judge("val_loss < 2.6", [2.47], noise=noise).verdict == "confirmed"
    # against a single reference value both runs carry the noise: sqrt(2) wider
    w = judge("val_loss < baseline", [2.47], [2.6], noise=noise)
    assert w.ci_high == pytest.approx(2.47 + 4.302653 * 0.01 * math.sqrt(2), abs=1e-6)


QUIET = {"cpus": 2, "loadavg_mean": 0.3, "others_cpu_mean": 0.02}
BUSY = {"cpus": 2, "loadavg_mean": 2.4, "others_cpu_mean": 0.55}


def test_throughput_between_runs_under_different_load_is_inconclusive_with_both_loads():
    v = judge("tokens_per_s >= parent * 1.1", [2000.0], [1000.0], loads={"this": QUIET, "parent": BUSY})
    assert v.verdict == "inconclusive (environment differs)" and v.method == "load_check"
    assert "this run load 0.3 on 2 CPUs, other processes 2% of the CPU" in v.reason
    assert "the parent load 2.4 on 2 CPUs, other processes 55% of the CPU" in v.reason
    # val_loss does not depend on the machine; a comparison with a number is no comparison of runs
    assert judge("val_loss <= parent", [2.0], [2.5], loads={"this": QUIET, "parent": BUSY}).verdict == "confirmed"
    assert judge("tokens_per_s >= 1000", [2000.0], loads={"this": BUSY}).verdict == "confirmed"
    similar = dict(QUIET, others_cpu_mean=0.02 + verdicts.LOAD_SHARE_DIFFERS - 0.01)
    assert judge("tokens_per_s >= parent", [2000.0], [1000.0], loads={"this": QUIET, "parent": similar}).verdict == "confirmed"
    assert verdicts.load_differs(QUIET, None) is None  # an old run recorded no load: nothing to compare
    assert verdicts.load_differs(QUIET, dict(QUIET, cpus=16)) is True
    assert "其他进程占 CPU 55%" in verdicts.load_text(BUSY, "zh")


# -- the throughput-shift anomaly ------------------------------------------------------------------


def _rows(tps_at) -> list[dict]:
    return [{"step": s, "loss": 5.0 - s / 100, "lr": 1e-3, "tokens_per_s": tps_at(s), "tokens_seen": 100 * s,
             "elapsed_s": s} for s in range(1, 121)]


@pytest.mark.parametrize("late, direction", [(2500.0, "rose"), (400.0, "fell")])
def test_throughput_changing_more_than_twice_within_a_run_is_flagged(tmp_path, late, direction):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(lambda s: 1000.0 if s <= 80 else late)))
    found = [a for a in anomalies.detect_anomalies(metrics.load_metrics(path)) if a.kind == "throughput_shift"]
    assert len(found) == 1
    a = found[0]
    assert a.evidence["from"] == 1000.0 and a.evidence["to"] == late and a.step < 80 < a.end_step
    assert f"tokens/s {direction}" in a.message() and "load changed" in a.message()
    assert a.message("zh").startswith("运行中 tokens/s")


def test_a_steady_or_slightly_varying_throughput_is_no_shift(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(lambda s: 1000.0 if s <= 80 else 1900.0)))
    assert not [a for a in anomalies.detect_anomalies(metrics.load_metrics(path)) if a.kind == "throughput_shift"]


# -- == and != are refused -----------------------------------------------------------------------


@pytest.mark.parametrize("line, fix", [
    ("- val_loss == 2.5", "`- val_loss >= 2.48` and `- val_loss <= 2.52`"),
    ("- val_loss != baseline", "`- val_loss < baseline - 0.02` or `- val_loss > baseline + 0.02`"),
    ("- val_loss == baseline - 0.1", "`- val_loss >= baseline - 0.12` and `- val_loss <= baseline - 0.08`"),
    ("- tokens_per_s == parent * 1.1", "`- tokens_per_s >= parent * 1.078` and `- tokens_per_s <= parent * 1.122`"),
    ("- val_loss ≠ 2.5", "`- val_loss < 2.48` or `- val_loss > 2.52`"),
])
def test_equality_on_a_real_valued_metric_is_a_problem_with_the_range_to_write(line, fix):
    found, bad = parse_claims(line)
    assert found == [] and len(bad) == 1
    assert "real-valued metric" in bad[0].message and fix in bad[0].fix
    # the suggested lines parse as claims
    suggested = [s for s in fix.split("`") if s.startswith("- ")]
    assert all(parse_claims(s)[0] and not parse_claims(s)[1] for s in suggested)


def test_equality_on_a_count_is_still_a_claim():
    found, bad = parse_claims("- params == 508224\n- steps != 0")
    assert [c.op for c in found] == ["==", "!="] and not bad
    assert set(claims.INTEGER_METRICS) == {"steps", "params", "tokens_seen"}


def test_exp_check_refuses_equality_in_a_real_process(ws):
    lifecycle.create(ws, PARENT, description="parent")
    new_record(ws, human={**HUMAN, "expected": "预期：\n- val_loss == 5.2\n- val_loss < 6\n"})
    proc = run_exp("check", "0.1.0", "--json", cwd=ws.root)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    eq = [p for p in problems if "val_loss == 5.2" in p["message"]]
    assert len(eq) == 1 and eq[0]["level"] == "error" and "`- val_loss >= 5.18` and `- val_loss <= 5.22`" in eq[0]["fix"]


def test_replicates_is_a_validated_config_key_that_check_accepts(ws, cli):
    lifecycle.create(ws, PARENT, description="parent")
    new_record(ws)
    code, out, err = cli("set", "0.1.0", "replicates=0")
    assert code != 0 and "replicates" in err and "Traceback" not in err
    lifecycle.set_config(ws, Version.parse("0.1.0"), ["replicates=3"])
    found = lifecycle.check(ws, records.load(ws, Version.parse("0.1.0")))
    assert not [p for p in found if "replicates" in p.message]  # the runner trains them (tests/test_replicates.py)


# -- through exp analyze, exp show --json and the evidence ------------------------------------------

V = Version.parse("0.1.0")
EXPECTED = "预期：\n- val_loss < 5.3\n- val_loss < 5.24\n- tokens_per_s >= 500\n"


def _replicate_dirs(ws, version, val_losses):
    """What the replicates runner leaves: out/experiment_V/r{i}/ each with a summary.json."""
    for i, vl in enumerate(val_losses):
        sub = ws.out_dir(version) / f"r{i}"
        sub.mkdir(parents=True)
        (sub / "summary.json").write_text(json.dumps({"val_loss": vl, "tokens_per_s": 1000.0 + i, "steps": 60,
                                                      "status": "finished"}))


def test_analysis_with_replicates_judges_on_the_interval_and_show_json_has_the_statistics(ws):
    lifecycle.create(ws, PARENT, description="parent")
    new_record(ws, human={**HUMAN, "expected": EXPECTED})
    write_run(ws, V, val_loss=5.2318)
    _replicate_dirs(ws, V, [5.22, 5.23, 5.245])
    end_run(ws, V)
    results.analyze(ws, V)
    proc = run_exp("show", "0.1.0", "--json", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    shown = {v["claim"]: v for v in json.loads(proc.stdout)["verdicts"]}
    sure, close = shown["val_loss < 5.3"], shown["val_loss < 5.24"]
    iv = intervals.t_interval([5.22, 5.23, 5.245])
    assert sure["verdict"] == "confirmed" and close["verdict"] == "inconclusive (within noise)"
    for v in (sure, close):
        assert v["n"] == 3 and v["method"] == "student_t"
        assert v["mean"] == pytest.approx(iv.mean) and v["ci_low"] == pytest.approx(iv.low)
        assert v["ci_high"] == pytest.approx(iv.high) and v["sd"] == pytest.approx(0.012583, abs=1e-6)
    analysis = records.load(ws, V).meta["analysis"]
    assert len(analysis["replicates"]) == 3 and analysis["verdict_counts"]["inconclusive"] == 1
    assert catalog.replicate_tables(ws, V, records.load(ws, V).meta)[2]["val_loss"] == 5.245
    text = ws.record_path(V).read_text(encoding="utf-8")
    assert "(n=3, 95% CI" in text and "无法判定（在噪声范围内）" in text
    # the new fields are citable evidence, and the drafted ai sections stay traceable
    ev = results.evidence(ws, records.load(ws, V))
    rendered, cited = citations.resolve("验证损失的置信区间下限为 [[verdicts.1.ci_low:.4f]]，上限为 [[verdicts.1.ci_high:.4f]]", ev)
    assert f"{iv.low:.4f}" in rendered and [c.path for c in cited] == ["verdicts.1.ci_low", "verdicts.1.ci_high"]
    assert citations.check(f"val_loss 的置信区间下限 {iv.low:.3f}", ev, (), {}) == []  # a bare number its clause names
    assert results.untraceable(ws, records.load(ws, V)) == []


def test_a_single_run_pools_same_config_records_and_says_so(ws):
    lifecycle.create(ws, PARENT, description="parent")
    for patch, (vl, seed) in enumerate([(5.2318, 1337), (5.2418, 1338), (5.2218, 1339)], start=0):
        v = Version.parse(f"0.1.{patch}")
        new_record(ws, v, human={**HUMAN, "expected": EXPECTED})
        lifecycle.set_config(ws, v, [f"seed={seed}"])
        write_run(ws, v, val_loss=vl)
        end_run(ws, v)
    for patch in (1, 2):
        results.analyze(ws, Version.parse(f"0.1.{patch}"))
    results.analyze(ws, V)
    found = {x["claim"]: x for x in records.load(ws, V).meta["analysis"]["verdicts"]}
    v = found["val_loss < 5.24"]
    assert v["n"] == 1 and v["method"] == "same_config_spread" and v["verdict"] == "inconclusive (within noise)"
    assert "spread of 3 runs of the same config" in v["noise"] and "0.1.1" in v["noise"] and "0.1.2" in v["noise"]
    assert v["sd"] is None and v["ci_high"] == pytest.approx(5.2318 + intervals.t_quantile(0.975, 2) * 0.01, abs=1e-9)
    # another config (a different learning rate) is not a replicate; seed, replicates and placement are
    assert catalog.noise_key(records.load(ws, V).meta["config"]) != catalog.noise_key(
        {**records.load(ws, V).meta["config"], "learning_rate": 1e-4})
    assert catalog.noise_key(records.load(ws, V).meta["config"]) == catalog.noise_key(
        {**records.load(ws, V).meta["config"], "seed": 7, "replicates": 3, "device": "cpu"})


def test_a_single_run_without_replicated_siblings_names_the_command_in_the_record_language(ws):
    lifecycle.create(ws, PARENT, description="parent")
    new_record(ws, human={**HUMAN, "expected": EXPECTED})
    write_run(ws, V, val_loss=5.2318)
    end_run(ws, V)
    results.analyze(ws, V)
    analysis = records.load(ws, V).meta["analysis"]
    v = {x["claim"]: x for x in analysis["verdicts"]}["val_loss < 5.24"]
    assert v["verdict"] == "inconclusive (within noise)" and v["method"] == "noise_floor" and v["n"] == 1
    assert v["label"] == "无法判定（在噪声范围内）" and "`exp set 0.1.0 replicates=3`" in v["reason"]
    assert v["reason"].startswith("n=1：差距 0.0082 在 val_loss 的噪声下限 0.02 以内")
    assert {x["claim"]: x for x in analysis["verdicts"]}["val_loss < 5.3"]["verdict"] == "confirmed"
    assert results.untraceable(ws, records.load(ws, V)) == []


def test_the_noise_index_follows_the_records_and_agrees_with_the_rows(ws):
    """`exp analyze` asks a small index for the runs of its configuration; a record analysed,
    added or changed since the index was written is never missed, and the index's answer is the
    row cache's."""
    lifecycle.create(ws, PARENT, description="parent")
    for patch, (vl, seed) in enumerate([(5.2318, 1337), (5.2418, 1338)], start=0):
        v = Version.parse(f"0.1.{patch}")
        new_record(ws, v, human={**HUMAN, "expected": EXPECTED})
        lifecycle.set_config(ws, v, [f"seed={seed}"])
        write_run(ws, v, val_loss=vl)
        end_run(ws, v)
        results.analyze(ws, v)
    meta = records.load(ws, V).meta
    tables = catalog.replicate_tables(ws, V, meta)
    first = catalog.same_config_noise(ws, V, meta["config"], tables)
    assert first["val_loss"].versions == ("0.1.0", "0.1.1")
    # a third run of the config, analysed after the index was written: the next question sees it
    late = Version.parse("0.1.2")
    new_record(ws, late, human={**HUMAN, "expected": EXPECTED})
    lifecycle.set_config(ws, late, ["seed=1339"])
    write_run(ws, late, val_loss=5.2218)
    end_run(ws, late)
    results.analyze(ws, late)
    assert catalog._noise_siblings(ws, catalog.noise_key(meta["config"]), "0.1.0") is None  # stale: 0.1.2 changed since
    second = catalog.same_config_noise(ws, V, meta["config"], tables)  # via the rows, which rebuild the index
    from_index = catalog._noise_siblings(ws, catalog.noise_key(meta["config"]), "0.1.0")
    assert from_index is not None and from_index["versions"] == ["0.1.1", "0.1.2"]
    assert catalog.same_config_noise(ws, V, meta["config"], tables) == second
    assert second["val_loss"].versions == ("0.1.0", "0.1.1", "0.1.2") and second["val_loss"].runs == 3
    assert second["val_loss"].sd == pytest.approx(intervals.mean_sd([5.2318, 5.2418, 5.2218])[1])
    # a run of another configuration is no sibling, through the rows or the index
    other = Version.parse("0.1.3")
    new_record(ws, other, human={**HUMAN, "expected": EXPECTED})
    lifecycle.set_config(ws, other, ["learning_rate=1e-4"])
    write_run(ws, other, val_loss=5.0)
    end_run(ws, other)
    results.analyze(ws, other)
    for _ in range(2):  # the first rebuilds the index, the second reads it
        assert catalog.same_config_noise(ws, V, meta["config"], tables) == second

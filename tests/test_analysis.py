"""expkit.analysis on one real tiny run (the trainer as a subprocess, once per module) and on
synthetic metrics files shaped like the trainer's, one per kind of trouble."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from expkit.claims import parse_claims
from expkit.config import TrainConfig
from expkit.errors import ExpError
from expkit import diagnosis as diagnosis_mod
from expkit import anomalies, comparison, metrics, numbers, plots, report, samples, verdicts

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"

# The brief's tiny shape: 60 steps, a log line every 5, an eval every 20.
REAL = dict(
    hidden_size=64, max_seq_len=64, batch_size=8, max_steps=60, eval_interval=20, eval_batches=2, log_interval=5,
    warmup_steps=5, save_interval=30, sample_max_new_tokens=16, swanlab_mode="disabled",
)


# -- fixtures: one real run, synthetic runs ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real training run of the tiny model (~15 s): its out dir with every file the trainer writes."""
    root = tmp_path_factory.mktemp("real")
    paths = {}
    for kind, n in (("train", 1500), ("val", 100)):  # a slice of the embedded corpus: same text, less tokenizing
        with gzip.open(REPO / "dataset" / f"pretrain_{kind}.jsonl.gz", "rt", encoding="utf-8") as src:
            (root / f"{kind}.jsonl").write_text("".join(next(src) for _ in range(n)), encoding="utf-8")
        paths[kind] = str(root / f"{kind}.jsonl")
    cfg = TrainConfig(**REAL, data_path=paths["train"], val_data_path=paths["val"])
    (root / "C.json").write_text(json.dumps(cfg.model_dump()), encoding="utf-8")
    out = root / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWANLAB_")}
    env.update(OMP_NUM_THREADS="1", SWANLAB_ROOT=str(root / "swanlab_home"))  # one thread: steady on a busy box
    proc = subprocess.run([sys.executable, "-m", "model.train_pretrain", "--config", str(root / "C.json"),
                           "--out-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def healthy_rows(n_lines: int = 200, every: int = 10, seed: int = 0, const_lr: bool = False) -> list[dict]:
    """Lines like the trainer's: loss decaying to 2.5 with noise, warmup + cosine lr, ~10k tok/s,
    a val_loss every 100 steps."""
    rnd = random.Random(seed)
    steps = [1] + [every * i for i in range(1, n_lines)]
    rows, t, prev = [], 0.0, 0
    for s in steps:
        loss = 2.5 + 6.0 * math.exp(-s / 300) + rnd.gauss(0, 0.02)
        warm = min(1.0, s / 100)
        lr = 1e-3 * warm if const_lr else 1e-3 * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps[-1])))
        tps = 10000 * (1 + rnd.gauss(0, 0.03))
        t += (s - prev) * 512 / tps
        prev = s
        row = {"step": s, "loss": loss, "lr": lr, "grad_norm": 0.5 + rnd.random() / 10, "tokens_per_s": round(tps, 1),
               "tokens_seen": s * 512, "elapsed_s": round(t, 3)}
        if s % 100 == 0:
            row["val_loss"] = loss + 0.05 + rnd.gauss(0, 0.005)
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def kinds(rows: list[dict], tmp_path: Path, max_steps: int | None = None) -> list[str]:
    return [a.kind for a in anomalies.detect_anomalies(metrics.load_metrics(write_rows(tmp_path / "m.jsonl", rows)), max_steps)]


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 1000


# -- the real run ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_run_summary_has_every_claim_metric(real_run):
    summary = json.loads((real_run / "summary.json").read_text(encoding="utf-8"))
    m = metrics.load_metrics(real_run / "metrics.jsonl")
    table = metrics.summarize(real_run, m)
    assert set(metrics.SUMMARY_KEYS) <= set(table)
    assert table["steps"] == 60 and table["status"] == "finished" and table["notes"] == []
    for key in ("final_loss", "val_loss", "best_val_loss", "val_ppl", "tokens_seen", "tokens_per_s", "wall_s", "peak_mem_mb"):
        assert table[key] == summary[key], key
    assert table["train_loss"] == table["loss"] == table["final_loss"]
    assert isinstance(table["params"], int) and table["params"] == summary["params"] > 0
    assert table["best_train_loss"] == min(m.loss)
    assert table["val_ppl"] == pytest.approx(math.exp(table["val_loss"]))
    for key in ("distinct_1", "distinct_2", "repetition_rate"):
        assert 0.0 <= table[key] <= 1.0
    assert len(m) == 13 and list(m.val_step) == [20, 40, 60]  # step 1, every 5th, evals at 20/40/60
    assert m.to_dict()["evals"] == [[int(s), float(v)] for s, v in zip(m.val_step, m.val_loss)]


@pytest.mark.slow
def test_real_healthy_run_has_no_anomalies(real_run):
    m = metrics.load_metrics(real_run / "metrics.jsonl")
    found = anomalies.detect_anomalies(m, max_steps=60)
    assert found == [], [a.message() for a in found]
    diagnosis, suggestions = diagnosis_mod.diagnose([], [], None, lang="zh")
    assert [f.rule for f in diagnosis] == ["healthy"] and suggestions == []


@pytest.mark.slow
def test_real_run_killed_without_summary_still_gets_what_metrics_allow(real_run, tmp_path):
    """A SIGKILLed run: no summary.json or samples.json, and a torn last metrics line."""
    killed = tmp_path / "killed"
    killed.mkdir()
    lines = (real_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:9]) + "\n" + lines[9][:25], encoding="utf-8")
    (killed / "status.json").write_text(json.dumps({"status": "running", "step": 45}), encoding="utf-8")
    table = metrics.summarize(killed)
    rows = [json.loads(x) for x in lines[:9]]
    assert table["steps"] == 40 and table["final_loss"] == rows[-1]["loss"]
    assert table["val_loss"] == rows[-1]["val_loss"]
    assert table["best_val_loss"] == min(r["val_loss"] for r in rows if "val_loss" in r)
    assert table["tokens_seen"] == rows[-1]["tokens_seen"] and table["wall_s"] == rows[-1]["elapsed_s"]
    # the trainer's basis: tokens over training time (evaluation and checkpoint pauses left out)
    assert table["tokens_per_s"] == pytest.approx(rows[-1]["tokens_seen"] / rows[-1]["train_s"])
    assert rows[-1]["train_s"] <= rows[-1]["elapsed_s"]
    assert table["params"] is None and table["peak_mem_mb"] is None and table["distinct_1"] is None
    assert table["status"] == "running"
    assert any("truncated last line 10" in n for n in table["notes"]) and any("no summary.json" in n for n in table["notes"])
    found = anomalies.detect_anomalies(metrics.load_metrics(killed / "metrics.jsonl"), max_steps=60)
    assert [a.kind for a in found] == ["early_stop"] and found[0].end_step == 40, [a.message() for a in found]


@pytest.mark.slow
def test_real_run_verdicts_plots_and_traceable_diagnosis(real_run, tmp_path):
    m = metrics.load_metrics(real_run / "metrics.jsonl")
    table = metrics.summarize(real_run, m)
    parent = {**table, "val_loss": table["val_loss"] + 0.5, "tokens_per_s": table["tokens_per_s"] * 2}
    claims, problems = parse_claims(
        "- val_loss < 100\n- val_loss <= parent - 0.1\n- tokens_per_s >= parent * 110%\n- mfu > 0.3\n"
        "- best_val_loss < baseline\n"
    )
    assert not problems
    vs = verdicts.verdicts(claims, table, parent, None, run_ok=table["status"] == "finished")
    assert [v.verdict for v in vs] == ["confirmed", "confirmed", "refuted", "inconclusive", "inconclusive"]
    assert vs[1].reference == pytest.approx(table["val_loss"] + 0.4)
    assert vs[2].reference == pytest.approx(table["tokens_per_s"] * 2.2)
    assert "did not log mfu" in vs[3].reason  # CPU runs have no MFU
    assert "baseline has no run" in vs[4].reason

    deltas = {"parent 0.1.0": comparison.metric_deltas(table, parent)}
    for lang in ("en", "zh"):
        diagnosis, suggestions = diagnosis_mod.diagnose([], vs, deltas, lang=lang)
        rules = {f.rule for f in diagnosis}
        assert {"claim_refuted", "claim_inconclusive", "delta_better", "delta_slower"} <= rules

    overlay = metrics.load_metrics(real_run / "metrics.jsonl")
    overlay.loss = overlay.loss + 0.3
    out = plots.plot_run(m, tmp_path / "plots" / "run.png", overlays={"parent 0.1.0": overlay}, title="1.4.1 学习率")
    cmp = plots.plot_compare({"1.4.1": m, "1.4.0": overlay}, tmp_path / "plots" / "compare.png")
    assert out == tmp_path / "plots" / "run.png" and is_png(out) and is_png(cmp)


# -- loading -----------------------------------------------------------------------------------------


def test_missing_metrics_file_is_one_line_error_naming_the_file(tmp_path):
    with pytest.raises(metrics.AnalysisError) as err:
        metrics.load_metrics(tmp_path / "nope" / "metrics.jsonl")
    assert isinstance(err.value, ExpError)
    assert "metrics.jsonl" in str(err.value) and "no such file" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(metrics.AnalysisError, match="no such run directory"):
        metrics.summarize(tmp_path / "never_ran")
    (tmp_path / "empty").mkdir()
    with pytest.raises(metrics.AnalysisError, match="neither summary.json nor metrics.jsonl"):
        metrics.summarize(tmp_path / "empty")


def test_truncated_last_line_is_skipped_and_noted(tmp_path):
    rows = healthy_rows(20)
    m = metrics.load_metrics(write_rows(tmp_path / "m.jsonl", rows, tail='{"step": 200, "loss": 2.7'))
    assert len(m) == 20 and m.last_step == rows[-1]["step"]
    assert m.notes == ["skipped truncated last line 21 of m.jsonl"]
    # a line cut inside a multi-byte character is the same case
    path = tmp_path / "cut.jsonl"
    path.write_bytes(write_rows(tmp_path / "x.jsonl", rows).read_bytes() + '{"step": 200, "note": "学'.encode()[:-1])
    assert len(metrics.load_metrics(path)) == 20


def test_malformed_lines_repeated_steps_and_odd_values(tmp_path):
    rows = healthy_rows(20)
    del rows[3]["lr"]
    rows[4]["loss"] = "high"
    text = "".join(json.dumps(r) + "\n" for r in rows[:10]) + "not json\n[1, 2]\n\n"
    text += "".join(json.dumps(r) + "\n" for r in rows[10:])
    text += json.dumps({**rows[-1], "loss": 1.0}) + "\n"  # a resumed run logging its last step again
    path = tmp_path / "m.jsonl"
    path.write_text(text, encoding="utf-8")
    m = metrics.load_metrics(path)
    assert len(m) == 20 and m.loss[-1] == 1.0
    assert math.isnan(m.lr[3]) and math.isnan(m.loss[4]) and m.nonfinite == {}  # absent / not a number: not "non-finite"
    assert any("malformed line 11" in n for n in m.notes) and any("without a numeric step" in n for n in m.notes)
    assert any("repeated" in n for n in m.notes)


def test_non_finite_values_are_kept_and_flagged(tmp_path):
    rows = healthy_rows(150)
    text = "".join(json.dumps(r) + "\n" for r in rows[:-3])
    text += json.dumps({**rows[-3], "grad_norm": None}) + "\n"  # the trainer's way of writing NaN
    text += json.dumps({**rows[-2], "grad_norm": math.inf}) + "\n"  # json.dumps writes Infinity
    text += json.dumps({**rows[-1], "loss": math.nan, "val_loss": math.nan}) + "\n"
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    assert "Infinity" in text and "NaN" in text
    m = metrics.load_metrics(path)
    assert m.nonfinite == {"loss": [1490], "grad_norm": [1470, 1480], "val_loss": [1490]}
    assert math.isnan(m.loss[-1]) and math.isinf(m.grad_norm[-2])
    found = anomalies.detect_anomalies(m)
    assert [(a.kind, a.metric, a.step) for a in found] == [
        ("nonfinite", "grad_norm", 1470), ("nonfinite", "loss", 1490), ("nonfinite", "val_loss", 1490)]
    assert found[0].evidence["count"] == 2 and "non-finite" in found[0].message()
    assert found[0].to_dict()["evidence"]["value"] is None  # NaN is null in the JSON-safe dict
    table = metrics.summarize(path.parent, m)
    assert math.isnan(table["final_loss"]) and table["best_train_loss"] == min(r["loss"] for r in rows[:-1])
    claims, _ = parse_claims("- final_loss < 5\n- val_loss < 5\n")
    vs = verdicts.verdicts(claims, table, None, None, run_ok=True)
    assert [v.verdict for v in vs] == ["inconclusive", "inconclusive"]
    assert all("NaN" in v.reason for v in vs) and vs[0].to_dict()["observed"] is None


# -- anomalies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_healthy_synthetic_runs_have_no_anomalies(tmp_path, seed):
    assert kinds(healthy_rows(seed=seed), tmp_path, max_steps=1990) == []
    assert kinds(healthy_rows(60, seed=seed, const_lr=True), tmp_path, max_steps=590) == []


def _spike(rows):
    rows[120]["loss"] += 1.5
    return rows


def _divergence(rows):
    for r in rows:
        if r["step"] > 1200:
            r["loss"] += 2.0 * (r["step"] - 1200) / 800
    return rows


def _plateau(rows):
    for r in rows:
        if r["step"] > 800:
            r["loss"] = 3.0 + random.Random(r["step"]).gauss(0, 0.02)
    return rows


def _overfitting(rows):
    for r in rows:
        if "val_loss" in r and r["step"] >= 1700:
            r["val_loss"] = 2.6 + 0.1 * (r["step"] - 1600) / 100
    return rows


def _throughput(rows):
    for r in rows[100:110]:
        r["tokens_per_s"] *= 0.3
    return rows


def _stall(rows):
    for r in rows[150:]:
        r["elapsed_s"] += 600.0
    return rows


@pytest.mark.parametrize("kind,make,const_lr,evidence", [
    ("spike", _spike, False, {"jump": (1.4, 1.6)}),
    ("divergence", _divergence, False, {"rise_ratio": (0.5, 0.8)}),
    ("plateau", _plateau, True, {"lr_ratio": (0.99, 1.01)}),
    ("overfitting", _overfitting, False, {"val_from": (2.69, 2.71), "val_to": (2.89, 2.91)}),
    ("throughput_drop", _throughput, False, {"ratio": (0.25, 0.35)}),
    ("stall", _stall, False, {"gap_s": (600, 601)}),
])
def test_each_bad_curve_fires_exactly_its_kind(tmp_path, kind, make, const_lr, evidence):
    m = metrics.load_metrics(write_rows(tmp_path / "m.jsonl", make(healthy_rows(const_lr=const_lr))))
    found = anomalies.detect_anomalies(m, max_steps=1990)
    assert [a.kind for a in found] == [kind], [a.message() for a in found]
    for key, (lo, hi) in evidence.items():
        assert lo <= found[0].evidence[key] <= hi, (key, found[0].evidence)
    for lang in ("en", "zh"):
        msg = found[0].message(lang)
        assert "\n" not in msg, msg


def test_a_single_slow_line_is_not_a_throughput_drop(tmp_path):
    rows = healthy_rows()
    rows[100]["tokens_per_s"] *= 0.3
    assert kinds(rows, tmp_path) == []
    rows[101]["tokens_per_s"] *= 0.3
    assert kinds(rows, tmp_path) == ["throughput_drop"]


def test_spike_step_and_plateau_not_fired_by_annealing(tmp_path):
    m = metrics.load_metrics(write_rows(tmp_path / "m.jsonl", _spike(healthy_rows())))
    (spike,) = anomalies.detect_anomalies(m)
    assert spike.step == 1200 and spike.evidence["mads"] > 6
    assert kinds(_plateau(healthy_rows()), tmp_path) == []  # same flat tail, but the lr has annealed


def test_early_stop_and_empty_metrics(tmp_path):
    assert kinds(healthy_rows(150), tmp_path, max_steps=1990) == ["early_stop"]
    assert kinds(healthy_rows(150), tmp_path) == []  # no max_steps, no early-stop check
    empty = metrics.load_metrics(write_rows(tmp_path / "e.jsonl", []))
    assert len(empty) == 0 and empty.notes == [] and empty.last("loss") is None
    assert [a.kind for a in anomalies.detect_anomalies(empty, max_steps=10)] == ["early_stop"]
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"step": 1, "loss": 9.0}\n\n{"step": 2, "loss": 8.0}\n\n', encoding="utf-8")
    assert list(metrics.load_metrics(blank).loss) == [9.0, 8.0] and metrics.load_metrics(blank).notes == []


# -- verdicts -----------------------------------------------------------------------------------------

OBSERVED = {"val_loss": 5.2318, "tokens_per_s": 1200.0, "final_loss": 5.1, "params": 508224, "mfu": None}


def test_verdicts_against_values_parent_and_baseline():
    claims, _ = parse_claims(
        "- val_loss < 5.3\n- val_loss < 5.2\n- val_loss <= parent - 0.1\n- tokens_per_s >= baseline * 1.1\n"
        "- params == 508224\n"
    )
    vs = verdicts.verdicts(claims, OBSERVED, {"val_loss": 5.4}, {"tokens_per_s": 1000.0}, run_ok=True)
    assert [(v.verdict, v.reference) for v in vs] == [
        ("confirmed", 5.3), ("refuted", 5.2), ("confirmed", pytest.approx(5.3)), ("confirmed", pytest.approx(1100.0)),
        ("confirmed", 508224)]
    assert all(v.reason is None for v in vs)
    for v in vs:
        assert set(v.to_dict()) == {"claim", "verdict", "observed", "reference", "reason", "metric", "line",
                                    "n", "mean", "sd", "ci_low", "ci_high", "method", "df", "noise"}
        assert v.to_dict()["n"] == 1 and v.to_dict()["ci_low"] is None  # one run: no interval
    assert vs[2].to_dict()["claim"] == "val_loss <= parent - 0.1" and vs[2].line == 3


def test_inconclusive_verdicts_say_why():
    claims, _ = parse_claims(
        "- val_loss <= parent - 0.1\n- val_loss <= baseline\n- mfu > 0.3\n- distinct_2 > 0.5\n- val_loss < 9\n"
    )
    vs = verdicts.verdicts(claims, OBSERVED, None, {"tokens_per_s": 1.0}, run_ok=True)
    assert [v.verdict for v in vs] == ["inconclusive"] * 4 + ["confirmed"]
    assert "parent has no run" in vs[0].reason and vs[0].reference is None
    assert "baseline run has no val_loss" in vs[1].reason
    assert "did not log mfu" in vs[2].reason and "did not log distinct_2" in vs[3].reason
    assert [v.reason_code for v in vs[:4]] == ["reference_no_run", "reference_lacks_metric", "metric_missing", "metric_missing"]
    failed = verdicts.verdicts(claims, OBSERVED, {"val_loss": 6.0}, None, run_ok=False)
    assert {v.verdict for v in failed} == {"inconclusive"} and all("did not finish" in v.reason for v in failed)
    nan_parent = verdicts.verdicts(claims[:1], OBSERVED, {"val_loss": math.nan}, None, run_ok=True)[0]
    assert nan_parent.verdict == "inconclusive" and "NaN" in nan_parent.reason


# -- sample quality -----------------------------------------------------------------------------------


def test_sample_quality_on_known_strings():
    q = samples.sample_quality(["a b a b", "a a a a a", "床前明月光", "", "人生 is good.\n\n"])
    per = q["samples"]
    assert [p["tokens"] for p in per] == [4, 5, 5, 0, 7]
    assert per[0]["distinct_1"] == 0.5 and per[0]["distinct_2"] == pytest.approx(2 / 3) and per[0]["repetition_rate"] == 0.0
    assert per[1]["distinct_1"] == 0.2 and per[1]["distinct_2"] == 0.25 and per[1]["repetition_rate"] == pytest.approx(2 / 3)
    assert per[2]["distinct_1"] == 1.0 and per[2]["repetition_rate"] == 0.0
    assert per[3]["distinct_1"] is None and per[3]["repetition_rate"] is None  # empty: left out of the means
    assert samples.sample_tokens("人生 is good.\n\n") == ["人", "生", "is", "good", ".", "\n", "\n"]
    assert per[4]["distinct_1"] == pytest.approx(6 / 7)
    assert q["distinct_1"] == pytest.approx((0.5 + 0.2 + 1.0 + 6 / 7) / 4)
    assert q["repetition_rate"] == pytest.approx((0.0 + 2 / 3 + 0.0 + 0.0) / 4)
    assert (q["measured"], q["short"]) == (4, 1)
    # a model that stopped after a token or two is not "100 % distinct": counted apart, not averaged
    q = samples.sample_quality(["》", ".", "a b a b"])
    assert [p["distinct_1"] for p in q["samples"]] == [1.0, 1.0, 0.5]
    assert (q["measured"], q["short"], q["distinct_1"]) == (1, 2, 0.5)


def test_sample_quality_reads_samples_json_completions():
    data = {"samples": [{"prompt": "人生", "mode": "greedy", "completion": "\n\n\n\n", "text": "人生\n\n\n\n"},
                        {"prompt": "The", "mode": "sample", "completion": " cat sat on the mat"}]}
    q = samples.sample_quality(data)
    assert [(p["prompt"], p["mode"], p["distinct_1"]) for p in q["samples"]] == [("人生", "greedy", 0.25), ("The", "sample", 1.0)]
    assert q["samples"][0]["repetition_rate"] == 1 - 1 / 2  # "\n\n\n" twice: one repeat in two 3-grams


# -- comparison and diagnosis ----------------------------------------------------------------------


def test_compare_keeps_only_differing_config_and_gives_deltas():
    base = {"learning_rate": 3e-3, "hidden_size": 128, "dropout": 0.0}
    result = comparison.compare(
        {"1.4.0": {"val_loss": 5.0, "tokens_per_s": 1000.0, "steps": 60, "mfu": 0.0, "status": "finished"},
         "1.4.1": {"val_loss": 4.9, "tokens_per_s": 1100.0, "steps": 60, "mfu": 0.1},
         "1.4.2": {"val_loss": 5.5, "tokens_per_s": None, "steps": 60}},
        {"1.4.0": base, "1.4.1": {**base, "learning_rate": 1.5e-3}, "1.4.2": {**base, "dropout": 0.1}},
    )
    assert result["reference"] == "1.4.0" and result["labels"] == ["1.4.0", "1.4.1", "1.4.2"]
    assert result["config_diff"] == {"learning_rate": {"1.4.0": 3e-3, "1.4.1": 1.5e-3, "1.4.2": 3e-3},
                                     "dropout": {"1.4.0": 0.0, "1.4.1": 0.0, "1.4.2": 0.1}}
    assert list(result["metrics"]) == ["steps", "val_loss", "tokens_per_s", "mfu"]
    d = result["deltas"]["1.4.1"]
    assert d["val_loss"]["abs"] == pytest.approx(-0.1) and d["val_loss"]["rel"] == pytest.approx(-0.02)
    assert d["tokens_per_s"]["rel"] == pytest.approx(0.1) and d["mfu"]["rel"] is None  # reference 0: no ratio
    assert "tokens_per_s" not in result["deltas"]["1.4.2"] and d["steps"]["abs"] == 0


def test_diagnose_rules_in_both_languages_with_traceable_numbers(tmp_path):
    found = []
    for make, const_lr in ((_divergence, False), (_spike, False), (_plateau, True), (_overfitting, False),
                           (_throughput, False), (_stall, False)):
        path = write_rows(tmp_path / f"{make.__name__}.jsonl", make(healthy_rows(const_lr=const_lr)))
        found += anomalies.detect_anomalies(metrics.load_metrics(path))
    found += anomalies.detect_anomalies(metrics.load_metrics(write_rows(tmp_path / "short.jsonl", healthy_rows(100))), max_steps=1990)
    claims, _ = parse_claims("- val_loss < 2.5\n- val_loss <= baseline - 0.1\n")
    vs = verdicts.verdicts(claims, {"val_loss": 2.61}, None, None, run_ok=True)
    this, parent = {"val_loss": 2.61, "tokens_per_s": 900.0}, {"val_loss": 2.5, "tokens_per_s": 1000.0}
    deltas = {"parent 1.4.0": comparison.metric_deltas(this, parent)}
    expected = {"divergence": "learning_rate", "spike": "grad_clip", "plateau": "learning_rate", "overfitting": "dropout",
                "throughput_drop": "data loading", "stall": "disk", "early_stop": "resume", "claim_refuted": "hypothesis",
                "claim_inconclusive": "reference record", "delta_worse": "config changes", "delta_slower": "machine load"}
    for lang in ("en", "zh"):
        diagnosis, suggestions = diagnosis_mod.diagnose(found, vs, deltas, lang=lang)
        assert [f.rule for f in diagnosis] == ["divergence", "spike", "overfitting", "plateau", "throughput_drop", "stall",
                                               "early_stop", "claim_refuted", "claim_inconclusive", "delta_worse",
                                               "delta_slower"]
        assert {s.rule for s in suggestions} == set(expected)
        for f in diagnosis + suggestions:
            assert f.text.startswith("- **") and "\n" not in f.text and f.evidence is not None
            assert set(f.to_dict()) == {"rule", "evidence", "text"}
        if lang == "en":
            by_rule = {s.rule: s.text for s in suggestions}
            for rule, word in expected.items():
                assert word in by_rule[rule], (rule, by_rule[rule])
            # with the config keys that differ from the reference known, the suggestion names them
            _, named = diagnosis_mod.diagnose(found, vs, deltas, lang=lang, changes={"parent 1.4.0": ["model_type"]})
            slower = next(s.text for s in named if s.rule == "delta_slower")
            assert "`model_type`" in slower and "batch_size" not in slower
        else:
            assert "损失发散" in diagnosis[0].text and "学习率" in "".join(f.text for f in diagnosis)


# -- plots ----------------------------------------------------------------------------------------


def test_plots_are_deterministic_pngs_and_no_plotting_library_is_imported_at_startup(tmp_path):
    m = metrics.load_metrics(write_rows(tmp_path / "m.jsonl", healthy_rows()))
    a = plots.plot_run(m, tmp_path / "a.png")
    b = plots.plot_run(m, tmp_path / "b.png")
    assert is_png(a) and a.read_bytes() == b.read_bytes()
    assert is_png(plots.plot_compare({"x": m}, tmp_path / "deep" / "c.png"))
    code = "import sys, expkit.metrics, expkit.anomalies, expkit.verdicts, expkit.plots, expkit.report, expkit.results; print(sorted({'numpy', 'PIL', 'matplotlib', 'torch', 'swanlab', 'git'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_long_curves_are_thinned_for_plotting_without_losing_a_spike():
    import numpy as np

    x = np.arange(100_000)
    y = np.linspace(8, 3, 100_000)
    y[54_321] = 50.0
    tx, ty = plots._thin(x, y)
    assert len(tx) <= 4100 and ty.max() == 50.0 and tx[ty.argmax()] == 54_321 and (np.diff(tx) > 0).all()


# -- reports ------------------------------------------------------------------------------------------


def _records() -> list[dict]:
    cfg = TrainConfig().model_dump()
    metrics = {"steps": 360, "final_loss": 5.2, "val_loss": 5.22, "best_val_loss": 5.21, "tokens_per_s": 3100.0,
               "params": 1213056, "repetition_rate": 0.3}
    return [
        {"version": "1.10.0", "status": "draft", "description": "later | with a pipe", "parent": None, "baseline": None,
         "config": cfg, "metrics": None, "verdicts": None},
        {"version": "1.4.1", "status": "analyzed", "description": "学习率减半\n第二行", "parent": "1.4.0", "baseline": "1.0.0",
         "config": {**cfg, "learning_rate": 1.5e-3}, "metrics": {**metrics, "val_loss": 5.1, "tokens_per_s": 2900.0},
         "verdicts": [{"verdict": "confirmed"}, {"verdict": "refuted"}, {"verdict": "inconclusive"}, {"verdict": "confirmed"}]},
        {"version": "1.4.0", "status": "committed", "description": "=cmd|' /C calc'!A0", "parent": "1.0.0", "baseline": "1.0.0",
         "config": cfg, "metrics": metrics, "verdicts": []},
        {"version": "1.0.0", "status": "committed", "description": "基线", "parent": None, "baseline": None,
         "config": cfg, "metrics": {**metrics, "val_loss": math.nan}, "verdicts": []},
    ]


def test_report_rows_csv_and_markdown(tmp_path):
    rows = report.report_rows(_records())
    assert [r["version"] for r in rows] == ["1.0.0", "1.4.0", "1.4.1", "1.10.0"]
    assert all(list(r) == [*report.REPORT_COLUMNS, *report.TASK_COLUMNS] and r["task"] == "pretrain" for r in rows)
    assert rows[2]["changes"] == "learning_rate=0.0015" and rows[1]["changes"] == ""
    assert (rows[2]["confirmed"], rows[2]["refuted"], rows[2]["inconclusive"]) == (2, 1, 1)

    path = tmp_path / "tracker.csv"
    path.write_bytes(report.tracker_csv(rows).encode("utf-8"))
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    with open(path, encoding="utf-8-sig", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == list(report.REPORT_COLUMNS) and len(table) == 5
    back = [dict(zip(table[0], r)) for r in table[1:]]
    assert back[2]["description"] == "学习率减半\n第二行" and back[2]["learning_rate"] == "0.0015"
    assert back[1]["description"].startswith("'=")  # not a formula when a spreadsheet opens it
    assert back[0]["val_loss"] == "NaN" and back[3]["val_loss"] == ""
    again = report.tracker_csv(report.report_rows(list(reversed(_records()))))
    assert again.encode("utf-8") == path.read_bytes()  # stable: input order does not matter

    for lang, title in (("zh", "# 实验报告"), ("en", "# Experiment report")):
        md = report.render_report_md(rows, lang)
        assert md.startswith(title) and all(v in md for v in ("1.0.0", "1.4.0", "1.4.1", "1.10.0"))
        assert "later \\| with a pipe" in md and "学习率减半 第二行" in md
        assert "| val_loss | 5.1 | 1.4.1 |" in md and "| tokens_per_s | 3100 | 1.0.0, 1.4.0 |" in md
        assert "| 128×2 seq 128 bs 16 lr 0.0015 360 steps | learning_rate=0.0015 | 5.2 | 5.1 |" in md
        assert "- 1.0.0 基线 (committed)\n  - 1.4.0" in md and "\n    - 1.4.1 " in md
        assert "| 1.4.1 | analyzed |" in md and "| 2/1/1 |" in md


def test_report_over_a_long_lineage_chain_does_not_recurse():
    records = [{"version": f"1.{i}.0", "status": "draft", "parent": f"1.{i - 1}.0" if i else None} for i in range(1500)]
    md = report.render_report_md(report.report_rows(records), "en")
    assert f"{'  ' * 1499}- 1.1499.0" in md


# -- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("x,text", [
    (5.2318, "5.232"), (7.400565147399902, "7.401"), (1626.4031, "1626"), (0.0006, "0.0006"), (8e-05, "8e-05"),
    (1.2345e-05, "1.234e-05"), (30720, "30720"), (0.0, "0"), (-0.1234, "-0.1234"), (999.96, "1000"), (12.5, "12.5"),
    (math.nan, "NaN"), (None, "n/a"), (True, "true"),
])
def test_format_number(x, text):
    assert numbers.format_number(x) == text


def test_format_percent_and_signed():
    assert numbers.format_percent(0.0163) == "1.63%" and numbers.format_percent(-0.125, signed=True) == "-12.5%"
    assert numbers.format_number(0.12, signed=True) == "+0.12" and numbers.format_number(3, signed=True) == "+3"

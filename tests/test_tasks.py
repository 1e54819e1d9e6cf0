"""Tasks: a record of any task goes through the loop, and a classifier's record speaks classification.

A stand-alone trainer written here (not our package) is declared in the workspace's
pyproject.toml as ``[tool.exp.tasks.toy]`` and taken through new → set → run → analyze (a verdict
on its own metric) → review → commit, through real ``exp`` subprocesses. A classify record
fine-tunes the model of a pretraining record of the same workspace (``init_from: VERSION``).
"""

from __future__ import annotations

import json
import math
import textwrap

import pytest
from conftest import fill, run_exp
from test_loop import approve_at_terminal, exp_json, exp_ok, git
from test_review import git_identity
from test_runner import TINY

from expkit import tasks
from expkit.anomalies import prediction_anomalies
from expkit.metrics import load_metrics, summarize_task

#: The trainer a person brings: reads --config, appends metrics.jsonl, writes summary.json, exits 0.
TOY_TRAINER = textwrap.dedent('''\
    import argparse, json, math, pathlib, sys
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--out-dir", required=True)
    a = p.parse_args()
    cfg = json.loads(pathlib.Path(a.config).read_text())
    out = pathlib.Path(a.out_dir)
    if cfg.get("fail"):
        print("toy: asked to fail", file=sys.stderr)
        sys.exit(3)
    score = 0.0
    with open(out / "metrics.jsonl", "a") as f:
        for step in range(1, cfg["steps"] + 1):
            score = 1 - math.exp(-cfg["lr"] * step)
            f.write(json.dumps({"step": step, "loss": 1 - score, "score": score}) + "\\n")
    (out / "summary.json").write_text(json.dumps({"score": score, "loss": 1 - score, "steps": cfg["steps"]}))
''')

TOY_TASK = textwrap.dedent('''
    [tool.exp.tasks.toy]
    command = "python toy_train.py --config {config} --out-dir {out_dir}"   # run from the workspace root
    metrics = { score = "higher", loss = "lower" }
''')

TOY_HUMAN = {
    "goal": "Check that the toy trainer converges within 20 steps.",
    "hypothesis": "At lr 0.1 the score passes 0.8 by step 20.",
    "expected": "- score >= 0.8\n- loss < 0.01\n",
    "focus": "The score curve.",
}


def declare(ws, text: str) -> None:
    path = ws.root / "pyproject.toml"
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def exp_fails(ws, *args: str) -> str:
    """`exp ARGS` that must refuse: non-zero, one line on stderr, no traceback; returns the line."""
    r = run_exp(*args, cwd=ws.root, env={"EXP_ROOT": str(ws.root)})
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- a person's own trainer through the whole loop -------------------------------------------------
def test_a_declared_trainer_goes_new_set_run_analyze_review_commit(ws, tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)
    declare(ws, TOY_TASK)
    (ws.root / "toy_train.py").write_text(TOY_TRAINER, encoding="utf-8")
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "workspace with a toy trainer")

    listed = {t["name"]: t for t in exp_json(ws, "tasks")["tasks"]}
    assert set(listed) == {"pretrain", "classify", "toy"}
    assert listed["toy"]["metrics"] == [{"name": "score", "direction": "higher", "meaning": "", "label": {"zh": "score", "en": "score"}},
                                        {"name": "loss", "direction": "lower", "meaning": "", "label": {"zh": "loss", "en": "loss"}}]

    assert exp_json(ws, "new", "0.1.0", "--task", "toy", "--desc", "toy trainer")["task"] == "toy"
    fill(ws.record_path("0.1.0"), TOY_HUMAN)
    exp_ok(ws, "set", "0.1.0", "lr=0.1", "steps=20", "note=first try")
    shown = exp_json(ws, "show", "0.1.0")
    assert shown["config"] == {"lr": 0.1, "steps": 20, "note": "first try"}  # free-form keys, typed as YAML
    assert exp_json(ws, "check", "0.1.0")["status"] == "ready"
    assert "task: \"toy\"" in ws.record_path("0.1.0").read_text(encoding="utf-8")

    exp_ok(ws, "run", "0.1.0")
    script = ws.run_script_path("0.1.0").read_text(encoding="utf-8")
    assert "LAUNCH=(\"$PYTHON\" toy_train.py --config \"$OUT_DIR/config.json\" --out-dir \"$OUT_DIR\")" in script
    assert "model.train_pretrain" not in script and "PYTHONSAFEPATH" not in script
    out = ws.out_dir("0.1.0")
    assert json.loads((out / "config.json").read_text()) == {"lr": 0.1, "steps": 20, "note": "first try"}

    analyzed = exp_json(ws, "analyze", "0.1.0")
    expected_score = 1 - math.exp(-0.1 * 20)
    by_claim = {v["claim"]: v for v in analyzed["verdicts"]}
    assert by_claim["score >= 0.8"]["verdict"] == "confirmed"
    assert by_claim["score >= 0.8"]["observed"] == pytest.approx(expected_score)
    assert by_claim["loss < 0.01"]["verdict"] == "refuted"
    assert by_claim["loss < 0.01"]["observed"] == pytest.approx(1 - expected_score)
    assert analyzed["metrics"]["best_score"] == pytest.approx(expected_score)  # higher is better: the max
    assert analyzed["metrics"]["best_loss"] == pytest.approx(1 - expected_score)  # lower is better: the min
    assert "out/experiment_0.1.0/plots/metrics.png" in analyzed["plots"]
    assert (out / "plots" / "metrics.png").stat().st_size > 1000

    text = ws.record_path("0.1.0").read_text(encoding="utf-8")
    assert "| `score` |" in text and "| `loss` |" in text  # the task's own metrics in the generated table
    context = exp_json(ws, "context", "0.1.0")  # what the assistant reads: the task's metrics and their direction
    assert context["task"]["name"] == "toy"
    assert {m["name"]: m["direction"] for m in context["task"]["metrics"]} == {"score": "higher", "loss": "lower"}

    approve_at_terminal(ws, "0.1.0")
    committed = exp_json(ws, "commit", "0.1.0")
    assert committed["sha"] == git(ws, "rev-parse", "HEAD").strip()
    assert exp_json(ws, "show", "0.1.0")["status"] == "committed"
    files = git(ws, "show", "--name-only", "--format=", "HEAD").split()
    assert "experiment/experiment_0.1.0.md" in files
    assert "out/experiment_0.1.0/summary.json" in files and "out/experiment_0.1.0/plots/metrics.png" in files


def test_a_trainer_that_breaks_its_contract_fails_the_run(ws):
    declare(ws, TOY_TASK)
    (ws.root / "toy_train.py").write_text(TOY_TRAINER, encoding="utf-8")
    exp_ok(ws, "new", "0.1.0", "--task", "toy")
    fill(ws.record_path("0.1.0"), TOY_HUMAN)
    exp_ok(ws, "set", "0.1.0", "lr=0.1", "steps=3", "fail=true")
    r = run_exp("run", "0.1.0", cwd=ws.root, env={"EXP_ROOT": str(ws.root)})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    shown = exp_json(ws, "show", "0.1.0")
    assert shown["status"] == "failed" and shown["run"]["exit_code"] == 3


def test_the_preflight_finds_a_missing_trainer_before_anything_runs(ws):
    declare(ws, TOY_TASK)  # toy_train.py is not written
    exp_ok(ws, "new", "0.1.0", "--task", "toy")
    fill(ws.record_path("0.1.0"), TOY_HUMAN)
    exp_ok(ws, "set", "0.1.0", "lr=0.1", "steps=3")
    r = run_exp("run", "0.1.0", cwd=ws.root, env={"EXP_ROOT": str(ws.root)})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "toy_train.py" in r.stdout + r.stderr
    assert exp_json(ws, "show", "0.1.0")["status"] in ("draft", "ready")  # nothing started
    assert not ws.out_dir("0.1.0").exists()


def test_a_declared_config_schema_types_and_checks_the_keys(ws):
    (ws.root / "toy_config.py").write_text(textwrap.dedent('''\
        from pydantic import BaseModel, ConfigDict, Field

        class ToyConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")
            lr: float = Field(0.1, gt=0, description="step size")
            steps: int = Field(20, ge=1, description="steps")
    '''), encoding="utf-8")
    declare(ws, TOY_TASK.replace("[tool.exp.tasks.toy]", "[tool.exp.tasks.toy]\nconfig = \"toy_config:ToyConfig\""))
    exp_ok(ws, "new", "0.1.0", "--task", "toy")
    assert exp_json(ws, "show", "0.1.0")["config"] == {"lr": 0.1, "steps": 20}
    before = ws.record_path("0.1.0").read_bytes()
    assert "did you mean lr" in exp_fails(ws, "set", "0.1.0", "lrr=0.5")
    assert "lr" in exp_fails(ws, "set", "0.1.0", "lr=-1")
    assert ws.record_path("0.1.0").read_bytes() == before
    exp_ok(ws, "set", "0.1.0", "steps=1e2")
    assert exp_json(ws, "show", "0.1.0")["config"]["steps"] == 100
    assert "step size" in ws.record_path("0.1.0").read_text(encoding="utf-8")  # the schema's descriptions in the table


@pytest.mark.parametrize("body, says", [
    ('command = "python t.py --config {config}"\nmetrics = { a = "higher" }', "{out_dir}"),
    ('command = "python t.py {out_dir} {data}"\nmetrics = { a = "higher" }', "unknown placeholder"),
    ('command = "python t.py {out_dir}"\nmetrics = { a = "up" }', "\"lower\" or \"higher\""),
    ('command = "python t.py {out_dir}"', "metrics is missing"),
    ('metrics = { a = "higher" }', "command is missing"),
    ('command = "python t.py {out_dir}"\nmetrics = { a = "higher" }\nconfig = "no_such_module:Cfg"', "cannot import no_such_module"),
    ('command = "python t.py {out_dir}"\nmetrics = { a = "higher" }\nwat = 1', "unknown key"),
])
def test_a_bad_task_declaration_is_one_line_and_writes_nothing(ws, body, says):
    declare(ws, f"\n[tool.exp.tasks.bad]\n{body}\n")
    line = exp_fails(ws, "new", "0.1.0", "--task", "bad")
    assert says in line and "pyproject.toml [tool.exp.tasks.bad]" in line
    assert not ws.record_path("0.1.0").exists() and not ws.state_path("0.1.0").exists()


def test_task_names_and_inheritance(ws):
    assert "unknown task 'clasify'" in exp_fails(ws, "new", "0.1.0", "--task", "clasify")
    declare(ws, '\n[tool.exp.tasks.pretrain]\ncommand = "x {out_dir}"\nmetrics = { a = "lower" }\n')
    assert "built-in task" in exp_fails(ws, "tasks")


def test_from_inherits_the_task_and_refuses_another(ws):
    exp_ok(ws, "new", "0.1.0")
    assert "task" not in exp_json(ws, "show", "0.1.0") or exp_json(ws, "show", "0.1.0").get("task") in (None, "pretrain")
    line = exp_fails(ws, "new", "0.2.0", "--task", "classify", "--from", "0.1.0")
    assert "init_from=0.1.0" in line and not ws.record_path("0.2.0").exists()
    exp_ok(ws, "new", "0.3.0", "--task", "classify")
    exp_ok(ws, "new", "0.3.1", "--from", "0.3.0")
    text = ws.record_path("0.3.1").read_text(encoding="utf-8")
    assert 'task: "classify"' in text and "test_data_path" in text
    assert "learning_rate" in exp_fails(ws, "set", "0.3.1", "learning_rat=1e-3")


# -- a classifier fine-tuned from a pretraining record ----------------------------------------------
@pytest.mark.slow
def test_a_classify_record_fine_tunes_a_pretraining_records_model(ws):
    exp_ok(ws, "new", "0.1.0", "--desc", "tiny pretraining")
    fill(ws.record_path("0.1.0"), {"goal": "预训练一个微型模型。", "hypothesis": "损失下降。", "expected": "- val_loss < 20\n",
                                   "focus": "损失。"})
    exp_ok(ws, "set", "0.1.0", *TINY, "max_steps=20", "swanlab_mode=disabled")
    assert exp_json(ws, "check", "0.1.0")["ok"]

    exp_ok(ws, "new", "0.2.0", "--task", "classify", "--desc", "分类：从 0.1.0 微调")
    fill(ws.record_path("0.2.0"), {"goal": "在 0.1.0 的模型上微调分类器。", "hypothesis": "比多数类基线好。",
                                   "expected": "- test_macro_f1 >= baseline + 0.02\n- test_acc > 0\n", "focus": "宏 F1。"})
    exp_ok(ws, "set", "0.2.0", "init_from=0.1.0", "max_steps=12", "eval_interval=6", "batch_size=16", "max_seq_len=48")
    # `baseline` is the majority class on the same test set: exp check knows it without a baseline record
    assert exp_json(ws, "check", "0.2.0")["ok"]
    line = exp_fails(ws, "run", "0.2.0")  # 0.1.0 has not run: the preflight says what comes first
    assert "init_from 0.1.0" in line or "init_from" in line
    assert not (ws.out_dir("0.2.0") / "metrics.jsonl").exists()

    exp_ok(ws, "run", "0.1.0")
    exp_ok(ws, "run", "0.2.0")
    out = ws.out_dir("0.2.0")
    assert json.loads((out / "config.json").read_text())["init_from"] == str(ws.out_dir("0.1.0") / "final")
    summary = json.loads((out / "summary.json").read_text())
    analyzed = exp_json(ws, "analyze", "0.2.0")
    by_claim = {v["claim"]: v for v in analyzed["verdicts"]}
    macro = by_claim["test_macro_f1 >= baseline + 0.02"]
    assert macro["observed"] == pytest.approx(summary["test_macro_f1"])
    assert macro["reference"] == pytest.approx(summary["majority_macro_f1"] + 0.02)
    assert macro["verdict"] == ("confirmed" if summary["test_macro_f1"] >= summary["majority_macro_f1"] + 0.02 else "refuted")
    for key in ("test_acc", "test_macro_f1", "test_weighted_f1", "majority_acc", "majority_macro_f1", "best_val_macro_f1"):
        assert key in analyzed["metrics"], key
    assert "out/experiment_0.2.0/plots/confusion_matrix.png" in analyzed["plots"]

    shown = exp_json(ws, "show", "0.2.0")
    assert shown["config"]["init_from"] == "0.1.0"  # the record keeps the lineage; the run got the path
    text = ws.record_path("0.2.0").read_text(encoding="utf-8")
    assert "初始化自预训练实验 0.1.0" in text
    assert "`baseline` 指同一测试集上的多数类基线" in text  # the record says what its claims' baseline is
    assert "各类别" in text and "classification_report.txt" in text and "置信度最高的错分样本" in text
    labels = summary["labels"]
    assert all(f"| {label} |" in text for label in labels)


# -- the pure parts ------------------------------------------------------------------------------------
def test_a_classifier_predicting_one_class_is_an_anomaly():
    one = prediction_anomalies({"labels": ["a", "b", "c"], "confusion_matrix": [[0, 5, 0], [0, 7, 0], [0, 3, 0]], "best_step": 4})
    assert [(a.kind, a.label, a.evidence["n"]) for a in one] == [("one_class", "b", 15)]
    collapsed = prediction_anomalies({"labels": ["a", "b", "c"], "confusion_matrix": [[1, 30, 0], [0, 20, 0], [0, 40, 2]]})
    [a] = collapsed
    assert a.kind == "prediction_collapse" and a.label == "b" and a.evidence["share_ratio"] == pytest.approx(90 / 93)
    assert "'b'" in a.message("en") and "'b'" in a.message("zh")
    healthy = prediction_anomalies({"labels": ["a", "b"], "confusion_matrix": [[9, 1], [2, 8]]})
    assert healthy == []
    assert prediction_anomalies({"labels": ["a"], "confusion_matrix": "broken"}) == []


def test_a_task_run_table_takes_summary_first_and_best_by_direction(tmp_path):
    lines = [{"step": 1, "acc": 0.2, "err": 0.9}, {"step": 2, "acc": 0.6, "err": 0.4}, {"step": 3, "acc": 0.5, "err": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "summary.json").write_text(json.dumps({"acc": 0.55, "n_test": 40, "per_class": {"x": 1}}))
    table = summarize_task(tmp_path, ["acc", "err"], ["acc", "err"], ["err"])
    assert table["acc"] == 0.55  # summary.json wins
    assert table["err"] == 0.5  # else the last logged value
    assert table["best_acc"] == 0.6 and table["best_err"] == 0.4
    assert table["steps"] == 3 and table["n_test"] == 40 and "per_class" not in table
    m = load_metrics(tmp_path / "metrics.jsonl", extra=("acc", "err"))
    assert m.has("acc") and not m.has("nope") and list(m.series("acc")[1]) == [0.2, 0.6, 0.5]


def test_builtin_tasks_declare_what_the_trainers_write():
    assert tasks.get({}, None) is tasks.PRETRAIN and tasks.get({}, "classify") is tasks.CLASSIFY
    assert tasks.CLASSIFY.direction("test_macro_f1") == "higher" and tasks.CLASSIFY.direction("best_val_loss") == "lower"
    assert set(tasks.CLASSIFY.own_baseline) <= set(tasks.CLASSIFY.metric_names)
    from expkit import claims

    assert set(claims.KNOWN_METRICS) <= set(tasks.PRETRAIN.known_metrics())
    words = tasks.CLASSIFY.launch_words("C.json", "OUT", "py")
    assert words == ["py", "-m", "model.train_classify", "--config", "C.json", "--out-dir", "OUT"]

"""The tool's state and the record's view of it: what a person's editor can and cannot undo.

A record is the markdown people edit and ``experiment_X.Y.Z.state.json`` that only exp writes.
Every command reconciles the two: parts the tool owns that a save brought back to an older
version are rendered again (and one line says so), a person's own edit is kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from PIL import Image
from conftest import EXP, FILLED, fill, run_exp

from expkit import lifecycle, records, results, runner, store
from expkit.record import Record
from expkit.script import LaunchOptions
from expkit.version import Version

V = Version.parse("0.1.0")
TINY = ["hidden_size=32", "num_hidden_layers=1", "num_attention_heads=2", "num_key_value_heads=1", "max_seq_len=32",
        "batch_size=4", "warmup_steps=2", "log_interval=5", "eval_interval=10", "eval_batches=2", "save_interval=10",
        "sample_max_new_tokens=4", "swanlab_mode=disabled"]


def ready(ws, version=V, steps=20):
    rec = lifecycle.create(ws, version, description="state")
    fill(rec.path)
    lifecycle.set_config(ws, version, [*TINY, f"max_steps={steps}"])
    assert lifecycle.check_record(ws, version)["ok"]
    return rec.path


def wait_for_status(ws, wanted: str, version=V, guard_s: float = 300) -> None:
    """Poll the state until the record reaches ``wanted`` (the guard bounds a failure, it is no timing)."""
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        if store.read_meta(ws, version)["status"] == wanted:
            return
        time.sleep(0.2)
    pytest.fail(f"{version} never reached {wanted}: {store.read_meta(ws, version)['status']}\n"
                + (ws.out_dir(version) / "run.log").read_text(errors="replace"))


def note_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("exp: note:")]


# -- the stale editor buffer -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_stale_buffer_saved_after_a_detached_run_finished_keeps_the_run_and_the_persons_edit(ws):
    path = ready(ws)
    started = run_exp("run", "0.1.0", "--detach")
    assert started.returncode == 0, started.stderr
    stale = path.read_bytes()  # the person's editor holds the record as it was while running
    assert b'status: "running"' in stale
    wait_for_status(ws, "analyzed")  # the run finished and analysed itself (the script's _finalize)
    assert path.read_bytes() != stale
    # the person saves the old buffer, with an edit of their own to the focus
    focus = FILLED["focus"].encode("utf-8")
    edited = stale.replace(focus, "看验证损失是否一路下降。".encode("utf-8"), 1)
    assert edited != stale
    path.write_bytes(edited)

    shown = run_exp("show", "0.1.0", "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["status"] == "analyzed" and info["run"]["status"] == "finished"
    assert info["verdicts"] and {v["verdict"] for v in info["verdicts"]} <= {"confirmed", "refuted"}
    assert info["sections"]["focus"] == "看验证损失是否一路下降。"
    notes = note_lines(shown.stderr)
    assert len(notes) == 1 and "restored" in notes[0] and "from exp's state" in notes[0], shown.stderr
    text = path.read_text(encoding="utf-8")
    assert "看验证损失是否一路下降。" in text and 'status: "analyzed"' in text
    assert "✅ 成立" in text or "❌ 不成立" in text  # the verdict table is back in the metrics section
    # the restoration was written: the next command has nothing to say, and the record is clean
    checked = run_exp("check", "0.1.0")
    assert checked.returncode == 0 and not note_lines(checked.stderr), checked.stdout + checked.stderr
    assert "edited by hand" not in checked.stdout


def test_a_run_whose_trainer_finished_is_never_recorded_interrupted(ws):
    """The script died after the trainer wrote status.json "finished" (before its EXIT trap):
    `exp status` finds the dead pid and records a finished run, analysed."""
    ready(ws)
    dead = subprocess.Popen(["true"])
    dead.wait()
    runner.begin(ws, V, LaunchOptions().check(), pid=dead.pid)
    out = ws.out_dir(V)
    rows = [{"step": s, "loss": 8.0 - s / 10, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000.0,
             "tokens_seen": 128 * s, "elapsed_s": s / 10, **({"val_loss": 7.5 - s / 20} if s % 10 == 0 else {})}
            for s in range(5, 21, 5)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps({"status": "finished", "steps": 20, "final_loss": 6.0, "val_loss": 6.5}))
    (out / "status.json").write_text(json.dumps({"status": "finished", "step": 20}))
    r = run_exp("status", "0.1.0", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    meta = store.read_meta(ws, V)
    assert meta["run"]["status"] == "finished" and meta["status"] == "analyzed" and row["status"] == "analyzed"
    assert "died without finalizing" not in json.dumps(meta["run"].get("error", ""))


# -- reconciling: what is restored, what is kept ----------------------------------------------------------
def test_a_stale_generated_section_is_restored_and_a_hand_edit_is_kept_and_reported(ws):
    path = ready(ws)
    old = path.read_text(encoding="utf-8")
    lifecycle.set_config(ws, V, ["learning_rate=0.001"])
    new = path.read_text(encoding="utf-8")
    assert "| `learning_rate` | **0.001**" in new or "| `learning_rate` | 0.001" in new
    # the parameter table as it was before `exp set` (a stale buffer): restored, with its front matter
    path.write_text(old, encoding="utf-8")
    r = run_exp("show", "0.1.0")
    assert r.returncode == 0 and "restored" in r.stderr and "config section" in r.stderr
    assert path.read_text(encoding="utf-8") == new
    # a table nobody ever rendered (a person's edit): kept, and `exp check` names it
    edited = new.replace("| `max_steps` | 20 |", "| `max_steps` | 21 |", 1)
    assert edited != new
    path.write_text(edited, encoding="utf-8")
    r = run_exp("check", "0.1.0")
    assert r.returncode == 1 and "the generated section 'config' was edited by hand" in r.stdout
    assert "| `max_steps` | 21 |" in path.read_text(encoding="utf-8")  # never overwritten
    assert store.read_meta(ws, V)["status"] == "draft"  # not ready while the edit stands


def test_an_ai_section_from_a_stale_buffer_is_restored_and_one_written_in_the_file_is_taken(ws):
    path = ready(ws)
    rec = records.load(ws, V)
    with records.update(ws, V) as r:  # a finished run (the run itself is not what this test is about)
        r.meta["status"] = "analyzed"
        r.meta["analysis"] = {"metrics": {"steps": 20}, "verdicts": [], "verdict_counts": {}}
        r.set_ai("analysis", "- 共 20 步。")
    hint = rec.block("ai", "analysis").text
    assert hint.startswith("> 💡")
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("- 共 20 步。", hint, 1), encoding="utf-8")  # the buffer from before the analysis
    assert records.load(ws, V).block("ai", "analysis").text == "- 共 20 步。"
    assert "- 共 20 步。" in path.read_text(encoding="utf-8")
    # a text exp never wrote there is the section's text now (its numbers are checked as bare ones)
    text = path.read_text(encoding="utf-8").replace("- 共 20 步。", "- 在编辑器里写的：共 20 步。", 1)
    path.write_text(text, encoding="utf-8")
    loaded = records.load(ws, V)
    assert loaded.block("ai", "analysis").text == "- 在编辑器里写的：共 20 步。" and path.read_text(encoding="utf-8") == text
    assert results.untraceable(ws, loaded) == []


def test_the_description_is_taken_from_the_front_matter_and_the_rest_restored_from_the_state(ws):
    path = ready(ws)
    text = path.read_text(encoding="utf-8")
    edited = text.replace('description: "state"', 'description: "状态与视图"', 1).replace('status: "ready"', 'status: "committed"', 1)
    path.write_text(edited, encoding="utf-8")
    r = run_exp("list", "--json")  # a listing reads states only: it neither fixes nor complains
    assert json.loads(r.stdout)[0]["status"] == "ready"
    r = run_exp("show", "0.1.0", "--json")
    info = json.loads(r.stdout)
    assert info["description"] == "状态与视图" and info["status"] == "ready"
    (note,) = note_lines(r.stderr)
    assert "the front matter's status" in note and "kept your description" in note
    assert store.read_meta(ws, V)["description"] == "状态与视图"
    assert 'status: "ready"' in path.read_text(encoding="utf-8")


def test_a_front_matter_that_does_not_parse_is_rendered_again_and_the_text_kept(ws):
    path = ready(ws)
    text = path.read_text(encoding="utf-8")
    broken = text.replace("config:\n", "config: [\n", 1)
    path.write_text(broken, encoding="utf-8")
    r = run_exp("show", "0.1.0")
    assert r.returncode == 0
    (note,) = note_lines(r.stderr)
    assert "does not parse as YAML" in note
    assert path.read_text(encoding="utf-8") == text


def test_a_record_without_a_state_gets_one_and_a_broken_front_matter_names_its_line(ws):
    """A record written before state files existed: its front matter becomes the state."""
    path = ready(ws)
    ws.state_path(V).unlink()
    text = path.read_text(encoding="utf-8")
    legacy = text.replace("config:\n", "digests:\n  info: 0123456789abcdef\nconfig:\n", 1)
    path.write_text(legacy, encoding="utf-8")
    r = run_exp("show", "0.1.0", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ready"
    assert run_exp("set", "0.1.0", "seed=7").returncode == 0
    assert ws.state_path(V).exists() and "digests:" not in path.read_text(encoding="utf-8")
    # without a state, a front matter that does not parse is the one thing to fix: named, text kept
    ws.state_path(V).unlink()
    text = path.read_text(encoding="utf-8")
    bad = text.replace('status: "ready"', 'status: "ready', 1)
    path.write_text(bad, encoding="utf-8")
    r = run_exp("show", "0.1.0")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "experiment/experiment_0.1.0.md:" in r.stderr and "front matter does not parse" in r.stderr
    assert "exp new" not in r.stderr and path.read_text(encoding="utf-8") == bad


# -- line endings ------------------------------------------------------------------------------------
def test_a_crlf_record_keeps_its_line_endings_and_the_human_text_byte_for_byte(ws):
    path = ready(ws)
    crlf = path.read_bytes().replace(b"\n", b"\r\n")
    path.write_bytes(crlf)
    human = {b.name: b.content for b in Record.parse(crlf.decode("utf-8")).blocks("human")}
    r = run_exp("set", "0.1.0", "learning_rate=0.001")
    assert r.returncode == 0, r.stderr
    after = path.read_bytes()
    assert b"\n" not in after.replace(b"\r\n", b"")  # every line ending is still CRLF
    assert {b.name: b.content for b in Record.parse(after.decode("utf-8")).blocks("human")} == human
    changed = [(a, b) for a, b in zip(crlf.split(b"\r\n"), after.split(b"\r\n")) if a != b]
    assert changed and all(b"learning_rate" in a or b"learning_rate" in b for a, b in changed)
    r = run_exp("check", "0.1.0")
    assert r.returncode == 0 and "edited by hand" not in r.stdout and not note_lines(r.stderr)


# -- what a command may not do -------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["approved", "committed"])
def test_regenerate_refuses_an_approved_or_committed_record(ws, status):
    path = ready(ws)
    with records.update(ws, V) as r:
        r.meta["status"] = status
    before = path.read_bytes(), ws.state_path(V).read_bytes()
    r = run_exp("set", "0.1.0", "--regenerate")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert f"it is {status}" in r.stderr and "exp new NEXT --from 0.1.0" in r.stderr
    assert (path.read_bytes(), ws.state_path(V).read_bytes()) == before


def test_a_validation_record_that_changes_nothing_from_its_parent_is_not_ready(ws):
    lifecycle.create(ws, Version.parse("1.4.0"), description="baseline")
    child = lifecycle.create(ws, Version.parse("1.4.1"), parent=Version.parse("1.4.0"), description="knowledge")
    fill(child.path)
    r = run_exp("check", "1.4.1")
    assert r.returncode == 1 and "nothing is under test yet" in r.stdout and "exp set 1.4.1 KEY=VALUE" in r.stdout
    info = json.loads(run_exp("show", "1.4.1", "--json").stdout)
    assert info["next"].startswith("set the variable under test")
    assert run_exp("set", "1.4.1", "learning_rate=0.001").returncode == 0
    r = run_exp("check", "1.4.1")
    assert r.returncode == 0, r.stdout
    assert json.loads(run_exp("show", "1.4.1", "--json").stdout)["next"] == "`exp run 1.4.1`"


@pytest.mark.slow
def test_two_analyses_of_one_record_at_once_leave_valid_files(ws):
    ready(ws)
    assert run_exp("run", "0.1.0").returncode == 0
    out = ws.out_dir(V)
    env = {**os.environ, "EXP_ROOT": str(ws.root)}
    procs = [subprocess.Popen([*EXP, "analyze", "0.1.0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], [p.stderr.read() for p in procs]
    for png in (out / "plots").glob("*.png"):
        with Image.open(png) as img:
            img.verify()
    json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    json.loads((out / "metrics_summary.json").read_text(encoding="utf-8"))
    assert records.load(ws, V).status == "analyzed"
    assert not [p for p in out.rglob("*tmp*")] and not [p for p in ws.experiment_dir.glob(".*tmp*")]


def test_the_one_variable_rule_speaks_the_same_in_check_and_show_and_ignores_placement_keys(ws):
    lifecycle.create(ws, Version.parse("1.4.0"), description="baseline")
    child = lifecycle.create(ws, Version.parse("1.4.1"), parent=Version.parse("1.4.0"), description="memory")
    fill(child.path)
    assert run_exp("set", "1.4.1", "device=cpu", "swanlab_mode=disabled").returncode == 0
    r = run_exp("check", "1.4.1")  # placement keys are no variable: still nothing under test
    assert r.returncode == 1 and "nothing is under test yet" in r.stdout
    assert run_exp("set", "1.4.1", "model_type=model").returncode == 0
    r = run_exp("check", "1.4.1")
    assert r.returncode == 0 and "model_type changes from model_original to model" in r.stdout
    assert "config keys differ" not in r.stdout  # device and swanlab_mode are not counted
    info = json.loads(run_exp("show", "1.4.1", "--json").stdout)
    assert any("model_type changes from model_original to model" in w for w in info["warnings"])


def test_a_reader_that_stops_early_ends_the_command_quietly(ws):
    ready(ws)
    proc = subprocess.Popen([*EXP, "show", "0.1.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "EXP_ROOT": str(ws.root)})
    proc.stdout.close()  # `exp show 0.1.0 | head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""

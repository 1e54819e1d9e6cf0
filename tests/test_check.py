"""`exp check`: every problem with its line and fix; warnings don't change the exit code."""

from __future__ import annotations

import json

from conftest import run_exp, FILLED, fill

from expkit.config import TrainConfig
from expkit.lifecycle import check_record
from expkit.record import Record
from expkit.version import Version
from expkit import lifecycle, records

V = Version.parse("1.4.1")


def problems_of(ws, version=V):
    return check_record(ws, version)


def test_fresh_record_reports_every_hint_with_its_line(ws):
    rec = lifecycle.create(ws, V, description="d")
    result = problems_of(ws)
    assert not result["ok"] and result["status"] == "draft"
    lines = rec.path.read_text(encoding="utf-8").split("\n")
    errors = [p for p in result["problems"] if p["level"] == "error"]
    assert len(errors) == 4
    for p in errors:
        assert "hint" in p["message"] and p["fix"]
        assert lines[p["line"] - 1].startswith("> 💡")  # the line number points at the hint


def test_filled_record_is_clean_and_becomes_ready(ws):
    rec = lifecycle.create(ws, V, description="d")
    fill(rec.path)
    result = problems_of(ws)
    assert result["ok"], result["problems"]
    assert result["status"] == "ready"
    assert Record.read(rec.path).status == "ready"
    # emptying a section sends it back to draft
    fill(rec.path, {"focus": "   \n"})
    result = problems_of(ws)
    assert not result["ok"] and result["status"] == "draft"
    assert any("focus" in p["message"] and "empty" in p["message"] for p in result["problems"])


def test_claim_problems(ws):
    rec = lifecycle.create(ws, V, description="d")
    fill(rec.path, {**FILLED, "expected": "- val_loss < 2\n- val_loss <= baseline - 0.1\n- loss <> 3\n- val_los < 1\n"})
    result = problems_of(ws)
    msgs = [(p["level"], p["message"]) for p in result["problems"]]
    assert any(lvl == "error" and "does not parse" in m for lvl, m in msgs)
    assert any(lvl == "error" and "baseline" in m and "has none" in m for lvl, m in msgs)
    assert any(lvl == "warning" and "val_los" in m for lvl, m in msgs)


def test_a_config_typed_into_the_front_matter_is_undone_from_the_state_and_said_so(ws):
    """The config lives in the tool's state: a hand edit in the front matter cannot smuggle an
    invalid value in; the next command renders the front matter again and says so."""
    rec = lifecycle.create(ws, V, description="d")
    fill(rec.path)
    text = rec.path.read_text(encoding="utf-8").replace("learning_rate: 0.003", "learning_rate: -5", 1)
    rec.path.write_text(text, encoding="utf-8")
    r = run_exp("check", str(V))
    assert r.returncode == 0, r.stderr
    assert "restored the front matter's config from exp's state" in r.stderr and len(r.stderr.splitlines()) == 1
    assert "learning_rate: 0.003" in rec.path.read_text(encoding="utf-8")
    assert records.load(ws, V).meta["config"]["learning_rate"] == 0.003


def test_hand_edit_of_generated_section_is_an_error_naming_exp_set(ws):
    rec = lifecycle.create(ws, V, description="d")
    fill(rec.path)
    text = rec.path.read_text(encoding="utf-8").replace(f"| `max_steps` | {TrainConfig().max_steps} |", "| `max_steps` | 99 |", 1)
    rec.path.write_text(text, encoding="utf-8")
    result = problems_of(ws)
    p = next(p for p in result["problems"] if "edited by hand" in p["message"])
    assert "exp set" in p["fix"]
    assert text.split("\n")[p["line"] - 1] == "<!-- exp:generated config -->"


def test_one_variable_rule_warns_without_failing(ws):
    lifecycle.create(ws, Version.parse("1.4.0"), description="parent")
    child = lifecycle.create(ws, V, parent=Version.parse("1.4.0"), description="child")
    fill(child.path)
    lifecycle.set_config(ws, V, ["learning_rate=1e-3", "warmup_steps=10", "model_type=model_moe"])
    result = problems_of(ws)
    warnings = [p["message"] for p in result["problems"] if p["level"] == "warning"]
    assert result["ok"]
    assert any("model_type changes" in w for w in warnings)
    assert any("3 config keys differ" in w for w in warnings)
    # an exploratory version may change several things at once
    other = lifecycle.create(ws, Version.parse("1.5.0"), parent=Version.parse("1.4.0"), description="x")
    fill(other.path)
    lifecycle.set_config(ws, Version.parse("1.5.0"), ["learning_rate=1e-3", "warmup_steps=10"])
    assert not [p for p in problems_of(ws, Version.parse("1.5.0"))["problems"] if p["level"] == "warning"]


def test_preregistered_sections_changed_after_run_start_are_reported(ws):
    rec = lifecycle.create(ws, V, description="d")
    fill(rec.path)
    from expkit.record import sha256

    with records.update(ws, V) as r:  # what `exp run` stores at run start
        r.meta["prereg"] = {"at": "2026-11-22T10:00:00+00:00", "sections": {n: sha256(r.human(n)) for n in ("goal", "hypothesis", "expected")}}
    assert problems_of(ws)["ok"]
    fill(rec.path, {"hypothesis": "a different hypothesis, written after seeing the loss"})
    result = problems_of(ws)
    assert any("changed after the run started" in p["message"] for p in result["problems"])


def test_check_json_via_cli(ws, cli):
    lifecycle.create(ws, V, description="d")
    code, out, _ = cli("check", "1.4.1", "--json")
    assert code == 1
    data = json.loads(out)
    assert set(data) >= {"version", "ok", "status", "problems"}
    assert {"level", "line", "message", "fix"} <= set(data["problems"][0])

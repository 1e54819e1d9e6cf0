"""`exp sweep`: an X.Y.0 record's members, validated whole before any is written; members take
their parent's human sections by reference (check, run gate, pre-registration, show, list)."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import FILLED, fill, run_exp
from expkit import groups, lifecycle, records, runner, store
from expkit.comparison import config_changes
from expkit.errors import RecordError
from expkit.script import LaunchOptions
from expkit.version import Version

P = Version.parse("1.5.0")


def parent(ws, sections=FILLED, description="lr study"):
    rec = lifecycle.create(ws, P, description=description)
    if sections:
        fill(rec.path, sections)
    return rec


def snapshot(ws) -> dict[str, bytes]:
    """Every file of the workspace but the caches, with its bytes."""
    return {str(p.relative_to(ws.root)): p.read_bytes() for p in sorted(ws.root.rglob("*"))
            if p.is_file() and ".cache" not in p.parts and not p.name.endswith(".lock")}


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("exp: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def member_meta(ws, v: str) -> dict:
    return store.read_meta(ws, v)


def test_members_get_the_next_patch_versions_one_change_each_and_the_group_front_matter(ws):
    parent(ws)
    r = run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3,5e-3")
    assert r.returncode == 0, r.stderr
    assert "created 3 member(s) of group 1.5.0" in r.stdout
    base = member_meta(ws, "1.5.0")["config"]
    for v, lr, typed in (("1.5.1", 1e-3, "1e-3"), ("1.5.2", 2e-3, "2e-3"), ("1.5.3", 5e-3, "5e-3")):
        meta = member_meta(ws, v)
        assert meta["parent"] == "1.5.0" and meta["group"] == "1.5.0"
        assert meta["changes"] == {"learning_rate": lr}
        assert config_changes(base, meta["config"]) == {"learning_rate": [3e-3, lr]}
        assert meta["description"] == f"lr study — learning_rate={typed}"
        assert meta["status"] == "draft"
        text = ws.record_path(v).read_text(encoding="utf-8")
        assert 'group: "1.5.0"' in text and f"changes:\n  learning_rate: {lr}\n" in text
        # the generated group section quotes the parent's question; the member's own sections are hints
        group_block = store.load(ws, Version.parse(v)).block("generated", "member").text
        assert "> " + FILLED["goal"] in group_block and "> - val_loss < 6.5" in group_block
        assert not groups.is_filled(store.load(ws, Version.parse(v)).human("goal"))
    assert groups.member_versions(ws, P) == [Version.parse(f"1.5.{k}") for k in (1, 2, 3)]
    assert not ws.record_path("1.5.4").exists()


def test_next_free_patch_versions_follow_the_records_already_there(ws):
    parent(ws)
    lifecycle.create(ws, Version.parse("1.5.1"), parent=P, description="by hand")  # not a member
    lifecycle.create(ws, Version.parse("1.6.7"), description="another direction")
    r = run_exp("sweep", "1.5.0", "warmup_steps=10,20", "--json")
    assert r.returncode == 0, r.stderr
    assert [m["version"] for m in json.loads(r.stdout)["members"]] == ["1.5.2", "1.5.3"]
    r = run_exp("sweep", "1.5.0", "warmup_steps=30", "--json")
    assert [m["version"] for m in json.loads(r.stdout)["members"]] == ["1.5.4"]
    assert groups.member_versions(ws, P) == [Version.parse(f"1.5.{k}") for k in (2, 3, 4)]  # 1.5.1 is not one


def test_two_keys_make_one_member_per_key_value_and_json_lists_them(ws):
    parent(ws)
    r = run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3", "weight_decay=0", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["parent"] == "1.5.0" and data["grid"] is False and data["dry_run"] is False
    assert [(m["version"], m["changes"]) for m in data["members"]] == [
        ("1.5.1", {"learning_rate": 1e-3}), ("1.5.2", {"learning_rate": 2e-3}), ("1.5.3", {"weight_decay": 0.0})]
    assert {"version", "changes", "description", "replicates", "path"} <= set(data["members"][0])
    assert data["members"][2]["path"] == "experiment/experiment_1.5.3.md"
    for m in data["members"]:  # one variable each: `exp check` has no advice about it
        result = lifecycle.check_record(ws, Version.parse(m["version"]))
        assert result["ok"], result["problems"]
        assert not [p for p in result["problems"] if "config keys differ" in p["message"]]


def test_grid_makes_the_product_and_each_member_carries_the_one_variable_warning(ws):
    parent(ws)
    r = run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3", "warmup_steps=10,20", "--grid", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [m["changes"] for m in data["members"]] == [
        {"learning_rate": 1e-3, "warmup_steps": 10}, {"learning_rate": 1e-3, "warmup_steps": 20},
        {"learning_rate": 2e-3, "warmup_steps": 10}, {"learning_rate": 2e-3, "warmup_steps": 20}]
    assert "warning" in data
    checked = run_exp("check", "1.5.4", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr  # a warning, not an error
    warnings = [p["message"] for p in json.loads(checked.stdout)["problems"] if p["level"] == "warning"]
    assert any("2 config keys differ from parent 1.5.0" in w for w in warnings), warnings


def test_seeds_set_replicates_on_every_member_without_counting_as_a_change(ws):
    parent(ws)
    r = run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3", "--seeds", "3")
    assert r.returncode == 0, r.stderr
    for v in ("1.5.1", "1.5.2"):
        meta = member_meta(ws, v)
        assert meta["config"]["replicates"] == 3
        assert list(meta["changes"]) == ["learning_rate"]
        problems = lifecycle.check_record(ws, Version.parse(v))["problems"]
        assert not [p for p in problems if "config keys differ" in p["message"]]


def test_dry_run_shows_the_members_and_writes_nothing(ws):
    parent(ws)
    before = snapshot(ws)
    r = run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would create 2 member(s)" in r.stdout and "1.5.1" in r.stdout and "1.5.2" in r.stdout
    assert "nothing was written" in r.stdout
    r = run_exp("sweep", "1.5.0", "learning_rate=1e-3", "--dry-run", "--json")
    assert json.loads(r.stdout)["dry_run"] is True and json.loads(r.stdout)["members"][0]["version"] == "1.5.1"
    assert snapshot(ws) == before


@pytest.mark.parametrize("args, expected", [
    (["learnin_rate=1e-3,2e-3"], "unknown config key 'learnin_rate' — did you mean learning_rate"),
    (["learning_rate=1e-3,5"], "learning_rate=5: learning_rate: Input should be less than or equal to 1"),
    (["warmup_steps=10", "batch_size=8,eight"], "batch_size=eight: batch_size: Input should be a valid integer"),
])
def test_one_bad_value_and_nothing_is_created(ws, args, expected):
    parent(ws)
    before = snapshot(ws)
    line = one_error_line(run_exp("sweep", "1.5.0", *args))
    assert expected in line and "nothing was created" in line, line
    assert snapshot(ws) == before


def test_a_value_equal_to_the_parents_or_given_twice_is_refused(ws):
    parent(ws)
    before = snapshot(ws)
    line = one_error_line(run_exp("sweep", "1.5.0", "learning_rate=1e-3,3e-3,0.001"))
    assert "learning_rate=3e-3: learning_rate is already 1.5.0's value" in line
    assert "learning_rate=0.001: the same config as learning_rate=1e-3" in line
    assert snapshot(ws) == before


def test_parent_must_be_an_existing_filled_x_y_0_record(ws):
    parent(ws)
    lifecycle.create(ws, Version.parse("1.0.0"), description="production")
    lifecycle.create(ws, Version.parse("1.6.0"), description="unfilled")
    before = snapshot(ws)
    assert "a group is led by an exploratory X.Y.0 record" in one_error_line(run_exp("sweep", "1.0.0", "learning_rate=1e-3"))
    assert "a group is led by an exploratory X.Y.0 record" in one_error_line(run_exp("sweep", "1.5.2", "learning_rate=1e-3"))
    assert "there is no experiment 1.7.0" in one_error_line(run_exp("sweep", "1.7.0", "learning_rate=1e-3"))
    line = one_error_line(run_exp("sweep", "1.6.0", "learning_rate=1e-3"))
    assert "goal, hypothesis, expected, focus are not filled" in line and "experiment/experiment_1.6.0.md" in line
    assert "give at least one KEY=V1,V2" in one_error_line(run_exp("sweep", "1.5.0"))
    assert snapshot(ws) == before


def test_check_of_a_member_is_satisfied_by_its_filled_parent_and_names_it_when_unfilled(ws):
    rec = parent(ws)
    assert run_exp("sweep", "1.5.0", "learning_rate=1e-3").returncode == 0
    ok = run_exp("check", "1.5.1")
    assert ok.returncode == 0 and "status ready" in ok.stdout, ok.stdout + ok.stderr
    lifecycle.ready_or_raise(ws, records.load(ws, Version.parse("1.5.1")))  # `exp run`'s gate lets it pass
    # the parent's goal emptied again (a person cleared it): the member is not ready, and says where to write
    fill(rec.path, {"goal": "\n"})
    bad = run_exp("check", "1.5.1")
    assert bad.returncode == 1 and "status draft" in bad.stdout
    errors = [x for x in bad.stdout.splitlines() if ": error: " in x]
    assert len(errors) == 1 and "its group's parent 1.5.0" in errors[0] and "experiment/experiment_1.5.0.md" in errors[0], bad.stdout
    with pytest.raises(RecordError, match="its group's parent 1.5.0"):
        lifecycle.ready_or_raise(ws, records.load(ws, Version.parse("1.5.1")))


def test_member_specific_text_is_kept_and_holds_for_the_member(ws):
    rec = parent(ws)
    assert run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3").returncode == 0
    member = ws.record_path("1.5.2")
    own = "1e-3 的学习率下，前 50 步的损失尖峰应当消失。"
    fill(member, {"hypothesis": own})
    fill(rec.path, {"goal": "新的组目的：学习率扫描。"})  # the group's question changes before the runs
    assert run_exp("check", "1.5.0").returncode == 0  # refreshes the members' quotations
    assert run_exp("check", "1.5.2").returncode == 0
    record = store.load(ws, Version.parse("1.5.2"))
    assert record.human("hypothesis") == own  # the person's words, byte for byte
    effective = groups.effective_human(ws, record)
    assert effective["hypothesis"] == {"text": own, "from": "1.5.2"}
    assert effective["goal"] == {"text": "新的组目的：学习率扫描。", "from": "1.5.0"}
    block = record.block("generated", "member").text
    assert "> 新的组目的：学习率扫描。" in block and FILLED["goal"] not in block  # re-rendered from the parent
    assert "研究假设**：本成员自己填写" in block
    shown = json.loads(run_exp("show", "1.5.2", "--json").stdout)
    assert shown["sections"]["hypothesis"] == own and shown["sections"]["goal"] == "新的组目的：学习率扫描。"
    assert shown["inherited"] == {"goal": "1.5.0", "expected": "1.5.0", "focus": "1.5.0"}


def test_preregistration_of_a_member_detects_a_later_edit_of_the_parents_hypothesis(ws):
    rec = parent(ws)
    assert run_exp("sweep", "1.5.0", "learning_rate=1e-3").returncode == 0
    v = Version.parse("1.5.1")
    assert lifecycle.check_record(ws, v)["ok"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    runner.begin(ws, v, LaunchOptions().check(), pid=dead.pid)  # what `exp run` does at run start
    prereg = member_meta(ws, "1.5.1")["prereg"]["sections"]
    assert prereg == groups.prereg_sections(ws, store.load(ws, v))
    frozen = store.load(ws, v).block("generated", "member").text
    assert not [p for p in lifecycle.check(ws, records.load(ws, v)) if "changed after the run started" in p.message]
    fill(rec.path, {"hypothesis": "a different hypothesis, written after seeing the loss"})
    problems = [p for p in lifecycle.check(ws, records.load(ws, v)) if "changed after the run started" in p.message]
    assert len(problems) == 1 and "hypothesis" in problems[0].message and "1.5.0" in problems[0].message
    assert "experiment/experiment_1.5.0.md" in problems[0].fix
    assert groups.prereg_changed(ws, store.load(ws, v)) == ["hypothesis"]
    shown = json.loads(run_exp("show", "1.5.1", "--json").stdout)
    assert shown["prereg_changed"] == ["hypothesis"]
    lifecycle.check_record(ws, P)  # the member ran: its quotation stays what it was pre-registered with
    assert store.load(ws, v).block("generated", "member").text == frozen


def test_show_and_list_give_group_changes_and_members(ws):
    parent(ws)
    lifecycle.create(ws, Version.parse("1.6.0"), description="no group")
    assert run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3").returncode == 0
    listed = run_exp("list", "--json")
    rows = {r["version"]: r for r in json.loads(listed.stdout)}
    assert rows["1.5.0"]["members"] == ["1.5.1", "1.5.2"] and "group" not in rows["1.5.0"]
    assert rows["1.5.1"]["group"] == "1.5.0" and rows["1.5.1"]["changes"] == {"learning_rate": 1e-3}
    assert "group" not in rows["1.6.0"] and "members" not in rows["1.6.0"]
    text = run_exp("list").stdout
    assert "GROUP" in text and "2 members" in text and "1.5.0: learning_rate=0.001" in text
    shown = json.loads(run_exp("show", "1.5.0", "--json").stdout)
    assert [(m["version"], m["changes"]) for m in shown["members"]] == [
        ("1.5.1", {"learning_rate": 1e-3}), ("1.5.2", {"learning_rate": 2e-3})]
    assert "group" not in shown
    member = json.loads(run_exp("show", "1.5.1", "--json").stdout)
    assert member["group"] == "1.5.0" and member["changes"] == {"learning_rate": 1e-3}
    assert member["sections"]["goal"] == FILLED["goal"]
    assert [c["text"] for c in member["claims"]] == ["val_loss < 6.5", "tokens_per_s >= 100"]
    text = run_exp("show", "1.5.1").stdout
    assert "group     1.5.0    changes learning_rate=0.001" in text and "[goal] (from 1.5.0, the group's parent)" in text
    assert "members   2" in run_exp("show", "1.5.0").stdout


def test_exp_set_on_a_member_keeps_its_changes_true(ws):
    parent(ws)
    assert run_exp("sweep", "1.5.0", "learning_rate=1e-3").returncode == 0
    r = run_exp("set", "1.5.1", "learning_rate=4e-3")
    assert r.returncode == 0, r.stderr
    meta = member_meta(ws, "1.5.1")
    assert meta["changes"] == {"learning_rate": 4e-3}
    assert "`learning_rate` = 0.004" in store.load(ws, Version.parse("1.5.1")).block("generated", "member").text


def test_keys_that_are_no_variable_and_bad_seeds_are_refused_in_one_line(ws):
    parent(ws)
    before = snapshot(ws)
    assert "device says where a run goes" in one_error_line(run_exp("sweep", "1.5.0", "device=cpu,cuda"))
    assert "sweep another key and give --seeds N" in one_error_line(run_exp("sweep", "1.5.0", "replicates=2,3"))
    line = one_error_line(run_exp("sweep", "1.5.0", "learning_rate=1e-3,2e-3", "--seeds", "0"))
    assert line.count("--seeds 0: replicates") == 1 and "nothing was created" in line
    assert "expected KEY=V1,V2,..." in one_error_line(run_exp("sweep", "1.5.0", "learning_rate"))
    assert snapshot(ws) == before

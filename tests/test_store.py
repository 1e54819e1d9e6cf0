"""Records in a workspace: creation from a parent, config changes, locking, atomic writes."""

from __future__ import annotations

import subprocess

import pytest
from conftest import EXP, fill

from expkit.record import parse_front_matter, split_front_matter
from expkit import reporting, store
from expkit.config import TrainConfig
from expkit.errors import HandEditError, RecordError
from expkit.record import Record
from expkit.version import Version
from expkit import catalog, files, lifecycle, records

P, V = Version.parse("1.4.0"), Version.parse("1.4.1")


def test_new_from_parent_copies_config_and_inherits_baseline(ws):
    lifecycle.create(ws, Version.parse("1.0.0"), description="baseline")
    lifecycle.create(ws, P, baseline=Version.parse("1.0.0"), description="parent", lang="en")
    lifecycle.set_config(ws, P, ["learning_rate=1e-3"])
    child = lifecycle.create(ws, V, parent=P, description="child")
    assert child.meta["config"]["learning_rate"] == 1e-3
    assert child.meta["parent"] == "1.4.0" and child.meta["baseline"] == "1.0.0"
    assert child.meta["lang"] == "en"  # follows the parent's language
    assert "Experiment 1.4.1" in child.path.read_text(encoding="utf-8")


def test_new_refuses_existing_missing_parent_and_self_parent(ws):
    rec = lifecycle.create(ws, V, description="first")
    before = rec.path.read_bytes()
    with pytest.raises(RecordError, match="already exists"):
        lifecycle.create(ws, V, description="second")
    with pytest.raises(RecordError, match="no such experiment"):
        lifecycle.create(ws, Version.parse("1.4.2"), parent=Version.parse("9.9.9"))
    with pytest.raises(RecordError, match="own parent"):
        lifecycle.create(ws, Version.parse("1.4.3"), parent=Version.parse("1.4.3"))
    assert rec.path.read_bytes() == before
    assert not ws.record_path("1.4.2").exists()


def test_set_regenerates_the_table_and_keeps_human_text(ws):
    rec = lifecycle.create(ws, V, description="d")
    fill(rec.path, {"goal": "my goal {{ x }} $(y)"})
    lifecycle.set_config(ws, V, ["learning_rate=8e-5"])
    after = Record.read(rec.path)
    assert after.meta["config"]["learning_rate"] == 8e-5
    assert "| `learning_rate` | 8e-5 |" in after.path.read_text(encoding="utf-8")
    assert after.human("goal") == "my goal {{ x }} $(y)"
    assert after.edited_generated() == []


def test_set_refuses_over_a_hand_edit_and_loses_nothing(ws):
    rec = lifecycle.create(ws, V, description="d")
    text = rec.path.read_text(encoding="utf-8").replace(f"| `max_steps` | {TrainConfig().max_steps} |", "| `max_steps` | 600 (I mean 900!) |")
    rec.path.write_text(text, encoding="utf-8")
    with pytest.raises(HandEditError, match="exp set"):
        lifecycle.set_config(ws, V, ["learning_rate=8e-5"])
    assert rec.path.read_text(encoding="utf-8") == text  # untouched
    result = lifecycle.set_config(ws, V, [], regenerate=True)
    saved = [p for p in result["discarded"]]
    assert len(saved) == 1 and "I mean 900!" in open(saved[0], encoding="utf-8").read()
    assert Record.read(rec.path).edited_generated() == []


def test_config_is_frozen_once_a_run_started(ws):
    lifecycle.create(ws, V, description="d")
    with records.update(ws, V) as r:
        r.meta["status"] = "finished"
    with pytest.raises(RecordError, match="exp new NEXT --from 1.4.1|status is finished"):
        lifecycle.set_config(ws, V, ["learning_rate=1e-4"])


def test_update_writes_nothing_when_the_change_fails(ws):
    rec = lifecycle.create(ws, V, description="d")
    before = rec.path.read_bytes()
    with pytest.raises(RuntimeError):
        with records.update(ws, V) as r:
            r.meta["description"] = "changed"
            raise RuntimeError("boom")
    assert rec.path.read_bytes() == before
    assert [p.name for p in rec.path.parent.iterdir() if ".tmp-" in p.name] == []


def test_concurrent_sets_serialise_under_the_lock(ws):
    rec = lifecycle.create(ws, V, description="d")
    keys = ["log_interval=7", "eval_interval=77", "save_interval=777", "seed=7", "keep_top_k=7", "eval_batches=7"]
    procs = [
        subprocess.Popen([*EXP, "set", "1.4.1", kv], cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for kv in keys
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    final = Record.read(rec.path)
    cfg = final.meta["config"]
    assert (cfg["log_interval"], cfg["eval_interval"], cfg["save_interval"], cfg["seed"], cfg["keep_top_k"], cfg["eval_batches"]) == (
        7, 77, 777, 7, 7, 7,
    )
    assert final.edited_generated() == []  # the table matches the final config


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "f.md"
    files.atomic_write(target, "one")
    files.atomic_write(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.md"]


def test_listing_tree_and_diff(ws):
    lifecycle.create(ws, Version.parse("1.0.0"), description="root")
    lifecycle.create(ws, P, parent=Version.parse("1.0.0"), description="a")
    lifecycle.create(ws, V, parent=P, description="b")
    lifecycle.set_config(ws, V, ["learning_rate=1e-3"])
    (ws.experiment_dir / "experiment_2.0.0.md").write_text("not a record", encoding="utf-8")
    rows = catalog.list_records(ws)
    assert [r["version"] for r in rows] == ["1.0.0", "1.4.0", "1.4.1", "2.0.0"]
    assert rows[-1]["status"] == "broken"
    assert [r["version"] for r in catalog.list_records(ws, "draft")] == ["1.0.0", "1.4.0", "1.4.1"]
    tree = reporting.tree(ws)
    assert tree[0]["version"] == "1.0.0" and tree[0]["children"][0]["children"][0]["version"] == "1.4.1"
    assert reporting.diff_records(ws, P, V)["config"] == {"learning_rate": [3e-3, 1e-3]}


def test_a_tricky_description_is_the_same_in_the_listing_the_state_and_the_front_matter(ws):
    desc = 'tricky: "quotes" # not a comment\n second line \x7f'
    rec = lifecycle.create(ws, V, description=desc)
    assert catalog.list_records(ws)[0]["description"] == desc
    assert store.read_meta(ws, V)["description"] == desc
    front, _ = split_front_matter(rec.path.read_text(encoding="utf-8"))
    assert parse_front_matter(front)["description"] == desc


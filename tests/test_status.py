"""The one state machine: every move the table allows works, every other is refused with the next step."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from conftest import fill, run_exp

from expkit import lifecycle, records, store
from expkit.status import NEXT_STEP, STATUSES, TRANSITIONS, TransitionError, next_step, transition
from expkit.version import Version


@pytest.mark.parametrize("old, new", list(itertools.product(STATUSES, STATUSES)))
def test_every_move_is_allowed_by_the_table_or_refused_naming_the_next_step(old, new):
    record = SimpleNamespace(meta={"version": "1.2.3", "status": old})
    if old == new or new in TRANSITIONS[old]:
        transition(record, new)
        assert record.meta["status"] == new
        return
    with pytest.raises(TransitionError) as err:
        transition(record, new)
    assert record.meta["status"] == old  # a refused move changes nothing
    message = str(err.value)
    assert f"cannot go from {old} to {new}" in message and f"next: {next_step(old, '1.2.3')}" in message
    assert "\n" not in message


def test_the_table_is_closed_and_every_status_has_a_next_step():
    assert set(TRANSITIONS) == set(STATUSES) == set(NEXT_STEP)
    assert all(set(targets) <= set(STATUSES) for targets in TRANSITIONS.values())
    assert TRANSITIONS["committed"] == ()  # final
    # stop, look, resume: an interrupted run may be analysed (partially) and then resumed
    assert "analyzed" in TRANSITIONS["interrupted"] and "running" in TRANSITIONS["analyzed"]


def test_a_command_in_the_wrong_state_says_what_comes_next(ws):
    v = Version.parse("0.1.0")
    rec = lifecycle.create(ws, v, description="d")
    fill(rec.path)
    with records.update(ws, v) as r:
        r.meta["status"] = "committed"
    before = rec.path.read_bytes(), ws.state_path(v).read_bytes()
    for args, words in ((["set", "0.1.0", "seed=2"], "status is committed"),
                        (["analyze", "0.1.0"], "status is committed"),
                        (["run", "0.1.0"], "has already run (status committed)")):
        r = run_exp(*args)
        assert r.returncode == 1 and words in r.stderr and "exp new NEXT --from 0.1.0" in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1
    assert (rec.path.read_bytes(), ws.state_path(v).read_bytes()) == before
    assert store.read_meta(ws, v)["status"] == "committed"

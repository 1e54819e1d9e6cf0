"""``exp sweep``: the members of an experiment group, planned whole, then written.

A sweep takes an exploratory record ``X.Y.0`` whose human sections state the group's question
and makes one member ``X.Y.k`` per value of each swept key (or, with ``grid``, per combination),
at the next free patch versions. Each member is ``exp new X.Y.k --from X.Y.0`` with one
change (``lifecycle.create``), its front matter saying ``group`` and ``changes``
(``groups``). Every member's config is validated before the first is written, with the parser
``exp set`` uses: one bad value and nothing is created. Layer 4.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from . import config as cfg_mod
from . import groups, lifecycle, store, tasks
from .catalog import PLACEMENT_KEYS
from .errors import ConfigError, RecordError, UsageError
from .version import Version
from .workspace import Workspace

#: How many members one sweep may make (a grid grows fast; a typo like 1e-5,...,x100 should not
#: write a hundred records).
MAX_MEMBERS = 100


@dataclass
class Member:
    version: Version
    changes: dict[str, Any]  # the swept keys' values as the config holds them
    typed: list[str]  # the KEY=VALUE strings as given (for the description)
    config: dict[str, Any] = field(repr=False)
    description: str = ""

    def to_dict(self, ws: Workspace) -> dict[str, Any]:
        return {"version": str(self.version), "changes": self.changes, "description": self.description,
                "replicates": self.config.get("replicates", 1), "path": ws.rel(ws.record_path(self.version))}


def _refused(parent: Version, why: str) -> str:
    return f"cannot sweep {parent}: {why} (nothing was created)"


def parse_axes(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2,...`` strings as [(key, [value strings])], split the way ``exp set`` splits
    ``KEY=VALUE`` (values stay strings until the config types them)."""
    if not specs:
        raise UsageError("give at least one KEY=V1,V2,... to sweep (e.g. learning_rate=1e-5,2e-5,5e-5)")
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        if "=" not in spec:
            raise UsageError(f"expected KEY=V1,V2,..., got {spec!r} (for example learning_rate=1e-5,2e-5)")
        key, raw = cfg_mod.parse_assignment(spec)
        values = [v.strip() for v in raw.split(",")]
        if not raw or any(not v for v in values):
            raise UsageError(f"{spec!r}: give the values as KEY=V1,V2,... with no empty value (for example {key}=1e-5,2e-5)")
        if key in (k for k, _ in axes):
            raise UsageError(f"{key} is swept twice; give all its values once: {key}=V1,V2,...")
        if key == "replicates":
            raise UsageError("replicates is not a variable under test; sweep another key and give --seeds N")
        if key in PLACEMENT_KEYS:
            raise UsageError(f"{key} says where a run goes or what it logs, not what it learns: it is no variable under "
                             f"test (`exp check` would find the members' configs the same); set it with `exp set`")
        axes.append((key, values))
    return axes


def plan(ws: Workspace, parent: Version, specs: list[str], grid: bool = False, seeds: int | None = None,
         desc: str | None = None) -> list[Member]:
    """Every member the sweep would make, each config validated; raises (nothing written) on the
    first problem of the parent, or on all the bad values together."""
    axes = parse_axes(specs)
    if not groups.can_lead(parent):
        raise RecordError(_refused(parent, "a group is led by an exploratory X.Y.0 record (Y ≥ 1) whose human sections state "
                                   f"the question, e.g. {parent.major}.{max(parent.minor, 1)}.0"))
    if not ws.record_path(parent).exists():
        raise RecordError(_refused(parent, f"there is no experiment {parent} ({ws.rel(ws.record_path(parent))}); create it "
                                   f"with `exp new {parent}` and fill its human sections first"))
    record = store.load(ws, parent)
    unfilled = [n for n, e in groups.effective_human(ws, record).items() if not groups.is_filled(e["text"])]
    if unfilled:
        raise RecordError(_refused(
            parent, f"its human sections state the group's question, but its {', '.join(unfilled)} "
            f"{'is' if len(unfilled) == 1 else 'are'} not filled; fill them in {ws.rel(ws.record_path(parent))} "
            f"(`exp check {parent}` lists what is missing), then sweep"))
    meta = record.meta
    try:
        task = tasks.of(ws, meta)
        base = cfg_mod.validate_for(task, meta.get("config") or {})
    except ConfigError as err:
        raise RecordError(_refused(parent, f"its config is invalid ({err}); fix it with `exp set {parent}` first")) from None

    unknown = [k for k, _ in axes if task.schema is not None and k not in task.field_names()]
    if unknown:
        raise ConfigError(_refused(parent, "; ".join(f"unknown config key {k!r}{cfg_mod.suggest(k, task.schema)}" for k in unknown)))
    combos: list[list[tuple[str, str]]]
    if grid:
        combos = [list(c) for c in itertools.product(*([(k, v) for v in values] for k, values in axes))]
    else:
        combos = [[(k, v)] for k, values in axes for v in values]
    if len(combos) > MAX_MEMBERS:
        raise UsageError(_refused(parent, f"it would make {len(combos)} members (at most {MAX_MEMBERS}); sweep fewer values"))
    extra = [f"replicates={seeds}"] if seeds is not None else []
    if extra:
        try:
            cfg_mod.apply_for(task, base, extra)
        except ConfigError as err:
            raise ConfigError(_refused(parent, f"--seeds {seeds}: {str(err).removeprefix('invalid config: ')}")) from None

    errors: list[str] = []
    planned: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = []
    seen: dict[str, str] = {}
    for combo in combos:
        typed = [f"{k}={v}" for k, v in combo]
        try:
            new, _ = cfg_mod.apply_for(task, base, typed + extra)
        except (ConfigError, UsageError) as err:
            errors.append(f"{', '.join(typed)}: {str(err).removeprefix('invalid config: ')}")
            continue
        config = new
        changes = {k: config[k] for k, _ in combo}
        same = [k for k in changes if changes[k] == base.get(k)]
        if same:
            errors.append(f"{', '.join(typed)}: {' and '.join(same)} {'is' if len(same) == 1 else 'are'} already {parent}'s value "
                          f"(the parent is that arm of the group; drop the value)")
            continue
        key = repr(sorted(changes.items()))
        if key in seen:
            errors.append(f"{', '.join(typed)}: the same config as {seen[key]} (a value given twice)")
            continue
        seen[key] = ", ".join(typed)
        planned.append((changes, config, typed))
    if errors:
        raise ConfigError(_refused(parent, "; ".join(errors)))

    prefix = (desc if desc is not None else str(meta.get("description") or "")).strip()
    versions = groups.next_patches(ws, parent, len(planned))
    return [Member(v, changes, typed, config, f"{prefix} — {', '.join(typed)}" if prefix else ", ".join(typed))
            for v, (changes, config, typed) in zip(versions, planned)]


def sweep(ws: Workspace, parent: Version, specs: list[str], grid: bool = False, seeds: int | None = None,
          desc: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Plan the members and, unless ``dry_run``, write them; a failure part way (another command
    took a version meanwhile) removes the members this sweep wrote."""
    members = plan(ws, parent, specs, grid, seeds, desc)
    made: list[Version] = []
    if not dry_run:
        try:
            for m in members:
                lifecycle.create(ws, m.version, parent=parent, description=m.description, config=m.config,
                                 changes=m.changes)
                made.append(m.version)
        except BaseException:
            for v in made:
                for path in (ws.record_path(v), ws.state_path(v)):
                    path.unlink(missing_ok=True)
            raise
    out: dict[str, Any] = {
        "parent": str(parent),
        "grid": grid,
        "seeds": seeds,
        "dry_run": dry_run,
        "members": [m.to_dict(ws) for m in members],
    }
    if grid and any(len(m.changes) > 1 for m in members):
        out["warning"] = ("each member changes several keys (a grid): `exp check` warns on each that one variable "
                          "at a time is the rule")
    return out

"""A record from its creation to the run: ``exp new``, ``exp check``, ``exp set``.

``check`` finds every problem of a record, each with its line and its fix: errors make it not
ready (``exp run`` refuses it), warnings are advice (the one-variable rule, an unknown metric
name) and never change an exit code. ``check_record`` moves a clean draft to ``ready`` and a
ready record with errors back to ``draft``, through the one state machine (``status``).
"""

from __future__ import annotations

from typing import Any

from . import approval, catalog, groups, records, results, review, store, tasks, times, view
from . import claims as claims_mod
from . import config as cfg_mod
from .errors import ConfigError, RecordError
from .problem import Problem, is_clean
from .record import GENERATED, HINT_RE, HUMAN, SCHEMA, Record, dump_front_matter, meta_problems
from .render import render
from .status import STATUSES, require_status, transition
from .version import Version
from .workspace import Workspace

LABELS = {
    "zh": {"goal": "实验目的", "hypothesis": "研究假设", "expected": "预期结果", "focus": "实验重点"},
    "en": {"goal": "goal", "hypothesis": "hypothesis", "expected": "expected result", "focus": "focus"},
}
#: Statuses in which the config may still change: once a run started, the config is what ran.
EDITABLE = ("draft", "ready", "failed")


# -- exp new -----------------------------------------------------------------------------------
def create(ws: Workspace, version: Version, parent: Version | None = None, baseline: Version | None = None,
           description: str = "", lang: str | None = None, config: dict[str, Any] | None = None,
           changes: dict[str, Any] | None = None, task: str | None = None) -> Record:
    """Write experiment/experiment_VERSION.md (and its state) from the templates.

    ``config``: the record's config (validated) instead of the parent's. ``changes``: the record
    is a member of its parent's group (``exp sweep``): its front matter says ``group`` and
    ``changes``, and its human sections are the parent's by reference (``groups``). ``task``:
    what the record trains (``tasks``; default pretrain, or the parent's)."""
    path = ws.record_path(version)
    if path.exists() or ws.state_path(version).exists():
        raise RecordError(
            f"experiment {version} already exists ({ws.rel(path)}); nothing was changed — pick another version, "
            f"e.g. {version.bump('patch')}"
        )
    parent_meta = None
    if parent is not None:
        if parent == version:
            raise RecordError(f"an experiment cannot be its own parent ({version})")
        parent_meta = _existing_meta(ws, parent, "--from")
        parent_task = tasks.name_of(parent_meta)
        if task is not None and task != parent_task:
            hint = (f"; to fine-tune its model, drop --from and `exp set {version} init_from={parent}`"
                    if task == "classify" and parent_task == "pretrain" else "; drop --from or --task")
            raise RecordError(f"{parent} is a {parent_task} record and --from copies its config, which a {task} record "
                              f"cannot take{hint}; nothing was changed")
        task = parent_task
    try:
        the_task = tasks.get(ws.settings, task, ws.root)
        parent_config = the_task.defaults()
    except ConfigError as err:
        raise RecordError(f"{err}; nothing was changed") from None
    if parent_meta is not None:
        try:
            parent_config = cfg_mod.validate_for(the_task, parent_meta.get("config") or {})
        except ConfigError as err:
            raise RecordError(f"parent {parent} has an invalid config ({err}); fix it with `exp set {parent}` first") from None
        lang = lang or parent_meta.get("lang")
        if baseline is None and parent_meta.get("baseline"):
            baseline = Version.parse(str(parent_meta["baseline"]))
    if changes is not None and (parent is None or not groups.can_lead(parent) or version.category != "validation"
                                or (version.major, version.minor) != (parent.major, parent.minor)):
        raise RecordError(f"{version} cannot be a member of {parent}'s group: a group is an X.Y.0 record and its members X.Y.k")
    if config is not None:
        try:
            config = cfg_mod.validate_for(the_task, config)
        except ConfigError as err:
            raise RecordError(f"{version}: {err}; nothing was changed") from None
    if baseline is not None and baseline != version:
        _existing_meta(ws, baseline, "--baseline")
    lang = lang or ws.default_lang
    if lang not in ("zh", "en"):
        raise RecordError(f"language {lang!r} is not zh or en")
    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "version": str(version),
        "parent": str(parent) if parent else None,
        "baseline": str(baseline) if baseline else None,
        "status": "draft",
        "description": description,
        "lang": lang,
        "created": times.now(),
        "config": config if config is not None else parent_config,
    }
    if the_task.name != tasks.DEFAULT:  # a pretraining record's front matter stays as it was
        meta["task"] = the_task.name
    if changes is not None:
        meta[groups.GROUP_KEY] = str(parent)
        meta[groups.CHANGES_KEY] = dict(changes)
    skeleton = Record(meta=meta, parts=[], path=path)
    names = GENERATED if changes is not None else tuple(n for n in GENERATED if n != "member")
    ctx = view.block_context(ws, skeleton, names)
    blocks = {name: view.render_block(ws, skeleton, name, ctx) for name in names}
    body = render(ws.templates_dir, f"{lang}/record.md.j2", version=str(version), blocks=blocks,
                  group=str(parent) if changes is not None else None)
    record = Record.parse("---\n" + dump_front_matter(meta) + "---\n" + body, path, meta=meta)
    record.view["generated"] = {b.name: b.content for b in record.blocks("generated")}
    record.view["ai"] = {b.name: {"text": b.text} for b in record.blocks("ai")}
    with store.locked(ws, version):
        if path.exists():  # lost a race with another `exp new`
            raise RecordError(f"experiment {version} already exists ({ws.rel(path)}); nothing was changed")
        store.save(ws, record)
    return record


def _existing_meta(ws: Workspace, version: Version, flag: str) -> dict[str, Any]:
    if not ws.record_path(version).exists():
        raise RecordError(f"{flag} {version}: no such experiment ({ws.rel(ws.record_path(version))}); create it first or drop {flag}")
    return store.read_meta(ws, version)


# -- exp check ---------------------------------------------------------------------------------
def _front_line(record: Record, key: str) -> int:
    """1-based line of ``key:`` in the front matter (1 if not found)."""
    for i, line in enumerate(record.front_raw.split("\n")):
        if line.startswith(f"{key}:"):
            return i + 2
    return 1


def check(ws: Workspace, record: Record) -> list[Problem]:
    out: list[Problem] = []
    meta = record.meta
    for msg in meta_problems(meta, STATUSES):
        out.append(Problem("error", 1, msg, f"restore {ws.rel(ws.state_path(meta.get('version')))} from git"))
    version = str(meta.get("version", "?"))
    lang = meta.get("lang", "zh") if meta.get("lang") in LABELS else "zh"

    try:
        task: tasks.Task | None = tasks.of(ws, meta)
    except ConfigError as err:
        task = None
        out.append(Problem("error", _front_line(record, "task"), str(err), "fix the task's declaration, or the record's `task:` line"))

    # -- human sections ----------------------------------------------------------------------
    # a group member's unfilled section is its parent's (by reference): the parent must fill it
    group = groups.group_of(meta)
    if group is not None and not ws.record_path(group).exists():
        out.append(Problem("error", _front_line(record, "group"), f"the group's parent {group} has no record ({ws.rel(ws.record_path(group))})",
                           "restore it from git: this member's unfilled human sections are its text"))
    effective = groups.effective_human(ws, record) if group is not None else {}
    for name in HUMAN:
        label = f"{name} ({LABELS[lang][name]})" if lang == "zh" else name
        block = record.block("human", name)
        if block is None:
            out.append(Problem("error", 1, f"the human section '{name}' is missing",
                               f"restore the lines '<!-- exp:human {name} -->' and '<!-- /exp -->' around your {label}"))
            continue
        source = effective.get(name, {}).get("from", version)
        if source != version:  # inherited: filled when the parent's text is
            if not groups.is_filled(effective[name]["text"]):
                out.append(Problem(
                    "error", block.first_content_line,
                    f"the {label} is not filled: this member takes it from its group's parent {source}, whose {label} is unfilled",
                    f"fill the {label} of {ws.rel(ws.record_path(source))} (the group's question), or write this member's own {label} here",
                ))
            continue
        lines = block.text.split("\n")
        hint_lines = [i for i, line in enumerate(lines) if HINT_RE.match(line)]
        own = [line for line in lines if line.strip() and not HINT_RE.match(line)]
        if hint_lines:
            out.append(Problem("error", block.first_content_line + hint_lines[0], f"the {label} still holds the template's hint text",
                               f"replace the '> 💡' line(s) with your own {label}"))
        elif not own:
            out.append(Problem("error", block.first_content_line, f"the {label} is empty", f"write the {label} between its markers"))

    expected = record.block("human", "expected")
    if expected is not None:
        source = effective.get("expected", {}).get("from", version)
        if source == version:
            text, first, where, fix_where = expected.text, expected.first_content_line, "", ""
        else:  # the parent's claims hold for the member; they are reported at this member's section
            text, first = effective["expected"]["text"], expected.first_content_line
            where, fix_where = f"{source}'s ", f" (in {ws.rel(ws.record_path(source))})"
        found, bad = claims_mod.parse_claims(text, first)
        for p in bad:
            out.append(Problem("error", p.line if not where else first, f"{where}expected result `{p.text}` {p.message}", p.fix + fix_where))
        for c in found:
            ref = meta.get(c.reference) if c.reference in ("parent", "baseline") else True  # a member claim (@): groups checks it
            if not ref and c.reference == "baseline" and task is not None and c.metric in task.own_baseline:
                ref = True  # the run measures its own baseline (classify: the majority class on the same test set)
            line = c.line if not where else first
            if not ref:
                flag = "--from" if c.reference == "parent" else "--baseline"
                out.append(Problem("error", line, f"{where}expected result `{c.text}` compares with the {c.reference}, but this record has none",
                                   f"compare with a number, or recreate with `exp new {version} {flag} VERSION`"))
            hint = claims_mod.unknown_metric_hint(c.metric, task.known_metrics() if task else None)
            if hint:
                out.append(Problem("warning", line, hint, "use a metric from summary.json or metrics.jsonl"))
        out += [Problem(*p) for p in groups.member_claim_problems(ws, record, found)]
        if not found and not bad and not any(HINT_RE.match(x) for x in text.split("\n")):
            out.append(Problem("warning", first, f"no machine-checkable expected result{' in ' + source if where else ''}",
                               f"add a line such as `- {_example_claim(task)}` so `exp analyze` can give a verdict" + fix_where))

    # -- config --------------------------------------------------------------------------------
    config = meta.get("config")
    if isinstance(config, dict) and task is not None:
        try:
            cfg_mod.validate_for(task, config)
        except ConfigError as err:
            out.append(Problem("error", _front_line(record, "config"), str(err), f"set valid values with `exp set {version} KEY=VALUE`"))
        out.extend(_one_variable(ws, record))
    # -- generated blocks ----------------------------------------------------------------------
    for block in record.edited_generated():
        out.append(Problem(
            "error", block.line, f"the generated section '{block.name}' was edited by hand",
            f"make the change with `exp set {version} KEY=VALUE`; `exp set {version} --regenerate` restores the section "
            "(saving your edited text under out/.discarded/)",
        ))

    # -- pre-registration ----------------------------------------------------------------------
    prereg = meta.get("prereg") or {}
    for name in groups.prereg_changed(ws, record):
        block = record.block("human", name)
        source = effective.get(name, {}).get("from", version)
        whose = f"the {name}" if source == version else f"the {name} (this member's, from its group's parent {source})"
        fix_where = "" if source == version else f" in {ws.rel(ws.record_path(source))}"
        out.append(Problem(
            "error", block.first_content_line if block is not None else 1,
            f"{whose} was changed after the run started ({prereg.get('at', 'at run start')}); pre-registered text no longer matches",
            f"restore the pre-registered text{fix_where} (git shows it), or record the new idea as `exp new NEXT --from {version}`",
        ))

    out.extend(approval.review_problems(ws, record))  # stale approval, edited committed record
    out.extend(results.evidence_problems(ws, record))  # numbers in the ai sections that the evidence lacks

    if not str(meta.get("description", "")).strip():
        out.append(Problem("warning", _front_line(record, "description"), "the description is empty",
                           f"set it in the front matter's `description:` line of {ws.rel(ws.record_path(version))}"))
    return sorted(out, key=lambda p: (p.line, p.level))


def _example_claim(task: tasks.Task | None) -> str:
    if task is None or task.name == tasks.DEFAULT:
        return "val_loss < 2.5"
    if task.own_baseline:
        return f"{next(iter(task.own_baseline))} >= baseline + 0.02"
    m = task.metrics[0]
    return f"{m.name} {'>' if m.direction == 'higher' else '<'} NUMBER"


def _one_variable(ws: Workspace, record: Record) -> list[Problem]:
    """A validation run (X.Y.Z, Z ≥ 1) changes one thing relative to its parent."""
    line = _front_line(record, "parent") if not catalog.parent_exists(ws, record.meta) else _front_line(record, "config")
    return [Problem(level, line, message, fix) for level, message, fix in catalog.one_variable_issues(ws, record.meta)]


def check_record(ws: Workspace, version: Version) -> dict[str, Any]:
    """Check a record; a clean draft becomes ready, a ready record with errors goes back to draft."""
    with records.update(ws, version) as record:
        review.refresh_status(ws, record)  # an approval whose hashes no longer match lapses
        show_inherited(ws, record)
        problems = check(ws, record)
        ok = is_clean(problems)
        if ok and record.status == "draft":
            transition(record, "ready")
        elif not ok and record.status == "ready":
            transition(record, "draft")
    if groups.can_lead(version):
        for member in groups.member_versions(ws, version):  # they quote this record's human sections
            with records.update(ws, member) as rec:
                show_inherited(ws, rec)
    return {
        "version": str(version),
        "path": ws.rel(ws.record_path(version)),
        "ok": ok,
        "status": record.status,
        "problems": [p.to_dict() for p in problems],
    }


def show_inherited(ws: Workspace, record: Record) -> None:
    """Render a group member's ``group`` section again from its parent's human sections, until
    its run starts (then the section shows what the run was pre-registered with). A hand edit
    there is left for ``exp check`` to report."""
    if groups.group_of(record.meta) is not None and record.status in ("draft", "ready"):
        view.regenerate_quietly(ws, record, ("member",))


def ready_or_raise(ws: Workspace, record: Record) -> None:
    """``exp run``'s gate: no error from ``check`` (a group member's section quoting its parent
    is brought up to date first: the run starts under that text)."""
    show_inherited(ws, record)
    problems = check(ws, record)
    if not is_clean(problems):
        errors = [p for p in problems if p.level == "error"]
        listed = "; ".join(f"line {p.line}: {p.message}" for p in errors[:6])
        more = f"; and {len(errors) - 6} more" if len(errors) > 6 else ""
        raise RecordError(f"{record.version} is not ready to run — {listed}{more} (see `exp check {record.version}`)")


# -- exp set -----------------------------------------------------------------------------------
def set_config(ws: Workspace, version: Version, assignments: list[str], regenerate: bool = False) -> dict[str, Any]:
    """Apply KEY=VALUE strings and rewrite the parameter table; ``regenerate`` rewrites every
    generated section, saving hand edits under out/.discarded/ first."""
    changed: dict[str, tuple[Any, Any]] = {}
    with records.update(ws, version) as record:
        if regenerate and record.status in ("approved", "committed"):
            raise RecordError(
                f"cannot regenerate {version}: it is {record.status}, and rewriting its sections would change the approved "
                f"record; start the next experiment with `exp new NEXT --from {version}`"
            )
        if assignments:
            require_status(record, EDITABLE, "change the config of")
            new, changed = cfg_mod.apply_for(tasks.of(ws, record.meta), record.meta.get("config") or {}, assignments)
            if changed:
                record.meta["config"] = new
                groups.sync_changes(record.meta)  # a member's `changes` follow its swept keys
                if record.status == "failed":
                    transition(record, "draft")  # a changed config needs `exp check` before a rerun
        # the info section names a classifier's starting model (init_from): its lineage
        names = GENERATED if regenerate else (("config", "member") + (("info",) if "init_from" in changed else ())
                                              if changed else ())
        discarded = view.regenerate(ws, record, names, discard=regenerate)
    return {
        "version": str(version),
        "changed": {k: list(v) for k, v in changed.items()},
        "discarded": [str(p) for p in discarded],
        "status": record.status,
    }


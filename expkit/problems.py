"""What ``exp check`` finds: every problem of a record, each with its line and its fix.

Errors make the record not ready (``exp run`` refuses it); warnings are advice (the
one-variable rule, an unknown metric name) and never change the exit code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import claims as claims_mod
from . import record as rec_mod
from .errors import ConfigError
from .record import Record
from .version import Version
from .workspace import Workspace

LABELS = {
    "zh": {"goal": "实验目的", "hypothesis": "研究假设", "expected": "预期结果", "focus": "实验重点"},
    "en": {"goal": "goal", "hypothesis": "hypothesis", "expected": "expected result", "focus": "focus"},
}


@dataclass(frozen=True)
class Problem:
    level: str  # "error" | "warning"
    line: int
    message: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _front_line(record: Record, key: str) -> int:
    """1-based line of ``key:`` in the front matter (1 if not found)."""
    for i, line in enumerate(record.front_raw.split("\n")):
        if line.startswith(f"{key}:"):
            return i + 2
    return 1


def check(ws: Workspace, record: Record) -> list[Problem]:
    out: list[Problem] = []
    meta = record.meta
    for msg in rec_mod.meta_problems(meta):
        out.append(Problem("error", 1, msg, "restore the front matter from git or recreate the record with `exp new`"))
    version = str(meta.get("version", "?"))
    lang = meta.get("lang", "zh") if meta.get("lang") in LABELS else "zh"

    # -- human sections ----------------------------------------------------------------------
    for name in rec_mod.HUMAN:
        label = f"{name} ({LABELS[lang][name]})" if lang == "zh" else name
        block = record.block("human", name)
        if block is None:
            out.append(
                Problem(
                    "error", 1, f"the human section '{name}' is missing",
                    f"restore the lines '<!-- exp:human {name} -->' and '<!-- /exp -->' around your {label}",
                )
            )
            continue
        hint_lines = [i for i, line in enumerate(block.text.split("\n")) if rec_mod.HINT_RE.match(line)]
        own = [line for line in block.text.split("\n") if line.strip() and not rec_mod.HINT_RE.match(line)]
        if hint_lines:
            out.append(
                Problem(
                    "error", block.first_content_line + hint_lines[0],
                    f"the {label} still holds the template's hint text",
                    f"replace the '> 💡' line(s) with your own {label}",
                )
            )
        elif not own:
            out.append(Problem("error", block.first_content_line, f"the {label} is empty", f"write the {label} between its markers"))

    expected = record.block("human", "expected")
    if expected is not None:
        found, bad = claims_mod.parse_claims(expected.text, expected.first_content_line)
        for p in bad:
            out.append(Problem("error", p.line, f"expected result `{p.text}` {p.message}", p.fix))
        for c in found:
            ref = meta.get(c.reference) if c.reference in ("parent", "baseline") else True
            if not ref:
                flag = "--from" if c.reference == "parent" else "--baseline"
                out.append(
                    Problem(
                        "error", c.line, f"expected result `{c.text}` compares with the {c.reference}, but this record has none",
                        f"compare with a number, or recreate with `exp new {version} {flag} VERSION`",
                    )
                )
            hint = claims_mod.unknown_metric_hint(c.metric)
            if hint:
                out.append(Problem("warning", c.line, hint, "use a metric from summary.json or metrics.jsonl"))
        if not found and not bad and not any(rec_mod.HINT_RE.match(x) for x in expected.text.split("\n")):
            out.append(
                Problem(
                    "warning", expected.first_content_line, "no machine-checkable expected result",
                    "add a line such as `- val_loss < 2.5` so `exp analyze` can give a verdict",
                )
            )

    # -- config --------------------------------------------------------------------------------
    config = meta.get("config")
    if isinstance(config, dict):
        from . import config as cfg_mod

        try:
            cfg_mod.validate(config)
        except ConfigError as err:
            out.append(Problem("error", _front_line(record, "config"), str(err), f"set valid values with `exp set {version} KEY=VALUE`"))
        out.extend(_one_variable(ws, record, config))

    # -- generated blocks ----------------------------------------------------------------------
    for block in record.edited_generated():
        out.append(
            Problem(
                "error", block.line, f"the generated section '{block.name}' was edited by hand",
                f"make the change with `exp set {version} KEY=VALUE`; `exp set {version} --regenerate` restores the section "
                "(saving your edited text under out/.discarded/)",
            )
        )

    # -- pre-registration ----------------------------------------------------------------------
    prereg = meta.get("prereg") or {}
    for name, digest in (prereg.get("sections") or {}).items():
        block = record.block("human", name)
        if block is not None and rec_mod.sha256(block.text) != digest:
            out.append(
                Problem(
                    "error", block.first_content_line,
                    f"the {name} was changed after the run started ({prereg.get('at', 'at run start')}); pre-registered text no longer matches",
                    f"restore the pre-registered text (git shows it), or record the new idea as `exp new NEXT --from {version}`",
                )
            )

    from . import review as review_mod

    out.extend(review_mod.review_problems(ws, record))  # stale approval, edited committed record

    from .results import evidence_problems

    out.extend(evidence_problems(record))  # numbers in the ai sections that the run's evidence lacks

    if not str(meta.get("description", "")).strip():
        out.append(Problem("warning", _front_line(record, "description"), "the description is empty", "set it in the front matter's `description:`"))
    return sorted(out, key=lambda p: (p.line, p.level))


def _one_variable(ws: Workspace, record: Record, config: dict[str, Any]) -> list[Problem]:
    """A validation run (X.Y.Z, Z ≥ 1) should change one thing relative to its parent."""
    meta = record.meta
    parent = meta.get("parent")
    try:
        version = Version.parse(str(meta.get("version")))
    except Exception:
        return []
    if not parent or version.category != "validation":
        return []
    path = ws.record_path(parent)
    if not path.exists():
        return [Problem("warning", _front_line(record, "parent"), f"parent {parent} has no record", "restore it or clear `parent:`")]
    from . import config as cfg_mod

    changed = cfg_mod.diff(rec_mod.read_meta(path).get("config") or {}, config)
    line = _front_line(record, "config")
    out = []
    if "model_type" in changed:
        old, new = changed["model_type"]
        out.append(
            Problem(
                "warning", line, f"model_type changes from {old} to {new} in a validation version",
                f"a new model type is a new direction: use an exploratory version (X.Y.0), e.g. `exp new {version.major}.{version.minor + 1}.0 --from {parent}`",
            )
        )
    if len(changed) > 1:
        out.append(
            Problem(
                "warning", line, f"{len(changed)} config keys differ from parent {parent}: {', '.join(changed)}",
                "change one variable at a time, or split this into several versions",
            )
        )
    return out


def is_clean(problems: list[Problem]) -> bool:
    return not any(p.level == "error" for p in problems)


def check_record(ws: Workspace, version: Version) -> dict[str, Any]:
    """Check a record; a clean draft becomes ready, a ready record with errors goes back to draft."""
    from . import store

    from . import review as review_mod

    with store.update(ws, version) as record:
        review_mod.refresh_status(ws, record)  # an approval whose hashes no longer match lapses
        problems = check(ws, record)
        ok = is_clean(problems)
        if ok and record.status == "draft":
            record.set_status("ready")
        elif not ok and record.status == "ready":
            record.set_status("draft")
    return {
        "version": str(version),
        "path": store._rel(ws, record.path),
        "ok": ok,
        "status": record.status,
        "problems": [p.to_dict() for p in problems],
    }

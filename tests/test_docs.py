"""The docs keep up with the CLI: every command is documented where people and the AI look."""

from __future__ import annotations

import re
from pathlib import Path

from expkit.cli import COMMANDS, load_command

REPO = Path(__file__).resolve().parent.parent


def command_names() -> list[str]:
    """Public commands; hidden ones (``_start``, ``_finalize``) are steps of the run script."""
    return [name for name in COMMANDS if not name.startswith("_")]


def test_every_command_has_a_one_line_help_and_the_table_says_the_same():
    for name, (_, line) in COMMANDS.items():
        command = load_command(name)
        doc = (command.help or "").strip()
        assert doc, name
        assert doc.splitlines()[0] == line, f"expkit/cli.py's COMMANDS[{name!r}] differs from the command's docstring"
        assert len(line) <= 100
        assert command.hidden == name.startswith("_")


def test_every_command_appears_in_readme_and_claude_md():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    guide = (REPO / "CLAUDE.md").read_text(encoding="utf-8")
    for name in command_names():
        assert re.search(rf"`exp {name}\b", readme), f"README.md lacks `exp {name}`"
        assert re.search(rf"`exp {name}\b", guide), f"CLAUDE.md lacks `exp {name}`"


def test_readme_quick_start_is_the_two_make_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick
    assert "make test" in (REPO / ".ci/run").read_text()


def test_claude_md_draws_the_lines():
    guide = (REPO / "CLAUDE.md").read_text(encoding="utf-8")
    for phrase in ("never edit", "Never approve", "Never commit", "--json"):
        assert phrase.lower() in guide.lower(), phrase


def test_manual_is_in_chinese_and_covers_the_topics():
    manual = (REPO / "experiment/README.md").read_text(encoding="utf-8")
    for topic in ("工作流程", "版本命名", "质量标准", "常见问题", "目标明确", "参数完整", "训练稳定收敛", "记录详细", "问题分析", "改进建议"):
        assert topic in manual, topic


def test_the_assistant_stops_after_the_analysis_and_the_demo_hands_over_to_a_person():
    guide = (REPO / "CLAUDE.md").read_text(encoding="utf-8")
    stop = guide.index("**stop**")
    assert guide.index("exp analyze") < stop < guide.index("exp review X.Y.Z", stop)
    demo = (REPO / "scripts" / "demo.sh").read_text(encoding="utf-8").rstrip().splitlines()
    assert demo[-1] == "EOF" and demo[-2].strip().endswith("exp review 0.1.0")  # the last line it prints


def test_the_citation_example_of_claude_md_resolves_against_a_real_evidence_object():
    """The assistant learns the syntax from CLAUDE.md's example: every path in it must exist."""
    from expkit import citations, evidence

    guide = (REPO / "CLAUDE.md").read_text(encoding="utf-8")
    example = guide.split("```markdown", 1)[1].split("```", 1)[0]
    assert example.count("[[") >= 5
    ev = evidence.build(
        {"metrics": {"val_loss": 5.219, "peak_mem_mb": 812.4, "params": 1_200_000},
         "verdicts": [{"claim": "val_loss < 2.5", "metric": "val_loss", "verdict": "refuted", "label": "不成立",
                       "observed": 5.219, "reference": 2.5}],
         "references": {"parent": {"version": "1.4.0", "has_run": True,
                                   "deltas": {"val_loss": {"value": 5.219, "reference": 5.39, "abs": -0.171, "rel": -0.0317}},
                                   "curve": evidence.curve_of([{"step": 120, "loss": 6.2, "val_loss": 6.3}])}}},
        {}, {}, {"param_counts": {"total": 1_200_000, "memory": 400_000, "embedding": 819_200}},
        rows=[{"step": 120, "loss": 6.0, "val_loss": 6.1}],
    )
    text, cited = citations.resolve(example, ev)
    assert "[[" not in text and len(cited) == example.count("[[")
    assert "5.219" in text and "-3.2%" in text and "400,000" in text and "6.300" in text and "不成立" in text

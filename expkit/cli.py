"""The ``exp`` command line: the table of commands, each loaded when it runs.

``COMMANDS`` names every command, the module of ``expkit.commands`` that defines it, and its
one-line help. The root group imports a command's module only when that command runs (click's
documented lazy-subcommand pattern), so ``exp --help`` pays for click and this table, and
``exp list`` for the listing alone — not for the config schema, the templates, numpy or git.
A test checks that each line here is the first line of the command's own help.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

HELP = (
    "exp — versioned, reviewed experiment records for pretraining small language models.\n\n"
    "Loop: exp new → (human fills goal/hypothesis/expected/focus) → exp set → exp check → exp run → "
    "exp analyze → exp review (a person) → exp commit."
)

#: name → (module under expkit.commands, one-line help), in the order `exp --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("workspace", "Create a new workspace: experiment/, run_file/, out/, templates/, CLAUDE.md, pyproject.toml."),
    "new": ("authoring", "Write experiment/experiment_VERSION.md from the templates."),
    "check": ("authoring", "List every problem of a record with its line and fix; a clean draft becomes ready."),
    "set": ("authoring", "Set config values (typed and range-checked) and regenerate the parameter table."),
    "sweep": ("authoring", "Make a group's members from an X.Y.0 record: one record X.Y.k per swept value."),
    "tasks": ("authoring", "List the tasks a record may have: built-in and declared, with command, config and metrics."),
    "show": ("catalog", "Show a record: state, human sections, expected-result claims, config changes."),
    "list": ("catalog", "List the records with status, category, parent and description."),
    "diff": ("reporting", "How two experiments differ: config, environment, run script, code (git), metrics."),
    "compare": ("reporting", "Compare runs: the config keys that differ, a metric table with deltas, overlaid curves."),
    "tree": ("reporting", "Show the lineage of experiments by parent, with verdicts and the best loss of each."),
    "report": ("reporting", "Write experiment/EXPERIMENT_REPORT.md, experiment/experiment_tracker.csv and comparison PNGs."),
    "summary": ("summary", "Write experiment/SUMMARY.md: what the approved and committed records showed, every number cited."),
    "site": ("site", "Build a static web site of the workspace (out/site/): records, verdicts, curves, comparisons."),
    "data": ("data", "Prepare corpora: tokenize JSONL once into memory-mapped token shards."),
    "run": ("running", "Run records: render the script, preflight, start (foreground, detached, Slurm); several: a queue."),
    "doctor": ("running", "Check the environment a run needs: torch, GPUs, data, tokenizer, disk, SwanLab, git."),
    "status": ("running", "Show running experiments, queues and replicates: step, loss, tokens/s, ETA; finds runs that died."),
    "logs": ("running", "Print the run's log (out/experiment_VERSION/run.log); -f follows it."),
    "stop": ("running", "Stop a run with SIGTERM (scancel on Slurm); it checkpoints and becomes interrupted."),
    "pull": ("running", "Bring a remote run's outputs back over ssh; a run that ended there is finalized and analysed."),
    "sync": ("running", "Upload the run's offline SwanLab log to the cloud (swanlab sync)."),
    "analyze": ("results", "Metrics, verdicts on the expected results, anomalies, plots and drafts of the AI sections."),
    "context": ("results", "What an AI assistant needs to write the analysis: the evidence to cite, sections, verdicts, samples."),
    "fill": ("results", "Write the AI's prose into an AI section, resolving [[citations]]; refuses untraceable numbers."),
    "review": ("reviewing", "A person reviews an analyzed record at a terminal: approve, request changes, or quit."),
    "commit": ("reviewing", "git-commit an approved, unchanged record with its state, run script and small artifacts."),
    # the rendered run script's own steps: not for people
    "_start": ("running", "Run-script step: preflight, then mark the record running (called by the rendered script)."),
    "_finalize": ("running", "Run-script step: record how the run ended (called by the script's EXIT trap)."),
    "_queue": ("running", "The detached run queue's supervisor (started by `exp run ... --detach`)."),
}


def load_command(name: str) -> click.Command:
    """The click command ``name``, from its module's typer app (imported now)."""
    import typer.main  # typer builds the command from the function's signature: only when one runs

    module = importlib.import_module(f"expkit.commands.{COMMANDS[name][0]}")
    built = typer.main.get_command(module.app)
    if isinstance(built, click.Group):
        return built.commands[name]
    return built


class LazyGroup(click.Group):
    """A group whose commands are imported when they run; its help lists them from the table."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return load_command(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items() if not name.startswith("_")]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = LazyGroup(name="exp", help=HELP, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def main(argv: list[str] | None = None) -> Any:
    try:
        return app.main(args=argv, prog_name="exp")
    except KeyboardInterrupt:
        click.echo("exp: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

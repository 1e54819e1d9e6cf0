"""``exp data prepare``: tokenize a JSONL corpus once into memory-mapped token shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import JSON_HELP, command, echo_json, typer_app

app = typer_app()
data_app = typer_app()
app.add_typer(data_app, name="data", help="Prepare corpora: tokenize JSONL once into memory-mapped token shards.")


@command(data_app, "prepare")
def prepare(
    src: Path = typer.Argument(..., metavar="SRC", help="JSONL or JSONL.gz corpus, one {\"text\": ...} a line"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="output directory (default: SRC's name + .tokens beside it)"),
    workers: int = typer.Option(1, "--workers", metavar="N", help="tokenizing processes (default 1)"),
    val_fraction: float = typer.Option(0.0, "--val-fraction", metavar="F", help="share of the documents (the last) held out for validation"),
    field: str = typer.Option("text", "--field", metavar="NAME", help="the JSON field that holds the text (default text)"),
    tokenizer: str = typer.Option("embedded", "--tokenizer", metavar="DIR", help="tokenizer directory (default embedded)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Tokenize a JSONL(.gz) corpus into uint16/uint32 token shards with an index and a manifest.

    Running it again on the same source and tokenizer does nothing and says so. Point a
    record's data_path at DIR (exp set VERSION data_path=DIR).
    """
    # model imports torch and transformers: only when this command runs, never for `exp --help`
    from model import prepare as preparing

    result = preparing.prepare(src, out, tokenizer=tokenizer, workers=workers, val_fraction=val_fraction, field=field,
                               note=lambda line: typer.echo(f"exp: note: {line}", err=True))
    if json_out:
        echo_json(result)
        return
    typer.echo("\n".join(preparing.describe(result)))

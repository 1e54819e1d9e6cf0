"""Build a benchmark workspace with whichever expkit is on the path (the current one or an old one).

bench_cli.py runs this once per code version, as a subprocess with ``PYTHONPATH`` set to that
version's tree, so each side's records are written by its own code: the old expkit (before
issue 13) writes markdown records only, the current one a ``.state.json`` beside each.

What it makes, through the API it finds (``expkit.lifecycle`` + ``expkit.records``, else the old
``expkit.store``):

- ``1.0.0``: a baseline without a parent; ``1.0.1``: its child with one config change. Both
  have human sections, a finished run (the run directory given by ``--run``: metrics.jsonl,
  summary.json, samples.json) and are analysed with ``results.analyze``.
- copies of those two up to ``--records`` records: family ``1.F.0`` (a copy of 1.0.0) with
  children ``1.F.1`` … ``1.F.9`` (copies of 1.0.1, parent 1.F.0). A copy replaces the versions
  in the file names and contents (whole versions only: not ``11.0.0`` nor ``1.0.0.1``) and the
  hashes the tool keeps of the text that changed, so it reads as a record the tool wrote
  (bench_cli.py checks that with ``exp show`` before it times anything).

Prints one JSON object: the API found, the records made, and the versions to time.

    PYTHONPATH=TREE python bench/make_workspace.py ROOT --run RUN_DIR [--records 1000]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

HUMAN = {
    "goal": "Measure how the learning rate changes the final validation loss of the small dense model.",
    "hypothesis": "A larger learning rate converges faster at this size without diverging.",
    "expected": "- val_loss < 3\n- best_val_loss <= parent - 0.01\n- tokens_per_s >= parent * 0.9\n",
    "focus": "The loss curve in the first thousand steps, and the throughput.",
}

RUN = {
    "started": "2026-12-01T10:00:00+00:00", "ended": "2026-12-01T12:05:00+00:00", "duration_s": 7500.0,
    "backend": "local", "host": "bench-host", "command": "bash run_file/experiment.sh", "exit_code": 0,
    "git_sha": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False, "gpus": "none (CPU)",
    "env": {"python": "3.11.7", "torch": "2.5.1", "transformers": "4.46.0", "platform": "Linux", "cpus": 2},
}

# a whole version: not preceded by a digit or "digit.", not followed by a digit or ".digit"
VERSION_RE = r"(?<!\d)(?<!\d\.){}(?!\.?\d)"


def lf(text: str) -> str:
    return text.replace("\r\n", "\n")


class Api:
    """The few calls the generator needs, from the new modules or the old store."""

    def __init__(self) -> None:
        from expkit import results
        from expkit.record import Record, digest, sha256
        from expkit.version import Version
        from expkit.workspace import Workspace, scaffold

        self.Version, self.Workspace, self.scaffold, self.analyze = Version, Workspace, scaffold, results.analyze
        self.Record, self.digest, self.sha256 = Record, digest, sha256
        try:
            from expkit import lifecycle, records, view

            self.name = "lifecycle"
            self.create, self.update, self.set_config = lifecycle.create, records.update, lifecycle.set_config
            self.regenerate = view.regenerate
        except ImportError:  # before issue 13: one store module
            from expkit import store

            self.name = "store"
            self.create, self.update, self.set_config = store.create, store.update, store.set_config
            self.regenerate = store.regenerate_blocks


def make_original(api: Api, ws, version: str, parent: str | None, run_dir: Path, description: str) -> None:
    """A record as `exp new` writes it, filled in, run (its outputs copied in) and analysed."""
    v = api.Version.parse(version)
    api.create(ws, v, parent=api.Version.parse(parent) if parent else None, description=description)
    if parent:
        api.set_config(ws, v, ["learning_rate=2e-3"])
    with api.update(ws, v) as r:
        for name, text in HUMAN.items():
            r.set_human(name, text)
        r.meta["status"] = "finished"  # a benchmark's setup: no run, so no state machine
        r.meta["run"] = {**RUN, "status": "finished", "script": f"run_file/experiment_{v}.sh", "out_dir": f"out/experiment_{v}"}
        r.meta["prereg"] = {"at": RUN["started"], "sections": {n: api.sha256(r.human(n)) for n in ("goal", "hypothesis", "expected")}}
        api.regenerate(ws, r, ("execution", "environment"))
    shutil.copytree(run_dir, ws.out_dir(v))
    api.analyze(ws, v)


def hashes(api: Api, text: str) -> list[str]:
    """Every hash the tool may keep of a record's text: of each block and of the front matter."""
    front = re.match(r"---[ \t]*\r?\n(.*?)^---[ \t]*\r?$", text, re.S | re.M)
    out = [api.sha256(lf(front.group(1) if front else ""))]
    rec = api.Record.parse(text)  # the front matter read as YAML: works with and without a state
    for b in rec.blocks():
        for part in (b.content, b.text, lf(b.content)):
            out += [api.sha256(part), api.digest(part)]
    return out


def copy_record(api: Api, ws, source: str, target: str, mapping: dict[str, str]) -> None:
    """experiment_SOURCE.md (and its .state.json) as experiment_TARGET.*, versions mapped."""
    pattern = re.compile(VERSION_RE.format("(?:" + "|".join(re.escape(k) for k in mapping) + ")"))
    src_md = ws.record_path(source).read_text(encoding="utf-8")
    md = pattern.sub(lambda m: mapping[m.group()], src_md)
    # hashes of text that changed with the version: the copy's own, longest first (a digest is a prefix)
    changed = {old: new for old, new in zip(hashes(api, src_md), hashes(api, md)) if old != new}
    swap = sorted(changed, key=len, reverse=True)

    def rewrite(text: str) -> str:
        text = pattern.sub(lambda m: mapping[m.group()], text)
        for old in swap:
            text = text.replace(old, changed[old])
        return text

    ws.record_path(target).write_text(rewrite(src_md), encoding="utf-8")
    state = ws.experiment_dir / f"experiment_{source}.state.json"
    if state.exists():
        copied = json.loads(rewrite(state.read_text(encoding="utf-8")))
        # the hash of the copy's front matter as the tool keeps it for a record it wrote (the mapping
        # above cannot know it: the front matter holds hashes that change with the copy); without
        # it every read of a copy took the path of a front matter edited by hand (YAML, reconcile)
        front = api.Record.read(ws.record_path(target)).front_raw
        if isinstance(copied.get("view"), dict) and copied["view"].get("front_sha256"):
            copied["view"]["front_sha256"] = api.sha256(lf(front))
        (ws.experiment_dir / f"experiment_{target}.state.json").write_text(
            json.dumps(copied, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the workspace to create (must not exist)")
    ap.add_argument("--run", type=Path, required=True, help="a run directory (metrics.jsonl, summary.json, samples.json)")
    ap.add_argument("--records", type=int, default=1000, help="records in all (default 1000)")
    args = ap.parse_args()

    api = Api()
    api.scaffold(args.root)
    ws = api.Workspace.find(args.root.resolve())
    make_original(api, ws, "1.0.0", None, args.run, "baseline: dense model, default learning rate")
    make_original(api, ws, "1.0.1", "1.0.0", args.run, "learning rate 2e-3")
    made = 2
    family = 1
    while made < args.records:
        root = f"1.{family}.0"
        copy_record(api, ws, "1.0.0", root, {"1.0.0": root})
        made += 1
        for k in range(1, 10):
            if made >= args.records:
                break
            copy_record(api, ws, "1.0.1", f"1.{family}.{k}", {"1.0.1": f"1.{family}.{k}", "1.0.0": root})
            made += 1
        family += 1
    mid = max(1, min(family - 1, (family - 1) // 2))
    json.dump({"api": api.name, "expkit": str(Path(sys.modules["expkit"].__file__).parent), "records": made,
               "analyze": "1.0.1", "no_parent": f"1.{mid}.0", "with_parent": f"1.{mid}.3" if made > 13 else "1.0.1"},
              sys.stdout)
    print()


if __name__ == "__main__":
    main()

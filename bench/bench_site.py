"""`exp site` over a workspace of 1,000 analysed records: cold build, one changed record, and the
index's load-to-interactive time in headless Chromium. Prints medians and ratios to the targets,
all measured in one run.

    python bench/bench_site.py [--records 1000] [--steps 10000] [--repeats 5] [--keep DIR]

The workspace comes from make_workspace.py (records with a finished, analysed run); every copied
record then gets the analysed original's run directory (hard links: one metrics.jsonl of
``--steps`` lines, one per step, and what `exp analyze` wrote beside it: analysis.json, plots,
curves.json). expkit's modules are compiled to bytecode first, as an installed expkit's are.
"Cold": no site folder and no cache (``out/.cache/`` removed: the first build ever). "New
template": the site kept, a comment added to the workspace's ``templates/site/record.html.j2``
(every record page rendered again; curves reused from the data scripts). "One changed": a
record's description edited through expkit, then the site rebuilt. Each build runs `exp site --json` as a new process (what a person waits for);
besides its wall time the CPU seconds it and its workers used are printed (other engineers'
work shares the machine: the load is printed with each figure). "Interactive": from navigation
start to the index's script having wired sorting and filtering (``data-ready``), over
``file://``; "index load event" is the end of the page's load event, which waits for the
browser to lay out what the script put in the table (in these runs it came after that layout).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = {"cold": 5.0, "new template": 5.0, "one changed": 1.0, "index interactive": 1.0, "index load event": 1.0}
CPU: dict[str, list[float]] = {}
LOAD: dict[str, list[float]] = {}


def exp_site(root: Path, name: str) -> tuple[float, dict]:
    env = {**os.environ, "EXP_ROOT": str(root), "PYTHONPATH": str(REPO)}
    LOAD.setdefault(name, []).append(os.getloadavg()[0])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "expkit.cli", "site", "--json"], cwd=root, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(name, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if r.returncode:
        sys.exit(f"exp site failed: {r.stderr}")
    return elapsed, json.loads(r.stdout)


def interactive(index: Path, repeats: int) -> tuple[list[float], list[float]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    out, loaded = [], []
    try:
        for _ in range(repeats + 1):  # the first load warms the browser's own caches: not counted
            LOAD.setdefault("index interactive", []).append(os.getloadavg()[0])
            driver.get("about:blank")
            driver.get(index.as_uri())
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "return document.documentElement.getAttribute('data-ready') === '1' && performance.timing.loadEventEnd > 0"))
            out.append(driver.execute_script("return window.EXP_READY_AT") / 1000)  # ms since navigation start
            loaded.append(driver.execute_script("return performance.timing.loadEventEnd - performance.timing.navigationStart") / 1000)
            shown = driver.execute_script("return document.getElementById('shown').textContent")
            assert shown == str(driver.execute_script("return JSON.parse(document.getElementById('index-data').textContent).rows.length"))
            assert driver.execute_script("return document.querySelectorAll('#records tbody tr').length") > 0
    finally:
        driver.quit()
    LOAD["index load event"] = LOAD["index interactive"]
    return out[1:], loaded[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10_000, help="lines of each run's metrics.jsonl")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from bench_analysis import make_run

    # expkit's bytecode, as `pip install` leaves it: without it (PYTHONDONTWRITEBYTECODE, as on the
    # development machine) every `exp` process compiles expkit's modules again (~0.07 s each)
    compileall.compile_dir(str(REPO / "expkit"), quiet=1)

    tmp = Path(tempfile.mkdtemp(prefix="bench-site-"))
    root = args.keep or tmp / "ws"
    run_dir = tmp / "run"
    make_run(run_dir, args.steps, eval_every=500)
    made = subprocess.run([sys.executable, str(HERE / "make_workspace.py"), str(root), "--run", str(run_dir), "--records", str(args.records)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if made.returncode:
        sys.exit(made.stderr)
    info = json.loads(made.stdout)
    # the copies' runs: the files of the analysed original's (1.0.1: the run's own files and what `exp
    # analyze` wrote beside them, curves.json included), hard links; analysed from the same metrics
    # file, a copy's would be the same (and curves.json matches: same size and mtime, one inode)
    analysed = root / "out" / "experiment_1.0.1"
    for state in sorted((root / "experiment").glob("experiment_*.state.json")):
        v = state.name[len("experiment_"): -len(".state.json")]
        out = root / "out" / f"experiment_{v}"
        if not out.exists():
            for f in sorted(analysed.rglob("*")):
                if f.is_dir():
                    continue
                (out / f.relative_to(analysed)).parent.mkdir(parents=True, exist_ok=True)
                os.link(f, out / f.relative_to(analysed))
    print(f"workspace: {info['records']} records, each with a {args.steps:,}-line metrics.jsonl; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.2f}")

    sys.path.insert(0, str(REPO))
    os.environ["EXP_ROOT"] = str(root)
    from expkit import records
    from expkit.version import Version
    from expkit.workspace import Workspace

    ws = Workspace.find(root)
    target = Version.parse(info["with_parent"])
    cold, restyled, changed = [], [], []
    template = root / "templates" / "site" / "record.html.j2"
    for i in range(args.repeats):
        shutil.rmtree(root / "out" / "site", ignore_errors=True)
        shutil.rmtree(root / "out" / ".cache", ignore_errors=True)
        t, result = exp_site(root, "cold")
        cold.append(t)
        assert result["records"] == info["records"], result
        template.write_text(template.read_text(encoding="utf-8") + f"{{# bench {i} #}}\n", encoding="utf-8")
        t, result = exp_site(root, "new template")
        restyled.append(t)
        assert len([w for w in result["written"] if w.endswith(".html")]) > info["records"], result["written"][:5]
        with records.update(ws, target) as r:
            r.meta["description"] = f"learning rate 2e-3, edit {i}"
        t, result = exp_site(root, "one changed")
        assert sorted(result["written"]) == sorted(["index.html", f"r/{target}.html", f"r/{target}.data.js"]), result["written"]
        changed.append(t)
    figures = {"cold": cold, "new template": restyled, "one changed": changed}
    if shutil.which("chromedriver"):
        figures["index interactive"], figures["index load event"] = interactive(root / "out" / "site" / "index.html", args.repeats)
    else:
        print("index interactive: skipped (no chromedriver: apt-get install chromium chromium-driver)")
    size = sum(f.stat().st_size for f in (root / "out" / "site").rglob("*") if f.is_file())
    print(f"site: {size / 2**20:.1f} MiB, index.html {(root / 'out/site/index.html').stat().st_size / 2**10:.0f} KiB")
    print(f"{'what':20} {'median':>8} {'min':>8} {'max':>8} {'target':>8} {'ratio':>7} {'cpu s':>7} {'load':>11}")
    for name, values in figures.items():
        med = statistics.median(values)
        cpu = f"{statistics.median(CPU[name]):7.2f}" if name in CPU else f"{'':7}"
        load = f"{min(LOAD[name]):.1f}–{max(LOAD[name]):.1f}"
        print(f"{name:20} {med:8.3f} {min(values):8.3f} {max(values):8.3f} {TARGETS[name]:8.1f} {med / TARGETS[name]:7.2f} {cpu} {load:>11}")
    print("cpu s: user + system seconds of exp site and its workers (median); load: the 1-minute load average at each start")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

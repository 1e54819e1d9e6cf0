"""Benchmark: how much later a cloud run starts when SwanLab's host fails, against an offline run.

    python bench/bench_tracking.py                          # 5 starts and 3 trainer runs per case
    python bench/bench_tracking.py --starts 9 --trainer-runs 5
    python bench/bench_tracking.py --trainer-runs 0         # tracking.start() only (seconds, not minutes)

Cases: ``offline``, and ``swanlab_mode=cloud`` (with a dummy API key) against each failing host
of tests/test_tracking.py (``FAILING_HOSTS``): a refused port, a host that accepts and never
answers, an unresolvable ``.invalid`` name, an HTTP 503. Two measures, in one run, the order of
the cases rotated from repeat to repeat so that the machine's drift hits each alike:

- start: ``tracking.start()`` in this process until it returns (then ``finish()``, untimed);
- first step: a real trainer process (a tiny model) from its launch until ``metrics.jsonl``
  holds step 1, the time a person waits before the run trains. It is killed there.

Prints the medians and each case's difference against offline. The target: a failing host
costs a run at most 5 s more than offline before it trains.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext, redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from expkit import tracking  # noqa: E402
from expkit.names import METRICS_FILE  # noqa: E402
from tests.test_tracking import FAILING_HOSTS, tiny_trainer_run  # noqa: E402

TARGET_S = 5.0
CASES = ("offline", *sorted(FAILING_HOSTS))


def time_start(case: str, url: str | None, scratch: Path) -> float:
    """Seconds ``tracking.start()`` takes for ``case``."""
    os.environ.pop("SWANLAB_API_HOST", None)
    if url is not None:
        os.environ["SWANLAB_API_HOST"] = url
    with redirect_stdout(io.StringIO()):  # SwanLab's greeting and goodbye, a dozen lines a run
        t0 = time.perf_counter()
        tracker = tracking.start(scratch, mode="offline" if case == "offline" else "cloud", name=case,
                                 warn=lambda _: None)
        seconds = time.perf_counter() - t0
        tracker.finish()
    if case != "offline":
        assert tracker.mode == "offline" and tracker.reason, tracker.describe()  # it did fall back
    return seconds


def time_first_step(case: str, url: str | None, scratch: Path) -> float:
    """Seconds from launching a trainer process for ``case`` until its metrics.jsonl holds step 1."""
    cmd, env = tiny_trainer_run(scratch, "offline" if case == "offline" else "cloud", api_host=url)
    metrics = scratch / "run" / METRICS_FILE
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not any(row.get("step") == 1 for row in tracking.read_metrics(metrics)):
            if proc.poll() is not None:
                raise SystemExit(f"{case}: the trainer exited with {proc.returncode} before step 1:\n"
                                 f"{proc.stderr.read()[-2000:]}")
            time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGKILL)  # what it does after step 1 is not measured
        proc.communicate()


def measure(what: Callable[[str, str | None, Path], float], repeats: int,
            hosts: dict[str, str | None]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for r in range(repeats):
        order = CASES[r % len(CASES):] + CASES[:r % len(CASES)]
        for case in order:
            with tempfile.TemporaryDirectory(prefix=f"bench-tracking-{case}-") as scratch:
                times[case].append(what(case, hosts[case], Path(scratch)))
    return times


def report(title: str, times: dict[str, list[float]]) -> float:
    """Print medians and the difference against offline; return the largest difference."""
    offline = statistics.median(times["offline"])
    print(f"\n{title}, median of {len(times['offline'])} (s)")
    print(f"  {'case':<14}{'median':>8}{'vs offline':>12}   all")
    for case in CASES:
        median = statistics.median(times[case])
        shown = "" if case == "offline" else f"{median - offline:+.2f}"
        print(f"  {case:<14}{median:>8.2f}{shown:>12}   {', '.join(f'{t:.2f}' for t in times[case])}")
    return max(statistics.median(times[case]) - offline for case in CASES if case != "offline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="tracking.start() calls per case")
    parser.add_argument("--trainer-runs", type=int, default=3, help="trainer processes per case (0: none)")
    args = parser.parse_args()

    # SwanLab's state (saved login, settings) in a scratch home; a dummy key, never sent to a real host
    home = tempfile.TemporaryDirectory(prefix="bench-tracking-home-")
    for var in [v for v in os.environ if v.startswith("SWANLAB_")]:
        del os.environ[var]
    os.environ.update(SWANLAB_ROOT=home.name, SWANLAB_API_KEY="k" * 21)
    print(f"probe deadline {tracking.PROBE_TIMEOUT_S:g} s, cloud start deadline {tracking.CLOUD_START_TIMEOUT_S:g} s, "
          f"load {os.getloadavg()[0]:.2f}")

    with ExitStack() as stack:
        hosts = {case: stack.enter_context(FAILING_HOSTS[case][0]() if case != "offline" else nullcontext())
                 for case in CASES}
        with tempfile.TemporaryDirectory() as warm:  # the first start pays for importing swanlab
            time_start("offline", None, Path(warm))
        worst = report("tracking.start() in process", measure(time_start, args.starts, hosts))
        if args.trainer_runs:
            worst = report("trainer process, launch to step 1", measure(time_first_step, args.trainer_runs, hosts))
    verdict = "met" if worst <= TARGET_S else "NOT met"
    print(f"\ntarget: a failing host costs <= {TARGET_S:g} s over offline before the run trains: {verdict} "
          f"(worst {worst:+.2f} s)")
    home.cleanup()


if __name__ == "__main__":
    main()

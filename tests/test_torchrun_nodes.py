"""Multi-node torchrun without Slurm, the per-node form: `exp run V --backend torchrun --nnodes 2
--node-rank R --master-addr H` on each node. Here two node processes on this machine share one
workspace (CPU, gloo, a tiny model): node 0 begins the record, node 1 joins without touching it,
both logs are kept."""

from __future__ import annotations

import json
import socket
import subprocess

from conftest import EXP
from test_runner import gitws, make, record  # noqa: F401  (gitws is a fixture)


def free_port() -> int:
    with socket.socket() as s:  # the test's own choice; the script never does this
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_one_record_both_logs(gitws):
    make(gitws, steps=10)
    port = str(free_port())
    common = ["run", "0.1.0", "--backend", "torchrun", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    # node 1 first: it waits for node 0 to begin the record, and is not refused as "already running"
    node1 = subprocess.Popen([*EXP, *common, "--node-rank", "1"], cwd=gitws.root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    node0 = subprocess.Popen([*EXP, *common, "--node-rank", "0"], cwd=gitws.root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    out0, _ = node0.communicate(timeout=900)
    out1, _ = node1.communicate(timeout=900)
    assert node0.returncode == 0, out0
    assert node1.returncode == 0, out1
    assert "joined    0.1.0 as node 1 of 2" in out1 and "the record is node 0's" in out1

    rec = record(gitws)
    run = rec.meta["run"]
    assert rec.status == "analyzed" and run["status"] == "finished", run
    assert run["processes"] == 2 and run["final"]["steps"] == 10
    out = gitws.out_dir("0.1.0")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2  # 2 nodes x 1 process
    log0, log1 = (out / "run.log").read_text(), (out / "run.node1.log").read_text()
    assert "--nnodes 2 --node-rank 0" in log0 and "--nnodes 2 --node-rank 1" in log1
    assert "joining 0.1.0 at 127.0.0.1:" + port in log1
    # the record's script is node 0's; node 1's lies beside its log
    assert "--node-rank 0" in gitws.run_script_path("0.1.0").read_text()
    assert (out / "run.node1.sh").exists()
    assert not list(gitws.out_root.glob("experiment_0.1.0.previous-*"))  # nothing archived: one output dir

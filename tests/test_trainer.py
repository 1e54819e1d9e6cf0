"""model.train_pretrain for real, at a tiny shape (hidden 64, 2 layers, seq 64) on CPU.

In-process ``train()`` where a process boundary is not the point; real subprocesses for
SIGKILL, SIGTERM and torchrun, which are few because each one pays for importing torch.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from expkit import tracking
from expkit.config import TrainConfig
from model import train_pretrain as tp

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_seq_len=64,
    batch_size=8, warmup_steps=5, log_interval=1, eval_interval=10, save_interval=10, eval_batches=2,
    sample_max_new_tokens=6, knowledge_num=1024, swanlab_mode="disabled",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model is as fast on one thread, and one thread is not slowed down by whatever
    else runs on the machine (two threads on a busy two-core box can be ten times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_outside_tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab_home"))
    for var in ("SWANLAB_MODE", "SWANLAB_API_KEY", "SWANLAB_API_HOST"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, str]:
    """A slice of the embedded corpus: the same text, a fraction of the tokenizing time per process."""
    root = tmp_path_factory.mktemp("corpus")
    paths = {}
    for kind, n in (("train", 1500), ("val", 100)):
        with gzip.open(REPO / "dataset" / f"pretrain_{kind}.jsonl.gz", "rt", encoding="utf-8") as src:
            lines = [next(src) for _ in range(n)]
        path = root / f"{kind}.jsonl"
        path.write_text("".join(lines), encoding="utf-8")
        paths[kind] = str(path)
    return {"data_path": paths["train"], "val_data_path": paths["val"]}


def tiny(corpus: dict[str, str] | None = None, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **(corpus or {}), **overrides})


def write_config(cfg: TrainConfig, path: Path) -> Path:
    path.write_text(json.dumps(cfg.model_dump()), encoding="utf-8")
    return path


def trainer_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "model.train_pretrain", "--config", str(config), "--out-dir", str(out), *extra]


def child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWANLAB_")}
    env["SWANLAB_ROOT"] = str(tmp_path / "swanlab_home")
    env["OMP_NUM_THREADS"] = "1"  # see _one_thread
    return env


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in tracking.read_metrics(out / "metrics.jsonl")}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"trainer exited early with {proc.returncode}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the trainer")
        time.sleep(0.02)


# -- one real run, every output ---------------------------------------------------------------


def test_loss_falls_and_every_output_is_written(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(max_steps=30, swanlab_mode="offline", keep_top_k=1)
    result = tp.train(cfg, out, name="0.1.0", description="tiny", tags=["test"])
    assert result.exit_code == tp.EXIT_OK, result.error

    rows = tracking.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "elapsed_s"):
        assert all(isinstance(r[key], (int, float)) for r in rows), key
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30]
    first, last5 = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
    assert first > 8.0 and last5 < first - 1.0, (first, last5)  # starts near ln(6400) = 8.76, then learns
    assert rows[4]["lr"] == pytest.approx(cfg.learning_rate)  # end of warmup
    assert rows[-1]["lr"] < rows[5]["lr"]  # cosine decay

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 30
    assert summary["final_loss"] == rows[-1]["loss"]
    assert summary["best_val_loss"] == min(r["val_loss"] for r in rows if "val_loss" in r)
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    assert summary["tokens_seen"] == 30 * cfg.batch_size * cfg.max_seq_len
    assert summary["params"] > 0 and summary["tokens_per_s"] > 0 and summary["wall_s"] > 0
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    beat = json.loads((out / "heartbeat").read_text())
    assert beat["step"] == 30 and time.time() - beat["unix"] < 120 and beat["time"].startswith("20")
    # the load the run ran under, sampled with the heartbeat and summarised for the verdicts
    assert beat["load"]["cpus"] >= 1 and 0.0 <= beat["load"]["others_cpu"] <= 1.0 and beat["load"]["loadavg"] >= 0
    load = summary["load"]
    assert load["samples"] >= 1 and 0.0 <= load["others_cpu_mean"] <= load["others_cpu_max"] <= 1.0
    assert load["loadavg_mean"] >= 0 and load["gpu_others"] is None  # CPU run: no GPU to share
    log = (out / "train.log").read_text()
    assert "params:" in log and "step 30/30" in log

    samples = json.loads((out / "samples.json").read_text())["samples"]
    assert {s["prompt"] for s in samples} >= {"床前明月光", "人生", "The meaning of life"}
    assert {s["mode"] for s in samples} == {"greedy", "sample"}
    assert all(s["text"].startswith(s["prompt"]) and s["new_tokens"] > 0 for s in samples)

    # keep_top_k=1: the best checkpoint by val loss, plus the last
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    kept = {int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.pt")}
    assert kept == {min(val, key=val.get), 30}

    # SwanLab's offline files hold exactly the logged steps
    stored = tracking.read_run(out)
    assert stored["loss"] == [(r["step"], r["loss"]) for r in rows]
    assert stored["val_loss"] == sorted(val.items())
    meta = tracking.read_run_meta(out)
    assert (meta["name"], meta["description"], meta["tags"], meta["state"]) == ("0.1.0", "tiny", ["test"], "finished")
    assert meta["config"]["hidden_size"] == 64

    # final/ loads through the Auto classes and computes what the trained model computes
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import model  # noqa: F401  registers the Auto classes

    loaded = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    trained = result.model.eval()
    ids = AutoTokenizer.from_pretrained(out / "final")("床前明月光，疑是地上霜。", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, trained(ids).logits, rtol=0, atol=0)


# -- kill, interrupt, resume ------------------------------------------------------------------


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path, corpus):
    cfg = tiny(corpus, max_steps=40, batch_size=4, save_interval=10, eval_interval=20, swanlab_mode="offline")
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    proc = subprocess.Popen(trainer_cmd(write_config(cfg, tmp_path / "c.json"), killed), cwd=REPO,
                            env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: any((killed / "checkpoints").glob("step_*.pt")), proc)
    proc.kill()
    proc.wait()
    assert json.loads((killed / "status.json").read_text())["status"] == "running"  # killed mid-run
    assert 10 <= max(losses(killed)) < 40

    resumed = tp.train(cfg, killed, resume=True)
    assert resumed.exit_code == tp.EXIT_OK, resumed.error
    assert "resume: continuing from checkpoint step 10" in (killed / "train.log").read_text()
    assert tp.train(cfg, reference).exit_code == tp.EXIT_OK

    got, want = tracking.read_metrics(killed / "metrics.jsonl"), tracking.read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 41))  # no step twice
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got, want)) <= 1e-6
    assert resumed.summary["param_sha256"] == json.loads((reference / "summary.json").read_text())["param_sha256"]
    # the newest SwanLab run mirrors the whole file, replayed history included
    assert tracking.read_run(killed)["loss"] == [(r["step"], r["loss"]) for r in got]


def test_sigterm_saves_a_checkpoint_and_reports_interrupted(tmp_path, corpus):
    cfg = tiny(corpus, max_steps=2000, save_interval=1000)
    out = tmp_path / "run"
    proc = subprocess.Popen(trainer_cmd(write_config(cfg, tmp_path / "c.json"), out), cwd=REPO,
                            env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(tracking.read_metrics(out / "metrics.jsonl")) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    # the echo `exp stop` causes: it signals the script's process group and the script forwards
    # the signal to the trainer too. The same request again, not "give up now".
    time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == tp.EXIT_SIGTERM, output[-2000:]

    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["exit_code"] == 143
    assert (out / "checkpoints" / f"step_{status['step']:08d}.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert "SIGTERM: saved checkpoint" in output


def test_truncated_checkpoint_is_skipped_with_a_warning(tmp_path, corpus, capsys):
    # log_interval 3 and save_interval 5: the checkpoint falls inside a loss-averaging window
    cfg = tiny(corpus, max_steps=10, batch_size=4, warmup_steps=2, save_interval=5, eval_interval=5, keep_top_k=10,
               log_interval=3)
    out = tmp_path / "run"
    assert tp.train(cfg, out).exit_code == tp.EXIT_OK
    original = losses(out)
    newest = out / "checkpoints" / "step_00000010.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    capsys.readouterr()
    assert tp.train(cfg, out, resume=True).exit_code == tp.EXIT_OK
    err = capsys.readouterr().err
    assert "skipping checkpoint step_00000010.pt" in err
    assert "resume: continuing from checkpoint step 5" in (out / "train.log").read_text()
    assert (out / "checkpoints" / "step_00000010.pt.corrupt").exists()
    assert losses(out) == original  # steps 6..10 computed again, identically


def test_keep_top_k_keeps_the_best_by_val_loss_plus_the_last(tmp_path):
    ckpts = tp.Checkpoints(tmp_path, keep_top_k=2, log=tp.RunLog(None))
    for step, val in ((10, 5.0), (20, 3.0), (30, 4.0), (40, 6.0), (50, 7.0), (60, None)):
        ckpts.save({"format": tp.CHECKPOINT_FORMAT, "step": step}, step, val)
    assert [s for s, _ in ckpts.listed()] == [20, 30, 60]
    assert ckpts.load_latest()["step"] == 60


# -- failures ---------------------------------------------------------------------------------


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    # a real divergence: the largest learning rate the config allows, no clipping, no warmup
    cfg = tiny(corpus, max_steps=200, learning_rate=1.0, grad_clip=0.0, warmup_steps=0, beta2=0.0,
               save_interval=2, eval_interval=1000, log_interval=10)
    out = tmp_path / "run"
    result = tp.train(cfg, out)
    assert result.exit_code == tp.EXIT_DIVERGED

    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["exit_code"] == tp.EXIT_DIVERGED
    bad = status["step"]
    assert f"NaN/Inf at step {bad}" in status["error"]
    kept = [int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.pt")]
    assert kept and max(kept) < bad
    state = torch.load(out / "checkpoints" / f"step_{max(kept):08d}.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(math.isfinite(r["loss"]) for r in tracking.read_metrics(out / "metrics.jsonl"))


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    assert tp.main(["--config", str(tmp_path / "missing.json"), "--out-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config file not found" in err

    config = write_config(tiny(data_path=str(tmp_path / "nope.jsonl")), tmp_path / "c.json")
    assert tp.main(["--config", str(config), "--out-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err
    status = json.loads((tmp_path / "b" / "status.json").read_text())
    assert status["status"] == "failed" and "nope.jsonl" in status["error"]


def test_a_fresh_run_refuses_a_directory_with_checkpoints(tmp_path, corpus):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_00000010.pt").write_bytes(b"x")
    (out / "status.json").write_text('{"status": "finished"}')
    result = tp.train(tiny(corpus, max_steps=2, warmup_steps=1), out)
    assert result.exit_code == tp.EXIT_BAD_INPUT and "--resume" in result.error
    assert json.loads((out / "status.json").read_text())["status"] == "finished"  # another run's: untouched


# -- model types and DDP ----------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["model_original", "model", "model_moe"])
def test_each_model_type_trains_and_generates(tmp_path, corpus, model_type):
    out = tmp_path / model_type
    cfg = tiny(corpus, model_type=model_type, max_steps=3, batch_size=4, warmup_steps=1, eval_interval=3,
               save_interval=3, sample_max_new_tokens=3)
    result = tp.train(cfg, out)
    assert result.exit_code == tp.EXIT_OK, result.error
    assert all(math.isfinite(v) for v in losses(out).values())
    samples = json.loads((out / "samples.json").read_text())["samples"]
    assert samples and all(s["text"].strip() for s in samples)
    assert any(s["completion"] for s in samples)


def test_ddp_on_two_cpu_processes_keeps_parameters_equal(tmp_path, corpus):
    cfg = tiny(corpus, max_steps=4, warmup_steps=1, accumulation_steps=2, batch_size=4, eval_interval=2,
               save_interval=2, sample_max_new_tokens=3)
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "model.train_pretrain",
           "--config", str(write_config(cfg, tmp_path / "c.json")), "--out-dir", str(out)]
    env = child_env(tmp_path)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    # each rank hashed its own parameters after the last step; rank 0 gathered the digests
    digests = summary["param_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1] and summary["ddp_params_equal"] is True
    assert summary["tokens_seen"] == 4 * 2 * cfg.accumulation_steps * cfg.batch_size * cfg.max_seq_len
    assert "(equal)" in (out / "train.log").read_text()


def test_resume_on_a_prepared_directory_is_exact_and_does_not_tokenize_again(tmp_path, corpus, monkeypatch):
    from model.prepare import prepare

    data = prepare(corpus["data_path"], tmp_path / "train.tokens", val_fraction=0.05)["out"]
    cfg = tiny({"data_path": data, "val_data_path": ""}, max_steps=10, batch_size=4, warmup_steps=2,
               save_interval=5, eval_interval=5, keep_top_k=10)
    out = tmp_path / "run"
    assert tp.train(cfg, out).exit_code == tp.EXIT_OK
    original, sha = losses(out), json.loads((out / "summary.json").read_text())["param_sha256"]
    for path in (out / "checkpoints").glob("step_00000010.*"):
        path.unlink()
    tp._CORPUS_CACHE.clear()  # as a new process would: the shards are mapped again

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("model.prepare._build", no_tokenizing)
    resumed = tp.train(cfg, out, resume=True)
    assert resumed.exit_code == tp.EXIT_OK, resumed.error
    assert "resume: continuing from checkpoint step 5" in (out / "train.log").read_text()
    assert losses(out) == original  # steps 6..10 again, bitwise, the data position included
    assert resumed.summary["param_sha256"] == sha


# -- throughput, the lr schedule, compile ------------------------------------------------------


def test_throughput_excludes_the_evaluation_and_checkpoint_pauses_the_trainer_records(tmp_path, corpus):
    # an evaluation and a checkpoint every other step: most of the wall time is pauses
    cfg = tiny(corpus, max_steps=12, batch_size=4, eval_interval=2, save_interval=2, eval_batches=4, keep_top_k=1)
    out = tmp_path / "run"
    result = tp.train(cfg, out)
    assert result.exit_code == tp.EXIT_OK, result.error
    rows = tracking.read_metrics(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    tokens_per_step = cfg.batch_size * cfg.max_seq_len

    # each line: the tokens since the previous line over the training seconds since then
    prev = {"tokens_seen": 0, "train_s": 0.0, "paused_s": 0.0, "step": 0}
    for r in rows:
        assert r["train_s"] > prev["train_s"] and r["paused_s"] >= prev["paused_s"]
        span = r["train_s"] - prev["train_s"]
        expected = (r["tokens_seen"] - prev["tokens_seen"]) / span
        # within the rounding of the file: tokens_per_s to 0.1, train_s to 1e-6 s at each end
        assert r["tokens_per_s"] == pytest.approx(expected, abs=0.051 + expected * 2.1e-6 / span)
        # a pause is recorded exactly where the previous step evaluated and saved
        paused_between = r["paused_s"] > prev["paused_s"]
        assert paused_between == (prev["step"] > 0 and prev["step"] % 2 == 0), (prev, r)
        prev = r
    # summary.json: the same definition over the whole run, on the same clock as the last line
    assert summary["train_s"] == rows[-1]["train_s"]
    assert summary["tokens_seen"] == 12 * tokens_per_step
    expected = summary["tokens_seen"] / summary["train_s"]
    assert summary["tokens_per_s"] == pytest.approx(expected, abs=0.051 + expected * 1.1e-6 / summary["train_s"])
    assert summary["paused_s"] > rows[-1]["paused_s"] > 0  # the last step's evaluation and checkpoint too
    assert summary["wall_s"] >= summary["train_s"] + summary["paused_s"]
    # so the figure is above tokens over training-plus-pauses time, by exactly the pauses
    assert summary["tokens_per_s"] > summary["tokens_seen"] / (summary["train_s"] + summary["paused_s"])
    assert "mfu" not in summary  # CPU: no peak FLOPs to divide by


def test_the_lr_comes_from_the_step_and_an_old_checkpoint_with_scheduler_state_resumes_exactly(tmp_path, corpus):
    cfg = tiny(corpus, max_steps=10, batch_size=4, warmup_steps=3, save_interval=5, eval_interval=5, keep_top_k=10)
    out = tmp_path / "run"
    assert tp.train(cfg, out).exit_code == tp.EXIT_OK
    original, sha = losses(out), json.loads((out / "summary.json").read_text())["param_sha256"]
    schedule = tp.Schedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    rows = tracking.read_metrics(out / "metrics.jsonl")
    assert [r["lr"] for r in rows] == [cfg.learning_rate * schedule(r["step"] - 1) for r in rows]

    ckpt_path = out / "checkpoints" / "step_00000005.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert "scheduler" not in ckpt and "_orig_mod" not in "".join(ckpt["model"])
    # a checkpoint of the earlier trainer carried LambdaLR's state; it must still resume exactly
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=cfg.learning_rate)
    old_sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for _ in range(5):
        opt.step()
        old_sched.step()
    ckpt["scheduler"] = old_sched.state_dict()
    for key in ("train_s", "paused_s"):
        del ckpt[key]
    torch.save(ckpt, ckpt_path)
    for path in (out / "checkpoints").glob("step_00000010.*"):
        path.unlink()
    resumed = tp.train(cfg, out, resume=True)
    assert resumed.exit_code == tp.EXIT_OK, resumed.error
    assert losses(out) == original
    assert resumed.summary["param_sha256"] == sha
    train_s = [r["train_s"] for r in tracking.read_metrics(out / "metrics.jsonl")]
    assert train_s == sorted(train_s)  # cumulative over the resume (the old checkpoint's wall time stands in)


def test_compile_trains_the_same_and_its_checkpoints_stay_plain_and_resume_exactly(tmp_path, corpus, monkeypatch):
    # the eager backend runs dynamo's graph capture without a C++ compiler (inductor is for GPUs here)
    monkeypatch.setattr(tp, "COMPILE_OPTIONS", {"backend": "eager"})
    base = dict(max_steps=6, batch_size=4, warmup_steps=2, save_interval=3, eval_interval=3, keep_top_k=10)
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    assert tp.train(tiny(corpus, **base), plain).exit_code == tp.EXIT_OK
    cfg = tiny(corpus, **base, compile=True)
    assert tp.train(cfg, compiled).exit_code == tp.EXIT_OK
    # the same training; not bitwise: on CPU the plain model computes the loss in chunks, the compiled one whole
    first = losses(compiled)
    assert first == pytest.approx(losses(plain), rel=1e-5)
    ckpt = torch.load(compiled / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # the uncompiled module's state dict
    sha = json.loads((compiled / "summary.json").read_text())["param_sha256"]
    for path in (compiled / "checkpoints").glob("step_00000006.*"):
        path.unlink()
    resumed = tp.train(cfg, compiled, resume=True)
    assert resumed.exit_code == tp.EXIT_OK, resumed.error
    assert losses(compiled) == first and resumed.summary["param_sha256"] == sha  # the resume is exact


def test_peak_memory_reads_ru_maxrss_in_the_platform_unit(monkeypatch):
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    monkeypatch.setattr(tp.sys, "platform", "linux")
    assert tp.peak_memory_mb(torch.device("cpu")) == pytest.approx(rss / 1024, rel=0.05)  # KiB
    monkeypatch.setattr(tp.sys, "platform", "darwin")
    assert tp.peak_memory_mb(torch.device("cpu")) == pytest.approx(rss / 2**20, rel=0.05)  # bytes


class _QuietRun:
    """A SwanLab run that records what it is given."""

    dir = None

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.state: str | None = None

    def log(self, data, step=None):
        self.steps.append(step)

    def finish(self, state="success", error=None):
        self.state = state


def test_swanlab_starts_beside_the_first_step_which_waits_for_it(tmp_path, corpus, monkeypatch):
    swan = _QuietRun()
    stepping = threading.Event()  # set when the first step's batch goes to the device
    seen: dict[str, object] = {}

    def init(*args, **kwargs):
        seen["thread"] = threading.current_thread().name
        # a start in the main thread before the loop would wait here in vain: the step never comes
        seen["beside_step_1"] = stepping.wait(timeout=60)
        seen["done"] = True
        return swan

    real_to_device, real_write = tp.to_device, tracking.MetricsFile.write

    def to_device(t, device):
        stepping.set()
        return real_to_device(t, device)

    def write(self, row):
        seen.setdefault("line_1_after_start", seen.get("done", False))
        return real_write(self, row)

    monkeypatch.setattr(tracking, "_init", init)
    monkeypatch.setattr(tp, "to_device", to_device)
    monkeypatch.setattr(tracking.MetricsFile, "write", write)
    out = tmp_path / "run"
    result = tp.train(tiny(corpus, max_steps=6, eval_interval=3, save_interval=6, swanlab_mode="offline"), out)
    assert result.exit_code == tp.EXIT_OK, result.error
    assert seen["thread"] != threading.main_thread().name and seen["beside_step_1"] is True
    assert seen["line_1_after_start"] is True  # step 1's line waited for the tracker
    assert swan.steps == [1, 2, 3, 4, 5, 6] and swan.state == "success"  # every line, once, in order
    want = {"requested": "offline", "mode": "offline", "reason": None}
    assert json.loads((out / "status.json").read_text())["tracking"] == want
    assert json.loads((out / "summary.json").read_text())["tracking"] == want
    assert "tracking offline" in (out / "train.log").read_text()


def test_a_swanlab_start_that_fails_in_its_thread_leaves_training_untouched(tmp_path, corpus, monkeypatch):
    def init(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(tracking, "_init", init)
    out = tmp_path / "run"
    result = tp.train(tiny(corpus, max_steps=6, eval_interval=3, save_interval=6, swanlab_mode="offline"), out)
    assert result.exit_code == tp.EXIT_OK, result.error
    assert [r["step"] for r in tracking.read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    got = json.loads((out / "status.json").read_text())["tracking"]
    assert (got["requested"], got["mode"]) == ("offline", "disabled") and "no space left" in got["reason"]
    warnings = [line for line in (out / "train.log").read_text().splitlines() if "SwanLab start failed" in line]
    assert len(warnings) == 1 and "tracking disabled" in warnings[0]


def test_swanlab_gets_the_metric_lines_in_batches_at_the_pauses_and_exactly_as_logged(tmp_path, corpus, monkeypatch):
    cfg = tiny(corpus, max_steps=12, batch_size=4, log_interval=1, eval_interval=4, save_interval=6,
               swanlab_mode="offline")
    out = tmp_path / "run"
    handed: list[tuple[int, int]] = []  # (step of the line, lines in metrics.jsonl when SwanLab got it)
    real_log = tracking.Tracker.log

    def spy(self, row, step):
        handed.append((step, len((out / "metrics.jsonl").read_text().splitlines())))
        return real_log(self, row, step)

    monkeypatch.setattr(tracking.Tracker, "log", spy)
    result = tp.train(cfg, out)
    assert result.exit_code == tp.EXIT_OK, result.error
    rows = tracking.read_metrics(out / "metrics.jsonl")
    # every line once, in order, and only at a pause: after an evaluation (4, 8, 12) or checkpoint (6)
    assert [step for step, _ in handed] == list(range(1, 13))
    assert sorted({lines for _, lines in handed}) == [4, 6, 8, 12]
    assert all(lines >= step for step, lines in handed)
    # SwanLab's offline files, read back, hold exactly what metrics.jsonl holds
    stored = tracking.read_run(out)
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "train_s"):
        assert stored[key] == [(r["step"], r[key]) for r in rows], key
    assert stored["val_loss"] == [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]

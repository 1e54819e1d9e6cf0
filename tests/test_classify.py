"""Classification fine-tuning (model.train_classify): the labelled corpora, the trainer's outputs,
each config switch, resume after SIGTERM, and the model through AutoModelForSequenceClassification.

Real tiny trainings on CPU: one trainer subprocess (the command line, on a user's JSONL, from a
pretrained model) checked from many sides, the rest in-process runs of a few steps.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import expkit.workspace as workspace
from expkit.errors import ConfigError, DataError
from model import train_classify as tc
from model.classify import (
    EMA,
    MiniMindForSequenceClassification,
    augment_ids,
    balanced_class_weights,
    classification_loss,
    collate,
    encode_texts,
    fgm_perturb,
    load_classify_data,
    param_groups,
)
from expkit import config as cfg_mod
from expkit.config import ClassifyConfig
from model.classify_report import scores
from model.modeling import MiniMindConfig, MiniMindForCausalLM
from model.tokenizer import EOS_ID, load_tokenizer
from model.train_pretrain import Schedule, save_final

ROOT = Path(__file__).resolve().parent.parent
FORTUNES = Path("/usr/share/games/fortunes")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 64}
WORDS = {
    "animal": "cat dog horse cow sheep bird fish mouse tiger lion".split(),
    "vehicle": "car bus train truck bike plane ship boat tram van".split(),
    "food": "bread rice apple cheese soup cake milk egg meat tea".split(),
}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _gz_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A user's labelled JSONL: three topics told apart by their words, imbalanced 50/40/30."""
    rng = random.Random(7)
    rows = [{"text": " ".join(rng.choice(WORDS[label]) for _ in range(rng.randint(4, 9))), "label": label}
            for label, n in (("animal", 50), ("vehicle", 40), ("food", 30)) for _ in range(n)]
    rng.shuffle(rows)
    return _jsonl(tmp_path_factory.mktemp("toy") / "topics.jsonl", rows)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny MiniMind LM saved as a pretraining run saves its final/ (save_final)."""
    torch.manual_seed(0)
    shape = {k: v for k, v in TINY.items()}
    net = MiniMindForCausalLM(MiniMindConfig(**shape, max_position_embeddings=64))
    out = tmp_path_factory.mktemp("pre") / "final"
    save_final(net, load_tokenizer("embedded"), out)
    return out


def quick(out: Path, toy: Path, **overrides) -> tc.TrainResult:
    """An in-process run of a few steps on the toy data from scratch."""
    cfg = {**TINY, "data_path": str(toy), "max_steps": 4, "batch_size": 16, "max_seq_len": 32, "eval_interval": 2,
           "log_interval": 1, "device": "cpu", "learning_rate": 3e-3, "warmup_steps": 1, "head_dropout": 0.0,
           **overrides}
    return tc.train(ClassifyConfig(**cfg), out)


def _params(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# -- the labelled corpora ----------------------------------------------------------------------


def test_classification_val_and_test_are_never_pretrained_on():
    pretrain = {r["text"] for r in _gz_rows(workspace.embedded_train_path())}
    for lang in ("en", "zh"):
        splits = {s: _gz_rows(workspace.dataset_dir() / f"classify_{lang}_{s}.jsonl.gz") for s in ("train", "val", "test")}
        texts = {s: {r["text"] for r in rows} for s, rows in splits.items()}
        assert not texts["val"] & pretrain and not texts["test"] & pretrain, lang
        assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]
        assert all(len(t) == len(splits[s]) for s, t in texts.items()), "duplicate texts within a split"
        meta = json.loads((workspace.dataset_dir() / f"classify_{lang}_labels.json").read_text(encoding="utf-8"))
        for s, rows in splits.items():
            assert Counter(r["label"] for r in rows) == Counter({k: v for k, v in meta["counts"][s].items()})
            assert set(meta["labels"]) == {r["label"] for r in rows}
    en = json.loads((workspace.dataset_dir() / "classify_en_labels.json").read_text(encoding="utf-8"))
    zh = json.loads((workspace.dataset_dir() / "classify_zh_labels.json").read_text(encoding="utf-8"))
    assert 8 <= len(en["labels"]) <= 15
    assert zh["labels"] == ["唐诗", "宋词", "其他"]
    readme = (workspace.dataset_dir() / "README.md").read_text(encoding="utf-8")
    assert "classify_en_" in readme and "tokenizer" in readme and "never" in readme


def test_classification_corpora_match_a_rebuild_from_the_sources():
    """Determinism in process (tests/test_data.py rebuilds everything twice through the script)."""
    if not (FORTUNES / "tang300").is_file() or not (FORTUNES / "cookie").is_file():
        pytest.skip("fortune sources not installed (apt-get install fortunes-zh fortunes)")
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_corpus

    digests = dict(reversed(line.split(maxsplit=1)) for line in
                   (workspace.dataset_dir() / "sources.sha256").read_text().splitlines())
    if any(hashlib.sha256((FORTUNES / n).read_bytes()).hexdigest() != d for n, d in digests.items()):
        pytest.skip("installed fortune files differ from the ones the shipped corpus was built from")
    labelled = {lang: build_corpus.split_labelled(pairs, build_corpus.SEED)
                for lang, pairs in build_corpus.collect_labelled(FORTUNES).items()}
    for lang in ("en", "zh"):
        for split in ("train", "val", "test"):
            shipped = (workspace.dataset_dir() / build_corpus.classify_name(lang, split)).read_bytes()
            assert gzip.decompress(build_corpus.labelled_jsonl_gz_bytes(labelled[lang][split])) == gzip.decompress(shipped)


def test_embedded_corpora_and_a_users_file_load(toy, tmp_path):
    zh = load_classify_data(ClassifyConfig(data_path="embedded-zh"))
    assert zh.labels == ["唐诗", "宋词", "其他"] and len(zh.test) > 0
    user = load_classify_data(ClassifyConfig(data_path=str(toy)))
    assert user.labels == ["animal", "food", "vehicle"]
    n = {s: Counter(y for _, y in getattr(user, s)) for s in ("train", "val", "test")}
    assert sum(sum(c.values()) for c in n.values()) == 120  # every line in exactly one split
    assert all(n["val"][k] >= 1 and n["test"][k] >= 1 for k in range(3))  # stratified
    assert {t for t, _ in user.test}.isdisjoint({t for t, _ in user.train})
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "ok", "label": "a"}, {"text": "no label"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*label"):
        load_classify_data(ClassifyConfig(data_path=str(bad)))
    numbered = _jsonl(tmp_path / "n.jsonl", [{"text": f"t{i}", "label": i % 12} for i in range(48)])
    assert load_classify_data(ClassifyConfig(data_path=str(numbered))).labels == [str(i) for i in range(12)]
    unseen = _jsonl(tmp_path / "val.jsonl", [{"text": "x", "label": "martian"}])
    with pytest.raises(DataError, match="'martian' not in the training labels"):
        load_classify_data(ClassifyConfig(data_path=str(toy), val_data_path=str(unseen)))


# -- one run through the command line, checked from every side -------------------------------


@pytest.fixture(scope="module")
def cli_run(toy, pretrained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = {"data_path": str(toy), "init_from": str(pretrained), "epochs": 3, "batch_size": 16, "max_seq_len": 32,
           "eval_interval": 3, "log_interval": 1, "keep_top_k": 2, "warmup_steps": 4, "device": "cpu", "learning_rate": 3e-3,
           "pooling": "last", "n_misclassified": 5}
    path = out.parent / "config.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "model.train_classify", "--config", str(path), "--out-dir", str(out)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_a_run_writes_the_trainer_contract(cli_run, toy):
    summary = json.loads((cli_run / "summary.json").read_text())
    status = json.loads((cli_run / "status.json").read_text())
    assert status["status"] == "finished" and status["exit_code"] == 0
    assert json.loads((cli_run / "heartbeat").read_text())["status"] == "finished"
    for key in ("test_acc", "test_macro_f1", "test_weighted_f1", "per_class", "majority_acc", "majority_macro_f1",
                "best_step", "early_stop_step", "labels"):
        assert key in summary, key
    data = load_classify_data(ClassifyConfig(data_path=str(toy)))
    assert summary["labels"] == data.labels
    # epochs decide the steps: 3 passes over the train split in full batches of 16
    assert summary["steps"] == 3 * (len(data.train) // 16) and summary["early_stop_step"] is None
    # per-class numbers add up to the test set and agree with the confusion matrix
    per = summary["per_class"]
    assert sum(c["support"] for c in per.values()) == summary["n_test"] == len(data.test)
    m = summary["confusion_matrix"]
    assert sum(m[i][i] for i in range(len(m))) / summary["n_test"] == pytest.approx(summary["test_acc"])
    assert summary["test_macro_f1"] == pytest.approx(sum(c["f1"] for c in per.values()) / len(per))
    # the majority baseline: the most frequent train label, scored on the test labels
    train_counts = Counter(y for _, y in data.train)
    majority = max(train_counts, key=lambda c: (train_counts[c], -c))
    test_y = [y for _, y in data.test]
    assert summary["majority_label"] == data.labels[majority]
    assert summary["majority_acc"] == pytest.approx(test_y.count(majority) / len(test_y))
    support = test_y.count(majority)
    f1 = 2 * (support / len(test_y)) / (support / len(test_y) + 1)
    assert summary["majority_macro_f1"] == pytest.approx(f1 / len(data.labels))
    # metrics.jsonl: a train line per step, val scores at each evaluation
    rows = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, summary["steps"] + 1))
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [s for s in range(3, summary["steps"] + 1, 3)] + (
        [summary["steps"]] if summary["steps"] % 3 else [])
    assert all({"val_acc", "val_macro_f1"} <= set(r) for r in evals)
    best = max(evals, key=lambda r: (r["val_macro_f1"], -r["step"]))
    assert summary["best_step"] == best["step"]
    # warmup then cosine: the lr rises to its peak, then falls to min_lr_ratio of it at the end
    cfg = ClassifyConfig.model_validate_json((cli_run / "config.json").read_text())
    sched = Schedule(cfg.warmup_steps, summary["steps"], cfg.min_lr_ratio)
    assert [r["lr"] for r in rows] == pytest.approx([cfg.learning_rate * sched(r["step"] - 1) for r in rows])
    peak = max(range(len(rows)), key=lambda i: rows[i]["lr"])
    assert 0 < peak < len(rows) - 1 and rows[-1]["lr"] < rows[peak]["lr"]
    # keep_top_k=2: the two best evaluations by the monitor, plus the last
    kept = sorted(int(p.stem.split("_")[1]) for p in (cli_run / "checkpoints").glob("step_*.pt"))
    top = sorted(evals, key=lambda r: (-r["val_macro_f1"], r["step"]))[:2]
    assert kept == sorted({r["step"] for r in top} | {summary["steps"]})
    # the reports
    report = (cli_run / "classification_report.txt").read_text()
    assert all(label in report for label in data.labels) and "macro avg" in report
    assert (cli_run / "plots" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = json.loads((cli_run / "samples.json").read_text())
    assert samples["n_misclassified"] == summary["n_test"] - sum(m[i][i] for i in range(len(m)))
    assert len(samples["misclassified"]) == min(5, samples["n_misclassified"])
    assert all(s["label"] != s["predicted"] for s in samples["misclassified"])


def test_final_loads_through_auto_and_reproduces_the_test_scores(cli_run, toy):
    import model  # noqa: F401  registers the Auto classes
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(cli_run / "final")
    assert isinstance(net, MiniMindForSequenceClassification) and net.pooling == "last"
    tok = AutoTokenizer.from_pretrained(cli_run / "final")
    data = load_classify_data(ClassifyConfig(data_path=str(toy)))
    ids = encode_texts([t for t, _ in data.test], tok, 32)
    x, mask = collate(ids)
    with torch.no_grad():
        pred = net.eval()(x, mask).logits.argmax(-1).tolist()
    summary = json.loads((cli_run / "summary.json").read_text())
    assert [net.config.id2label[i] for i in range(net.config.num_labels)] == summary["labels"]
    assert scores([y for _, y in data.test], pred, summary["labels"])["acc"] == pytest.approx(summary["test_acc"])


def test_a_bad_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learning_rat": 1e-3}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "model.train_classify", "--config", str(path), "--out-dir",
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: invalid config: unknown key 'learning_rat' — did you mean learning_rate")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="fgm_epsilon .* freeze_layers"):
        cfg_mod.validate({"fgm_epsilon": 1.0, "freeze_layers": 1}, ClassifyConfig)
    with pytest.raises(ConfigError, match="hidden_size set with init_from"):
        cfg_mod.validate({"init_from": "some/final", "hidden_size": 64}, ClassifyConfig)
    with pytest.raises(ConfigError, match="monitor"):
        cfg_mod.validate({"monitor": "val_f1"}, ClassifyConfig)


# -- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_does_not_change_a_texts_logits(pooling):
    torch.manual_seed(0)
    net = MiniMindForSequenceClassification(MiniMindConfig(**TINY, num_labels=3, classifier_pooling=pooling)).eval()
    short, long = [5, 6, 7, EOS_ID], [8, 9, 10, 11, 12, 13, EOS_ID]
    x, mask = collate([short, long])
    with torch.no_grad():
        batched = net(x, mask).logits
        alone = net(torch.tensor([short]), torch.ones(1, 4, dtype=torch.long)).logits
    assert torch.allclose(batched[0], alone[0], atol=1e-5)
    hidden = net.norm(net.layers[1](net.layers[0](net.embed_tokens(torch.tensor([short])), *_rope(net, 4), None, None)[0],
                                    *_rope(net, 4), None, None)[0])
    pooled = hidden[0].mean(0) if pooling == "mean" else hidden[0, -1]
    assert torch.allclose(alone[0], net.classifier(pooled), atol=1e-5)


def _rope(net, T):
    from model.modeling import rope_cos_sin

    return rope_cos_sin(torch.arange(T)[None], net.config.head_dim, net.config.rope_theta)


def test_init_from_copies_the_pretrained_backbone(pretrained):
    lm = MiniMindForCausalLM.from_pretrained(pretrained)
    net = MiniMindForSequenceClassification.from_causal_lm(pretrained, num_labels=4)
    lm_state = lm.state_dict()
    for name, tensor in net.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(tensor, lm_state[name]), name
    assert net.classifier.out_features == 4
    with pytest.raises(ConfigError, match="no config.json"):
        MiniMindForSequenceClassification.from_causal_lm(pretrained.parent)


def test_a_missing_init_from_is_bad_input(toy, tmp_path):
    result = quick(tmp_path / "out", toy, init_from=str(tmp_path / "nowhere"), **{k: None for k in TINY})
    assert result.exit_code == 2 and result.error.startswith(f"init_from={tmp_path / 'nowhere'}: no model there")
    assert json.loads((tmp_path / "out" / "status.json").read_text())["status"] == "failed"


# -- the switches, each against the same run without it -----------------------------------------


@pytest.fixture(scope="module")
def plain(toy, tmp_path_factory) -> tc.TrainResult:
    result = quick(tmp_path_factory.mktemp("plain") / "out", toy)
    assert result.exit_code == 0
    return result


def test_fgm_perturbs_the_embeddings_along_the_gradient_and_restores_them(plain, toy, tmp_path):
    torch.manual_seed(0)
    net = MiniMindForSequenceClassification(MiniMindConfig(**TINY, num_labels=3))
    x, mask = collate([[5, 6, 7, 0], [9, 10, 0]])
    y = torch.tensor([0, 2])
    clean = classification_loss(net(x, mask).logits, y)
    clean.backward()
    before = net.embed_tokens.weight.detach().clone()
    r = fgm_perturb(net.embed_tokens, 0.5)
    assert float(r.norm()) == pytest.approx(0.5, rel=1e-5)
    with torch.no_grad():
        adversarial = classification_loss(net(x, mask).logits, y)
    assert float(adversarial) > float(clean.detach())  # a step up the loss
    net.embed_tokens.weight.data.sub_(r)
    assert torch.allclose(net.embed_tokens.weight, before)
    with_fgm = quick(tmp_path / "fgm", toy, fgm_epsilon=1.0)
    assert with_fgm.exit_code == 0 and with_fgm.summary["param_sha256"] != plain.summary["param_sha256"]


def test_ema_weights_are_evaluated_and_saved(toy, tmp_path):
    result = quick(tmp_path / "ema", toy, ema_decay=0.5)
    assert result.exit_code == 0
    best = result.summary["best_step"]
    ckpt = torch.load(tmp_path / "ema" / "checkpoints" / f"step_{best:08d}.pt", weights_only=True)
    saved = _params(tmp_path / "ema" / "final")
    for name, shadow in ckpt["ema"].items():
        assert torch.equal(saved[name], shadow) and torch.equal(ckpt["eval_model"][name], shadow), name
    assert any(not torch.equal(ckpt["model"][n], ckpt["ema"][n]) for n in ckpt["ema"])  # the raw weights differ
    ema = EMA(torch.nn.Linear(2, 1, bias=False), 0.9)
    net = torch.nn.Linear(2, 1, bias=False)
    start = ema.shadow["weight"].clone()
    ema.update(net)
    assert torch.allclose(ema.shadow["weight"], 0.9 * start + 0.1 * net.weight.detach())


def test_head_and_layer_learning_rates():
    net = MiniMindForSequenceClassification(MiniMindConfig(**TINY, num_labels=3))
    cfg = ClassifyConfig(learning_rate=1e-3, head_lr_mult=10.0, layer_lr_decay=0.5)
    opt = torch.optim.AdamW(param_groups(net, cfg))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1e-2)
    assert lr_of[id(named["layers.1.attn.q_proj.weight"])] == pytest.approx(1e-3)  # the top block
    assert lr_of[id(named["layers.0.attn.q_proj.weight"])] == pytest.approx(5e-4)
    assert lr_of[id(named["embed_tokens.weight"])] == pytest.approx(2.5e-4)
    off = torch.optim.AdamW(param_groups(net, ClassifyConfig(learning_rate=1e-3)))
    assert {g["lr"] for g in off.param_groups} == {1e-3}


@pytest.mark.parametrize("n", [1, -1])
def test_freeze_layers_keeps_the_frozen_weights(n, toy, pretrained, tmp_path):
    result = quick(tmp_path / "f", toy, freeze_layers=n, init_from=str(pretrained), **{k: None for k in TINY})
    assert result.exit_code == 0
    lm, after = MiniMindForCausalLM.from_pretrained(pretrained).state_dict(), _params(tmp_path / "f" / "final")
    for name, tensor in after.items():
        frozen = not name.startswith("classifier.") and (
            n == -1 or name.startswith("embed_tokens.") or name.startswith("layers.0."))
        if name in lm:
            assert torch.equal(tensor, lm[name]) == frozen, name
    assert result.summary["trainable_params"] < result.summary["params"]


def test_focal_loss_class_weights_and_label_smoothing():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.2, 0.0, 3.0]])
    y = torch.tensor([0, 1, 2])
    ce = classification_loss(logits, y)
    assert classification_loss(logits, y, "focal", focal_gamma=0.0) == pytest.approx(float(ce))
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    p = logits.softmax(-1)[torch.arange(3), y]
    assert classification_loss(logits, y, "focal", 2.0) == pytest.approx(float(((1 - p) ** 2 * per).mean()))
    assert float(classification_loss(logits, y, "focal", 2.0)) < float(ce)  # easy examples count less
    w = balanced_class_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    weighted = classification_loss(logits, y, weight=torch.tensor([1.0, 5.0, 1.0]))
    assert float(weighted) > float(ce)  # the hard example's class weighs more
    assert float(weighted) == pytest.approx(float((per * torch.tensor([1.0, 5.0, 1.0])).sum() / 7))
    confident = torch.tensor([[10.0, 0.0, 0.0]])
    assert float(classification_loss(confident, y[:1], label_smoothing=0.1)) > float(classification_loss(confident, y[:1]))


@pytest.mark.parametrize("switch", [{"class_weights": "balanced"}, {"loss": "focal"}, {"label_smoothing": 0.1}])
def test_each_loss_switch_changes_the_training(switch, plain, toy, tmp_path):
    result = quick(tmp_path / "w", toy, **switch)
    assert result.exit_code == 0 and result.summary["param_sha256"] != plain.summary["param_sha256"]


def test_augmentation_deletes_and_swaps_tokens():
    ids = [11, 12, 13, 14, 15, EOS_ID]
    assert augment_ids(ids, "delete", 0.0, random.Random(0)) == ids
    deleted = augment_ids(ids, "delete", 0.5, random.Random(1))
    assert deleted[-1] == EOS_ID and len(deleted) < len(ids) and all(t in ids for t in deleted)
    assert augment_ids(ids, "delete", 1.0, random.Random(0))[-1] == EOS_ID
    assert len(augment_ids(ids, "delete", 1.0, random.Random(0))) == 2  # one token survives
    swapped = augment_ids(ids, "swap", 1.0, random.Random(0))
    assert swapped == [12, 11, 14, 13, 15, EOS_ID]
    assert augment_ids(ids, "both", 0.3, random.Random(3)) == augment_ids(ids, "both", 0.3, random.Random(3))


def test_augmentation_is_train_side_only(toy, tmp_path):
    """learning_rate=0: the model never changes, so equal validation scores mean equal validation
    inputs, while the training losses differ because the training inputs do."""
    runs = [quick(tmp_path / a, toy, augment=a, augment_prob=0.5, learning_rate=0.0, max_steps=2, eval_interval=1)
            for a in ("none", "both")]
    rows = [[json.loads(line) for line in (tmp_path / a / "metrics.jsonl").read_text().splitlines()]
            for a in ("none", "both")]
    assert all(r.exit_code == 0 for r in runs)
    assert [r["val_loss"] for r in rows[0]] == [r["val_loss"] for r in rows[1]]
    assert [r["loss"] for r in rows[0]] != [r["loss"] for r in rows[1]]


def test_early_stop_on_the_monitor(toy, tmp_path):
    result = quick(tmp_path / "es", toy, learning_rate=0.0, monitor="val_acc", eval_interval=1,
                   early_stop_patience=2, max_steps=10)
    s = result.summary
    assert result.exit_code == 0 and s["best_step"] == 1 and s["early_stop_step"] == 3 and s["steps"] == 3


def test_gradient_clipping_bounds_what_the_optimizer_sees(plain, toy, tmp_path):
    quick(tmp_path / "clip", toy, grad_clip=1e-3, max_steps=2, eval_interval=2)
    quick(tmp_path / "free", toy, grad_clip=0.0, max_steps=2, eval_interval=2)

    def first_moment_norm(out: str) -> float:  # Adam's m after 2 steps: (1-b1)(b1 g1 + g2)
        state = torch.load(tmp_path / out / "checkpoints" / "step_00000002.pt", weights_only=True)["optimizer"]["state"]
        return math.sqrt(sum(float(s["exp_avg"].pow(2).sum()) for s in state.values()))

    assert first_moment_norm("clip") <= 0.1 * 1e-3 * 1.9 + 1e-9
    assert first_moment_norm("free") > 10 * first_moment_norm("clip")


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.5, "augment": "both", "head_dropout": 0.2}])
def test_sigterm_checkpoints_and_resume_continues_exactly(extra, plain, toy, tmp_path, monkeypatch):
    straight = quick(tmp_path / "straight", toy, **extra) if extra else plain
    out = tmp_path / "stopped"
    real = tc.evaluate
    calls = []

    def evaluate_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 2; the loop stops after it
        return real(*args, **kwargs)

    monkeypatch.setattr(tc, "evaluate", evaluate_then_sigterm)
    stopped = quick(out, toy, **extra)
    assert stopped.exit_code == 143 and stopped.step == 2
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(tc, "evaluate", real)
    again = quick(out, toy, **extra)
    assert again.exit_code == 2 and "--resume" in again.error  # refuses to overwrite
    resumed = tc.train(ClassifyConfig.model_validate_json((out / "config.json").read_text()), out, resume=True)
    assert resumed.exit_code == 0
    assert resumed.summary["param_sha256"] == straight.summary["param_sha256"]
    assert resumed.summary["test_acc"] == straight.summary["test_acc"]
    rows = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("stopped", "straight")] if extra else []
    if rows:  # the same losses, step by step (elapsed time aside)
        strip = [[{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in r.splitlines()]
                 for r in rows]
        assert strip[0] == strip[1]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("monitor, higher, kept", [("val_loss", False, [2, 4]), ("val_acc", True, [4]),
                                                    ("val_macro_f1", True, [1, 4])])
def test_checkpoints_are_ranked_in_the_monitors_direction(monitor, higher, kept, tmp_path):
    from model.train_pretrain import RunLog

    ckpts = tc.RankedCheckpoints(tmp_path, 1, monitor, higher, RunLog(None))
    values = {"val_loss": [0.5, 0.3, 0.3, 0.9], "val_acc": [0.5, 0.3, 0.3, 0.9], "val_macro_f1": [0.7, 0.7, 0.2, None]}
    for step, value in enumerate(values[monitor], start=1):  # ties go to the older checkpoint
        ckpts.save({"format": tc.CHECKPOINT_FORMAT, "step": step}, step, value)
    assert [s for s, _ in ckpts.listed()] == kept


def test_the_config_schema_loads_without_torch():
    """expkit validates a classify record's config without the trainer's weight: the schema
    (expkit.config) imports pydantic and expkit only."""
    code = ("import sys\n"
            "from expkit.config import ClassifyConfig, validate\n"
            "validate({'ema_decay': 0.99, 'loss': 'focal'}, ClassifyConfig)\n"
            "print(sorted(k for k in ('torch', 'transformers', 'numpy', 'model') if k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"

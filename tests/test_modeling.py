"""model/modeling.py for real, at a tiny shape (hidden 64, 2 layers, seq 64, vocab 512) on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

import model  # noqa: F401  registers the Auto classes
from expkit.config import TrainConfig, product_key_shape
from model.modeling import MiniMindConfig, MiniMindForCausalLM, MoE, ProductKeyMemory

VARIANTS = ("model_original", "model", "model_moe")
V, C, L, T = 512, 64, 2, 64


def small_config(variant: str = "model_original", **overrides) -> MiniMindConfig:
    shape = dict(variant=variant, vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=192, max_position_embeddings=T, knowledge_num=4096,
                 knowledge_topk=8, num_experts=4, num_experts_per_tok=2)
    return MiniMindConfig(**{**shape, **overrides})


def build(variant: str = "model_original", seed: int = 0, **overrides) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    return MiniMindForCausalLM(small_config(variant, **overrides))


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, V, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tensors this small lose more to OpenMP hand-offs than they gain from a second thread (much
    more when other processes share the two cores), so this module runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=VARIANTS)
def trained(request):
    """A model of each variant after 20 AdamW steps on one fixed batch, with its loss curve.

    Trained so that greedy decoding is not one repeated token and save/load is checked on
    weights that differ from the initialisation."""
    net = build(request.param).train()
    batch = tokens(8, T + 1)
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = net(x, targets=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return request.param, net.eval(), batch, losses


# -- forward, loss, training ------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes_and_loss_at_init(variant):
    net = build(variant).eval()
    ids = tokens(4, T)
    out = net(ids, labels=ids)
    assert out.logits.shape == (4, T, V)
    assert out.past_key_values is None  # no cache unless asked for
    assert torch.isfinite(out.loss) and abs(out.loss.item() - math.log(V)) < 0.3, out.loss
    # labels (shifted inside) and targets (already aligned) are the same loss
    same = net(ids[:, :-1], targets=ids[:, 1:]).loss
    torch.testing.assert_close(same, out.loss)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    # -100 is ignored
    masked = ids[:, 1:].clone()
    masked[:, :10] = -100
    expect = F.cross_entropy(out.logits[:, 10:-1].reshape(-1, V), ids[:, 11:].reshape(-1))
    torch.testing.assert_close(net(ids[:, :-1], targets=masked).loss, expect)
    assert out.aux_loss.shape == ()
    if variant == "model_moe":
        assert out.aux_loss.item() > 0
    else:
        assert out.aux_loss.item() == 0


def test_labels_and_targets_together_is_an_error():
    ids = tokens(1, 8)
    with pytest.raises(ValueError, match="not both"):
        build()(ids, labels=ids, targets=ids)


def test_training_lowers_the_loss(trained):
    variant, _, _, losses = trained
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, (variant, losses)


# -- generation -------------------------------------------------------------------------------


def test_generate_greedy_cached_equals_uncached_and_sampling_works(trained):
    variant, net, batch, _ = trained
    prompt = batch[:2, :8]
    mask = torch.ones_like(prompt)
    kw = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    cached = net.generate(prompt, use_cache=True, **kw)
    uncached = net.generate(prompt, use_cache=False, **kw)
    assert cached.shape == (2, 20) and torch.equal(cached[:, :8], prompt)
    assert torch.equal(cached, uncached), variant
    assert len(set(cached[:, 8:].flatten().tolist())) > 2  # it learned something, not one repeated token

    samples = []
    for _ in range(2):
        torch.manual_seed(7)
        samples.append(net.generate(prompt, attention_mask=mask, max_new_tokens=12, min_new_tokens=12,
                                    do_sample=True, temperature=0.8, top_k=50))
    assert samples[0].shape == (2, 20) and torch.equal(samples[0], samples[1])
    assert ((samples[0] >= 0) & (samples[0] < V)).all()


def test_left_padded_batch_generates_what_each_prompt_generates_alone(trained):
    variant, net, batch, _ = trained
    a, b = batch[0:1, :8], batch[1:2, 20:25]  # 8 and 5 tokens
    padded = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], dim=1)])
    mask = torch.ones_like(padded)
    mask[1, :3] = 0
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    for use_cache in (True, False):
        both = net.generate(padded, attention_mask=mask, use_cache=use_cache, **kw)
        alone_a = net.generate(a, attention_mask=torch.ones_like(a), use_cache=use_cache, **kw)
        alone_b = net.generate(b, attention_mask=torch.ones_like(b), use_cache=use_cache, **kw)
        assert torch.equal(both[0, 8:], alone_a[0, 8:]), (variant, use_cache)
        assert torch.equal(both[1, 8:], alone_b[0, 5:]), (variant, use_cache)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_in_chunks_matches_one_full_forward(variant):
    """Prefill 10 tokens, then 6 at once (a multi-token step over a cache: the explicit-mask
    path), then 1: the logits are those of one forward over all 17."""
    net = build(variant).eval()
    ids = tokens(2, 17)
    with torch.no_grad():
        full = net(ids).logits
        first = net(ids[:, :10], use_cache=True)
        cache = first.past_key_values
        second = net(ids[:, 10:16], past_key_values=cache, use_cache=True)
        third = net(ids[:, 16:], past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 17
    torch.testing.assert_close(torch.cat([first.logits, second.logits, third.logits], dim=1), full,
                               atol=1e-5, rtol=1e-5)


# -- save / load ------------------------------------------------------------------------------


def test_save_pretrained_round_trip_through_the_auto_classes(trained, tmp_path):
    variant, net, batch, _ = trained
    net.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is MiniMindConfig
    skip = {"_name_or_path", "transformers_version"}
    assert {k: v for k, v in config.to_dict().items() if k not in skip} == {
        k: v for k, v in net.config.to_dict().items() if k not in skip}
    assert config.variant == variant

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MiniMindForCausalLM
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, net(batch).logits)
    # tied embeddings survive: one tensor, stored once
    assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    with safe_open(tmp_path / "model.safetensors", "pt") as fh:
        stored = set(fh.keys())
    assert "embed_tokens.weight" in stored and "lm_head.weight" not in stored
    assert loaded.param_counts() == net.param_counts()


def test_fresh_model_has_tied_embeddings_and_gpt2_init():
    net = build(num_hidden_layers=4)
    assert net.lm_head.weight is net.embed_tokens.weight
    assert sum(p.numel() for p in net.parameters()) == net.param_counts()["total"]
    std = {n: p.std().item() for n, p in net.named_parameters()}
    assert std["embed_tokens.weight"] == pytest.approx(0.02, rel=0.1)
    assert std["layers.0.attn.q_proj.weight"] == pytest.approx(0.02, rel=0.1)
    residual = 0.02 / math.sqrt(2 * 4)
    assert std["layers.3.attn.o_proj.weight"] == pytest.approx(residual, rel=0.1)
    assert std["layers.3.ffn.down_proj.weight"] == pytest.approx(residual, rel=0.1)
    assert torch.equal(net.norm.weight, torch.ones(C))


# -- attention --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_mask_future_tokens_do_not_change_earlier_logits(variant):
    net = build(variant).eval()
    ids = tokens(2, T)
    changed = ids.clone()
    changed[:, 40] = (changed[:, 40] + 1) % V
    with torch.no_grad():
        a, b = net(ids).logits, net(changed).logits
    torch.testing.assert_close(a[:, :40], b[:, :40], atol=0, rtol=0)
    assert not torch.allclose(a[:, 40:], b[:, 40:])


@pytest.mark.parametrize("n_kv", [1, 2])
def test_grouped_query_attention_equals_multi_head_with_shared_kv(n_kv):
    """A GQA model computes what a full multi-head model computes when each group's K/V
    projection is copied to the query heads of that group."""
    gqa = build(num_key_value_heads=n_kv).eval()
    hd = C // 4
    assert gqa.layers[0].attn.k_proj.weight.shape == (n_kv * hd, C)
    mha = build(num_key_value_heads=4).eval()
    state = gqa.state_dict()
    for key, w in state.items():
        if key.endswith(("k_proj.weight", "v_proj.weight")):
            state[key] = w.view(n_kv, hd, C).repeat_interleave(4 // n_kv, dim=0).reshape(4 * hd, C)
    mha.load_state_dict(state)
    ids = tokens(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, atol=1e-5, rtol=1e-5)


# -- the product-key memory -------------------------------------------------------------------


def test_memory_parameter_count_grows_with_knowledge_num():
    small, big = build("model", knowledge_num=4096), build("model", knowledge_num=16384)
    (a1, a2), (b1, b2) = product_key_shape(4096), product_key_shape(16384)
    expected = (16384 - 4096) * C + ((b1 + b2) - (a1 + a2)) * (C // 2)  # value rows + sub-keys
    cs, cb = small.param_counts(), big.param_counts()
    assert cb["total"] - cs["total"] == expected
    assert cb["memory"] - cs["memory"] == expected
    assert cb["embedding"] == cs["embedding"]
    assert cb["active"] - cs["active"] == ((b1 + b2) - (a1 + a2)) * (C // 2)  # every sub-key is scored; k rows read
    dense = build("model_original").param_counts()
    assert cs["total"] - dense["total"] == cs["memory"]  # the memory sits beside the MLP, nothing removed

    # 1M vs 2M entries at MiniMind's 512 width (on the meta device: no memory allocated)
    with torch.device("meta"):
        counts = [MiniMindForCausalLM(small_config("model", hidden_size=512, num_attention_heads=8,
                                                   knowledge_num=n)).param_counts() for n in (2**20, 2**21)]
    assert counts[1]["total"] - counts[0]["total"] == 2**20 * 512 + (2048 + 1024 - 1024 - 1024) * 256


def test_memory_reads_exactly_the_top_k_of_the_full_grid():
    net = build("model").train()
    memory = next(m for m in net.modules() if isinstance(m, ProductKeyMemory))
    assert list(net.config.memory_layers) == [L // 2] and net.layers[L // 2].memory is memory
    k = net.config.knowledge_topk
    h = torch.randn(2, 16, C)
    idx, weights = memory.lookup(h)
    assert idx.shape == weights.shape == (2, 16, k)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 16))
    # brute force over all n1*n2 entries: the product-key search finds the same k
    with torch.no_grad():
        q = memory.query(h)
        s1, s2 = q[..., : memory.half] @ memory.keys1.t(), q[..., memory.half :] @ memory.keys2.t()
        full = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # (B, T, n1*n2)
        best = full.topk(k, dim=-1).indices
    assert torch.equal(idx.sort(-1).values, best.sort(-1).values)


def test_memory_gradient_touches_at_most_k_rows_per_token():
    net = build("model").train()
    memory = next(m for m in net.modules() if isinstance(m, ProductKeyMemory))
    B, T_, k = 2, 16, net.config.knowledge_topk
    ids = tokens(B, T_ + 1)
    net(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    touched = (memory.values.weight.grad.abs().sum(dim=1) > 0).sum().item()
    assert 0 < touched <= k * B * T_
    assert touched < memory.values.num_embeddings // 4
    for p in (memory.query.weight, memory.keys1, memory.keys2):
        assert p.grad is not None and p.grad.abs().sum() > 0  # the search itself learns


# -- mixture of experts -----------------------------------------------------------------------


def test_moe_balance_loss_is_positive_added_in_training_and_reaches_the_router():
    net = build("model_moe")
    ids = tokens(4, 33)
    x, y = ids[:, :-1], ids[:, 1:]
    net.eval()
    with torch.no_grad():
        eval_out = net(x, targets=y)
    ce = F.cross_entropy(eval_out.logits.reshape(-1, V), y.reshape(-1))
    torch.testing.assert_close(eval_out.loss, ce)  # evaluation: pure cross-entropy

    net.train()
    out = net(x, targets=y)
    assert out.aux_loss.item() > 0
    torch.testing.assert_close(out.loss, ce + net.config.aux_loss_coef * out.aux_loss)
    out.loss.backward()
    moes = [m for m in net.modules() if isinstance(m, MoE)]
    assert len(moes) == L
    for moe in moes:
        assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
        for expert in moe.experts:
            assert expert.down_proj.weight.grad is not None  # every expert stays in the graph


def test_moe_balance_loss_alone_trains_the_router():
    torch.manual_seed(0)
    moe = MoE(small_config("model_moe"))
    torch.nn.init.normal_(moe.router.weight, std=0.5)  # a lopsided router
    h = torch.randn(256, 1, C)
    _, before = moe(h)
    opt = torch.optim.SGD(moe.router.parameters(), lr=0.5)
    for _ in range(30):
        _, aux = moe(h)
        opt.zero_grad()
        aux.backward()
        opt.step()
    _, after = moe(h)
    assert after.item() < before.item()


def test_param_counts_by_part():
    for variant in VARIANTS:
        net = build(variant)
        c = net.param_counts()
        assert c["total"] == sum(p.numel() for p in net.parameters())
        assert c["embedding"] == V * C and c["non_embedding"] == c["total"] - c["embedding"]
        if variant == "model_moe":
            assert c["experts"] == L * 4 * 3 * C * 192
            assert c["active"] == c["total"] - c["experts"] // 2  # 2 of 4 experts per token
        else:
            assert c["experts"] == 0
        if variant != "model":
            assert c["memory"] == 0
    dense = build()
    n = dense.param_counts()["total"]
    assert dense.flops_per_token() == 6 * n + 12 * L * 4 * (C // 4) * T  # nanoGPT's estimate_mfu


# -- configuration ----------------------------------------------------------------------------


def test_from_train_config_maps_the_defaults():
    tc = TrainConfig()
    cfg = MiniMindConfig.from_train_config(tc)
    assert (cfg.variant, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == ("model_original", 6400, 128, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert cfg.intermediate_size == tc.ffn_size == 384
    assert cfg.max_position_embeddings == tc.max_seq_len == 128
    assert (cfg.rope_theta, cfg.dropout, cfg.aux_loss_coef) == (1e6, 0.0, 0.01)
    assert (cfg.knowledge_num, cfg.knowledge_topk, cfg.num_experts, cfg.num_experts_per_tok) == (16384, 8, 4, 2)
    assert cfg.tie_word_embeddings is True
    assert cfg.bos_token_id == cfg.eos_token_id == cfg.pad_token_id == 0
    assert cfg.model_type == "minimind"

    other = MiniMindConfig.from_train_config(TrainConfig(model_type="model_moe", intermediate_size=256,
                                                         max_seq_len=512, rope_theta=10000.0))
    assert (other.variant, other.intermediate_size, other.max_position_embeddings, other.rope_theta) == (
        "model_moe", 256, 512, 10000.0)


def test_config_rejects_shapes_the_model_cannot_build():
    with pytest.raises(Exception, match="variant"):
        small_config("model_dense")
    with pytest.raises(Exception, match="knowledge_topk"):
        small_config("model", knowledge_num=64, knowledge_topk=16)  # 8 x 8 grid: at most 8 per half
    with pytest.raises(Exception, match="num_key_value_heads"):
        small_config(num_key_value_heads=3)
    with pytest.raises(Exception, match="expected int"):  # field types are checked (@strict)
        small_config(hidden_size="64")


def test_the_training_cross_entropy_equals_torchs_in_value_and_gradient():
    from model.modeling import cross_entropy

    torch.manual_seed(0)
    logits = (3 * torch.randn(64, 97)).requires_grad_()
    target = torch.randint(0, 97, (64,))
    target[::7] = -100  # ignored positions count neither in the mean nor in the gradient
    for g in (1.0, 0.25):  # the backward scales by the incoming gradient (accumulation divides the loss)
        mine = cross_entropy(logits, target)
        (grad_mine,) = torch.autograd.grad(mine * g, logits)
        ref = F.cross_entropy(logits, target, ignore_index=-100)
        (grad_ref,) = torch.autograd.grad(ref * g, logits)
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad_mine, grad_ref, rtol=1e-5, atol=1e-7)
        assert grad_mine[::7].abs().max() == 0
    with torch.no_grad():  # evaluation takes torch's own path
        assert cross_entropy(logits, target) == F.cross_entropy(logits, target, ignore_index=-100)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_chunked_training_loss_equals_the_plain_one_in_value_and_every_gradient(variant, monkeypatch):
    from model import modeling

    monkeypatch.setattr(modeling._LinearCrossEntropy, "CHUNK", 7)  # several chunks and a short last one
    net = build(variant).train()
    ids = tokens(4, 33)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[0, :5] = -100

    def loss_and_grads(fused: bool):
        monkeypatch.setattr(modeling, "_fused_loss_applies", lambda *a: fused)
        torch.manual_seed(0)  # the same dropout, if any
        net.zero_grad(set_to_none=True)
        out = net(x, targets=y)
        (out.loss * 0.5).backward()  # an incoming gradient other than 1 (accumulation divides the loss)
        return out, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    fused, g_fused = loss_and_grads(True)
    plain, g_plain = loss_and_grads(False)
    assert fused.logits is None and plain.logits is not None
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-5, atol=1e-6)
    assert g_fused.keys() == g_plain.keys()
    for name in g_plain:
        torch.testing.assert_close(g_fused[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)

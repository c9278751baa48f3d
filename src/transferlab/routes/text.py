"""The text route: English news as the source, token-id targets, one backbone per architecture.

Backbones (``model.text.<arch>``): each objective names the one it trains
(``objectives.mlm.model: encoder``, ``objectives.clm.model: decoder``); an entry with
``pretrained: true`` (``model/text=minilm``) is a hub model that brings its own weights and
tokenizer (it reads the items' raw texts through :meth:`TextRoute.inputs`).

Batches drop the columns that are padding in every row (:func:`trim_padding`), so short texts
(tweets) cost what they are, not ``seq_len``. Unlabelled targets (``task: lm``) have no classes:
the evaluate stage reports the perplexity of each language model on their held-out text, of the
scratch control and of the source unigram model (:func:`unigram_ppl`). Continued pre-training
reads a target's unlabelled LM blocks and is judged by the target's perplexity before and after.

Input-space shift (:mod:`transferlab.shift.text`): token-unigram KL and JS and the top-k
vocabulary overlap, bootstrapped over whole LM blocks; the auxiliary multi-task head tells
shuffled from intact token order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from transferlab.data.loaders import make_loader
from transferlab.data.text import build_text_data
from transferlab.models.checkpoint import load_backbone
from transferlab.routes.base import Route, subsample
from transferlab.shift import estimators as est
from transferlab.shift import measures
from transferlab.shift import text as ts
from transferlab.study import Init, adapted
from transferlab.training import seed_all

PAD_ID = 0  # [PAD] of the source tokenizer and of MiniLM's WordPiece vocabulary


def trim_padding(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Drop the trailing columns that are padding in every row of the batch.

    Padding is on the right and every backbone masks it (or, causal, never reads it), so real
    tokens' outputs do not change.
    """
    x, *rest = batch
    real = (x != PAD_ID).any(dim=0).nonzero()
    keep = int(real.max()) + 1 if len(real) else 1
    return (x[:, :keep], *rest)


def text_loader(
    *tensors: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """:func:`transferlab.data.loaders.make_loader` (same sampler, same batches), padding trimmed."""
    loader = make_loader(
        *tensors, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    loader.collate_fn = trim_padding
    return loader


def unigram_ppl(source_counts: torch.Tensor, blocks: torch.Tensor, alpha: float = 1.0) -> float:
    """Perplexity of the source unigram model on ``blocks``: ``exp(−mean_i log p(x_i))``.

    ``p(v) = (c_v + α) / (N + V α)`` with ``c`` the source-train token counts over the whole
    vocabulary (add-α smoothing, α = 1); every token of the blocks is scored. The zero-context
    baseline a language model must beat.
    """
    p = est.unigram_distribution(source_counts.numpy(), len(source_counts), alpha, counts=True)
    logp = torch.from_numpy(p).log()[blocks.reshape(-1)]
    return float(math.exp(-float(logp.mean())))


@dataclass
class TokenSide:
    """One side of the token-space shift analysis."""

    groups: Any  #: per-block token counts (sparse, blocks × vocabulary)
    counts: np.ndarray  #: summed counts
    feature_x: torch.Tensor
    n: int  #: tokens counted


class TextRoute(Route):
    name = "text"
    aux_task = "shuffle"
    reseed_head = True
    shift_measures = (
        "kl_input",
        "js_input",
        "kl_feature",
        "kl_feature_knn",
        "mmd_feature",
        "pad_feature",
        "overlap_topk",
        "test_ppl",
    )
    ci_measures = ("kl_input", "js_input", "overlap_topk", "kl_feature")
    kl_label = "D_KL(P_source || P_target), token unigrams [nats]"

    def build_data(self, out: Path, progress: bool) -> dict[str, Any]:
        data_cfg = OmegaConf.to_container(self.cfg.data.text, resolve=True)
        manifest = build_text_data(data_cfg, out, int(self.cfg.seed), progress=progress)
        manifest.pop("build_seconds", None)  # a timing would make identical builds differ
        return manifest

    # ------------------------------------------------------------------------------ backbones
    def arch_key(self, objective: str) -> str:
        return str(self.cfg.objectives[objective].model)

    def hub_keys(self) -> list[str]:
        return [
            str(k)
            for k, v in self.cfg.model.text.items()
            if isinstance(v, DictConfig) and v.get("pretrained") is True
        ]

    def arch(self, init: Init) -> dict[str, Any]:
        if init.kind == "raw":
            return self.raw_arch()
        arch = OmegaConf.to_container(self.cfg.model.text[init.arch], resolve=True)
        if init.arch in self.hub_keys():
            arch["pretrained"] = init.kind == "hub"
        return arch

    def raw_arch(self) -> dict[str, Any]:
        return {
            "_target_": "transferlab.models.raw.BagOfTokens",
            "vocab_size": self.vocab_size(),
            "pad_id": PAD_ID,
        }

    def saved_arch(self, init: Init) -> dict[str, Any]:
        arch = self.arch(init)
        return {**arch, "pretrained": False} if "pretrained" in arch else arch

    def backbone(self, init: Init, adapted: str | None = None) -> nn.Module:
        seed_all(self.cfg.seed)
        return super().backbone(init, adapted)

    def vocab_size(self) -> int:
        return int(self.manifest().get("tokenizer", {}).get("vocab_size", 0))

    # --------------------------------------------------------------------------------- inputs
    def inputs(self, backbone: nn.Module, split: Mapping[str, Any]) -> torch.Tensor:
        """The stored BPE ids, or the raw texts through the backbone's own tokenizer."""
        if hasattr(backbone, "encode_texts") and "text" in split:
            return backbone.encode_texts(split["text"])
        return split["x"]

    def loader(self, *tensors: torch.Tensor, **options: Any) -> DataLoader:
        """The base loader's batches (same sampler, same order) with padding trimmed."""
        return text_loader(*tensors, **options)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """Outputs in batches of 256 with their all-padding columns trimmed.

        ``fast``: batch the rows in order of their real length, so that each batch trims to its
        own longest row (about twice as fast on mixed lengths); outputs come back in ``x``'s order
        and differ from unsorted batching only by float rounding (~1e-7).
        """
        model.eval()
        order = torch.argsort((x != PAD_ID).sum(-1), stable=True) if fast else None
        rows = x[order] if order is not None else x
        out = torch.cat(
            [model(trim_padding((rows[i : i + 256],))[0]) for i in range(0, len(rows), 256)]
        )
        return out[torch.argsort(order)] if order is not None else out

    def unlabelled_inputs(self, data: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return data["unlabelled"], data["lm_val"]

    # ------------------------------------------------------------------- language-model rows
    def adaptation_metrics(self, module: Any, data: Mapping[str, Any]) -> dict[str, float]:
        ppl = module.lm_cross_entropy(data["lm_val"], seed=int(self.cfg.seed))["ppl"]
        return {"val/ppl": round(ppl, 4)}

    def _lm_row(self, module: Any, data: Mapping[str, Any]) -> dict[str, float]:
        seed = int(self.cfg.seed)
        test = module.lm_cross_entropy(data["lm_test"], seed=seed)
        val = module.lm_cross_entropy(data["lm_val"], seed=seed)
        return {"test/ppl": test["ppl"], "test/lm_loss": test["lm_loss"], "val/ppl": val["ppl"]}

    def extra_rows(self, target: str, data: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """Perplexity of each language model (and its DAPT twin) on the target's held-out text,
        and for unlabelled targets of a randomly initialised model of the primary's architecture
        (perplexity ≈ vocabulary size)."""
        rows: dict[str, dict[str, float]] = {}
        dapt = adapted(self.cfg, self)
        for o in self.objectives():
            init = Init("pretrained", self.arch_key(o), o)
            rows[o] = self._lm_row(self.objective_module(o, self.backbone(init)), data)
            if o in dapt:  # the study's DAPT twins (finetune.dapt_epochs, fine-tuned objectives)
                path = self.dirs["finetune"] / f"{o}_dapt" / f"{target}.backbone.pt"
                backbone, _ = load_backbone(path)
                rows[f"{o}_dapt"] = self._lm_row(self.objective_module(o, backbone), data)
        if not self.labelled(data):
            primary = self.primary()
            backbone = self.backbone(Init("scratch", self.arch_key(primary)))
            rows["scratch"] = self._lm_row(self.objective_module(primary, backbone), data)
        return rows

    def unlabelled_entry(
        self, target: str, data: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        source = self.source_data()["train"]["x"]
        vocab = int(max(int(source.max()), int(data["lm_test"].max())) + 1)
        vocab = max(vocab, self.vocab_size())
        counts = torch.bincount(source.reshape(-1), minlength=vocab)
        lm = self.extra_rows(target, data)
        rows = {v: {k: round(x, 6) for k, x in r.items()} for v, r in lm.items()}
        rows["unigram"] = {
            "test/ppl": round(unigram_ppl(counts, data["lm_test"]), 6),
            "val/ppl": round(unigram_ppl(counts, data["lm_val"]), 6),
        }
        entry: dict[str, Any] = {
            "task": "lm",
            "pretrained": rows[self.primary()],
            "scratch": rows["scratch"],
        }
        entry.update({v: r for v, r in rows.items() if v != "scratch"})
        entry["gain"] = None
        return entry, rows

    # ---------------------------------------------------------------------------------- shift
    def shift_side(self, data: Mapping[str, Any], n_max: int, seed: int) -> TokenSide:
        blocks = ts.lm_blocks(dict(data))
        groups = ts.block_counts(blocks, self.vocab_size())
        counts = np.asarray(groups.sum(axis=0)).ravel()
        feature_x = subsample(torch.cat(blocks), n_max, seed)
        return TokenSide(groups, counts, feature_x, int(counts.sum()))

    def input_measures(self, src: TokenSide, tgt: TokenSide) -> dict[str, float]:
        s = self.cfg.shift.text
        return measures.token_measures(src.counts, tgt.counts, float(s.alpha), int(s.top_k))

    def input_ci(
        self, src: TokenSide, tgt: TokenSide, n_boot: int, seed: int
    ) -> dict[str, list[float]]:
        s = self.cfg.shift.text
        return measures.bootstrap_groups(
            measures.token_measure_fns(float(s.alpha), int(s.top_k)),
            src.groups,
            tgt.groups,
            n_boot=n_boot,
            seed=seed,
        )

    def extra_measures(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        return {"test_ppl": entry["pretrained"].get("test/ppl")}

    def extra_report(self, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """``spearman_kl_ppl``: ``kl_input`` ranked against the primary's perplexity over every
        target, the unlabelled ones included."""
        names = list(rows)

        def col(m: str) -> list[float]:
            return [np.nan if rows[t][m] is None else rows[t][m] for t in names]

        rho = est.correlations(col("kl_input"), col("test_ppl"))["spearman"]
        return {"spearman_kl_ppl": measures.finite_or_none(rho)}

    def estimators(self, primary: str) -> dict[str, str]:
        s = self.cfg.shift.text
        return ts.descriptions(
            self.vocab_size(),
            float(s.alpha),
            int(s.top_k),
            primary,
            float(s.feature_eps),
            int(s.max_samples),
            int(s.knn_k),
        )

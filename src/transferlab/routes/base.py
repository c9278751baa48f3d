"""The route interface: everything that differs between kinds of input (images, text, ...).

A route is one module under :mod:`transferlab.routes` with one :class:`Route` subclass, named by
``_target_`` in the config (``routes.<name>._target_``, schema ``RoutesConf``). The stages only ever talk to this
interface; they hold no branch on the route. What a route supplies:

- **data**: :meth:`build_data` builds the processed source and targets and returns the manifest;
  :meth:`labelled` says whether a target has classes (unlabelled text targets are reported by
  perplexity only);
- **backbones**: :meth:`objectives` / :meth:`primary` (``pretrain.<route>.*``), :meth:`arch_key`
  (which architecture an objective trains), :meth:`hub_keys` (backbones with their own weights),
  :meth:`arch` (the config a backbone of an :class:`~transferlab.study.Init` is built from) and
  :meth:`backbone` (that backbone with its starting weights);
- **inputs**: :meth:`inputs` (a split's model inputs for a backbone), :meth:`loader` (batches),
  :meth:`predict` (logits in batches), :meth:`unlabelled_inputs` (for continued pre-training),
  :meth:`source_inputs` (for alignment to the source);
- **metrics**: :meth:`extra_rows` (e.g. perplexity of language models), :meth:`unlabelled_entry`;
- **shift**: the input-space measures (:meth:`shift_side`, :meth:`input_measures`,
  :meth:`input_ci`) and how features are read (:meth:`features`);
- the auxiliary multi-task head's task (:attr:`aux_task`).

Adding a route (say audio): a module ``routes/audio.py`` with a subclass that implements the
abstract methods, its data builder under :mod:`transferlab.data`, its backbones under
:mod:`transferlab.models`, and its config (``routes.audio._target_`` and ``data.audio``, ``model.audio``, ``pretrain.audio``,
``shift.audio``, ``curves.audio`` in the schema); then ``foreach: [image, text, audio]`` in
``dvc.yaml`` (docs/architecture.md, "Adding a route").
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from transferlab.callbacks import History
from transferlab.data.loaders import load_dataset, make_loader
from transferlab.errors import ConfigError
from transferlab.finetune.wise import interpolate_state_dicts
from transferlab.models.checkpoint import build_backbone, load_backbone, read_checkpoint
from transferlab.paths import route_dirs
from transferlab.study import Init
from transferlab.training import make_trainer, seed_all

#: Objective-config keys that describe the objective rather than its LightningModule's arguments.
META_KEYS = ("route", "model", "max_epochs", "batch_size")


class Route(ABC):
    """One kind of input. Built from the whole config; ``name`` keys ``data.<name>`` etc."""

    name: str
    #: The auxiliary self-supervised task of multi-task fine-tuning (``finetune.multitask.tasks``).
    aux_task: str
    #: Re-seed between building the backbone and the head (True: the head's initial weights do
    #: not depend on how the backbone was built; False keeps the image route's results as they
    #: were before the route interface existed).
    reseed_head: bool = True
    #: Shift measures in report order, and those given bootstrap intervals.
    shift_measures: tuple[str, ...]
    ci_measures: tuple[str, ...]
    #: The x-axis of the KL-vs-gain plot.
    kl_label: str

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.dirs = route_dirs(cfg, self.name)

    # ------------------------------------------------------------------------------- data
    @abstractmethod
    def build_data(self, out: Path, progress: bool) -> dict[str, Any]:
        """Write the processed source and targets under ``out``; return the manifest."""

    def targets(self) -> list[str]:
        return [str(t) for t in self.cfg.data[self.name].targets]

    def target_data(self, target: str) -> dict[str, Any]:
        return load_dataset(self.dirs["data"] / "targets" / f"{target}.pt")

    def source_data(self) -> dict[str, Any]:
        return load_dataset(self.dirs["data"] / "source.pt")

    def labelled(self, data: Mapping[str, Any]) -> bool:
        return data.get("task", "classification") != "lm"

    def manifest(self) -> dict[str, Any]:
        path = self.dirs["manifest"]
        return json.loads(path.read_text()) if path.exists() else {}

    def families(self) -> dict[str, dict[str, Any]]:
        """Graded shift families from the data stage's manifest: per family its ordered
        ``targets`` (the clean base first) and their ``severities``."""
        return dict(self.manifest().get("families", {}))

    def family_members(self) -> set[str]:
        """The corrupted members of every family (not their clean base)."""
        return {t for f in self.families().values() for t in f["targets"][1:]}

    def ood_partners(self) -> dict[str, list[str]]:
        """Per target, the targets its fine-tuned models are also tested on (first: the OOD
        partner)."""
        return {
            str(k): [str(p) for p in v] for k, v in self.manifest().get("ood_partners", {}).items()
        }

    # ------------------------------------------------------------------------------ backbones
    def objectives(self) -> list[str]:
        return [str(o) for o in self.cfg.pretrain[self.name].objectives]

    def primary(self) -> str:
        return str(self.cfg.pretrain[self.name].primary)

    @abstractmethod
    def arch_key(self, objective: str) -> str:
        """The architecture (``model.<route>`` entry) an objective trains."""

    def hub_keys(self) -> list[str]:
        """Backbones that bring their own pre-trained weights (no pre-training stage)."""
        return []

    @abstractmethod
    def arch(self, init: Init) -> dict[str, Any]:
        """The config the backbone of ``init`` is built from (saved with fine-tuned models)."""

    @abstractmethod
    def raw_arch(self) -> dict[str, Any]:
        """The raw-input backbone of the probe floor (``Init("raw")``: pixels, bag of tokens)."""

    def saved_arch(self, init: Init) -> dict[str, Any]:
        """What a fine-tuned checkpoint is rebuilt from: its weights come from the file."""
        return self.arch(init)

    def pretrained_path(self, objective: str) -> Path:
        return self.dirs["pretrain"] / objective / "backbone.pt"

    def backbone(self, init: Init, adapted: str | None = None) -> nn.Module:
        """The backbone ``init`` starts fine-tuning from (``adapted``: a DAPT checkpoint)."""
        if adapted is not None:
            return load_backbone(adapted)[0]
        if init.kind == "pretrained":
            ckpt = read_checkpoint(self.pretrained_path(str(init.objective)))
            backbone = build_backbone(ckpt["arch"])
            backbone.load_state_dict(ckpt["state_dict"])
            return backbone
        return build_backbone(self.arch(init))

    def can_adapt(self, objective: str) -> bool:
        """Whether ``objective`` can continue on a target's unlabelled inputs (it reads no labels;
        a weighted combination: none of its weighted parts does)."""
        ocfg = self.cfg.objectives[objective]
        parts = [ocfg]
        if ocfg.get("components") is not None:
            parts = [ocfg.components[str(n)] for n in (ocfg.get("weights") or ocfg.components)]
        return not any(getattr(get_class(str(p._target_)), "uses_labels", False) for p in parts)

    def objective_cfg(self, objective: str) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg.objectives[objective], resolve=True)

    def objective_module(self, objective: str, backbone: nn.Module) -> Any:
        """The objective's LightningModule around ``backbone`` (continued pre-training, perplexity)."""
        ocfg = self.objective_cfg(objective)
        kwargs = {k: v for k, v in ocfg.items() if k not in META_KEYS}
        return instantiate(kwargs, backbone=backbone, _convert_="all")

    # --------------------------------------------------------------------------------- inputs
    def inputs(self, backbone: nn.Module, split: Mapping[str, Any]) -> torch.Tensor:
        """A split's model inputs for ``backbone``."""
        return split["x"]

    def loader(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        return make_loader(
            *tensors, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    @abstractmethod
    def predict(self, model: nn.Module, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """Outputs for every row of ``x`` in batches (``fast``: any batching that keeps the
        outputs up to float rounding)."""

    @abstractmethod
    def unlabelled_inputs(self, data: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train, val)`` unlabelled inputs of a target, for continued pre-training."""

    def source_inputs(self, backbone: nn.Module) -> torch.Tensor:
        """Source inputs for the alignment loss (``finetune.alignment``)."""
        return self.inputs(backbone, self.source_data()["train"])

    # ----------------------------------------------------------------- continued pre-training
    def adapt(
        self, objective: str, data: Mapping[str, Any], logger: Any = False
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Domain-adaptive pre-training: continue ``objective`` on the target's unlabelled inputs.

        ``finetune.dapt_epochs`` epochs with the pre-training batch size, validated on the
        target's held-out unlabelled inputs. Returns the adapted backbone and what the route
        measures before and after (:meth:`adaptation_metrics`) with the epoch history.
        """
        cfg = self.cfg
        seed_all(cfg.seed)
        backbone = self.backbone(Init("pretrained", self.arch_key(objective), objective))
        module = self.objective_module(objective, backbone)
        train_x, val_x = self.unlabelled_inputs(data)
        before = self.adaptation_metrics(module, data)
        seed_all(cfg.seed)
        bs = int(cfg.pretrain[self.name].batch_size)
        train = make_loader(train_x, batch_size=bs, shuffle=True, seed=cfg.seed, drop_last=True)
        val = make_loader(val_x, batch_size=256, shuffle=False)
        history = History()
        trainer = make_trainer(
            cfg.trainer,
            max_epochs=int(cfg.finetune.dapt_epochs),
            logger=logger,
            callbacks=[history],
        )
        trainer.fit(module, train, val)
        after = self.adaptation_metrics(module, data)
        info = {f"{k}_before": v for k, v in before.items()}
        info.update({f"{k}_after": v for k, v in after.items()})
        return module.backbone, {**info, "history": history.epochs}

    def adaptation_metrics(self, module: Any, data: Mapping[str, Any]) -> dict[str, float]:
        """What continued pre-training is judged by, before and after (text: perplexity)."""
        return {}

    # -------------------------------------------------------------------------------- metrics
    def extra_rows(self, target: str, data: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """Metrics per variant beyond classification (text: perplexity of language models)."""
        return {}

    def unlabelled_entry(
        self, target: str, data: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        """The report entry of a target without classes."""
        raise ConfigError(f"route {self.name} has no unlabelled targets; '{target}' has no classes")

    # ---------------------------------------------------------------------------------- shift
    @abstractmethod
    def shift_side(self, data: Mapping[str, Any], n_max: int, seed: int) -> Any:
        """One side (source or a target) of the shift analysis: what its measures need, with
        ``feature_x`` (the inputs whose backbone features are compared) and ``n`` (its size)."""

    @abstractmethod
    def input_measures(self, src: Any, tgt: Any) -> dict[str, float]:
        """Input-space shift measures of a target from the source."""

    @abstractmethod
    def input_ci(self, src: Any, tgt: Any, n_boot: int, seed: int) -> dict[str, list[float]]:
        """Bootstrap intervals of the input-space measures."""

    def extra_measures(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        """Measures read from the target's evaluation entry (text: the primary's perplexity)."""
        return {}

    def extra_report(self, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """Route-specific keys of ``shift.json`` beyond the common ones."""
        return {}

    @abstractmethod
    def estimators(self, primary: str) -> dict[str, str]:
        """``shift.json``'s ``estimators``: what each measure is, with its settings."""

    @torch.no_grad()
    def features(self, backbone: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Pooled backbone features of ``x`` as float64 rows."""
        backbone.eval()
        out = [backbone(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(out).double().numpy()


def subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """At most ``n`` rows of ``x``, a seeded choice kept in their original order."""
    if len(x) <= n:
        return x
    g = torch.Generator().manual_seed(int(seed))
    return x[torch.randperm(len(x), generator=g)[:n].sort().values]


def wise_mix(lp: nn.Module, ft: nn.Module, alpha: float) -> nn.Module:
    """WiSE-FT: the model with weights ``(1 − α) w_lp + α w_ft``."""
    mix = copy.deepcopy(ft)
    mix.load_state_dict(interpolate_state_dicts(lp.state_dict(), ft.state_dict(), float(alpha)))
    return mix

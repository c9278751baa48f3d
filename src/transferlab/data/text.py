"""Build the text route's datasets: a source LM corpus, a source-only tokeniser and target sets.

``build_text_data(cfg, out_dir, seed)`` writes (atomically: the whole ``out_dir`` is replaced)::

    out_dir/
      tokenizer.json        Hugging Face `tokenizers` BPE, trained on the SOURCE TRAIN split only
      source.pt             {"train"|"val"|"test": {"x": LongTensor (N, seq_len)}}  LM blocks
      targets/<name>.pt     one file per target (formats below)
      manifest.json         sizes, class counts, sha256 of every tensor and file, tokenizer hash

LM blocks are contiguous, non-overlapping ``seq_len`` windows of the documents of one split,
concatenated in a seeded order with ``[SEP]`` after each document (the remainder is dropped).
For causal LM use ``ids[:, :-1] → ids[:, 1:]``; they contain no padding.

Splits follow the image route's convention (``{"x": inputs, "y": labels}``), so the shared stages
load both routes alike; a split without labels (LM blocks) has no ``"y"``.

Classification items (``x``) are one text each: its tokens truncated to ``seq_len - 1``,
then ``[SEP]``, then ``[PAD]`` (id 0) up to ``seq_len``. The trailing ``[SEP]`` marks the end as in
the LM stream, so a causal decoder's last non-pad position has read the whole text.

Target file formats (every target has ``name``, ``task``, ``seq_len``, ``unlabelled``,
``lm_val``, ``lm_test`` and ``classes``):

- ``task == "classification"`` (fortunes, healthtweets, kjv)::

    {"train": {"x": Long (C*shots, L), "y": Long (C*shots,), "text": [str]},  # few-shot, balanced
     "val":   {"x": Long (C*val_per_class, L), "y": ..., "text": ...},
     "test":  {"x": Long (C*test_per_class, L), "y": ..., "text": ...},
     "classes": [str, ...] (sorted; label i is classes[i]),
     "unlabelled": Long (M, L) LM blocks of the items outside val/test (the pool the few-shot
                   train set was drawn from), for domain-adaptive pre-training / perplexity,
     "lm_val", "lm_test": Long LM blocks of the val / test items' text}

  ``text`` holds each item's raw text (same order as ``x``), so a backbone with its own tokenizer
  (all-MiniLM-L6-v2's WordPiece) re-encodes the very same items at fine-tuning time.

- ``task == "lm"`` (commons, bundestag; their labels are near chance)::

    {"train": {"x": the "unlabelled" tensor}, "val": {"x": "lm_val"}, "test": {"x": "lm_test"}:
     Long (·, L) LM blocks of disjoint document splits, "classes": []}

Splits are made per document/item *before* anything is sampled, so train/val/test never share a
text; duplicate texts (after lower-casing and whitespace folding) are removed first, and texts
that occur under two labels are dropped. Every random choice uses a ``torch.Generator`` seeded
from ``seed`` and the dataset's name: the same cfg and seed give byte-identical files (checked by
the manifest hashes), and a target's files do not change when other targets are added.

``manifest.json`` holds the resolved cfg and seed; the tokenizer's sha256, vocab size and special
ids; for the source the document counts, block counts, token counts and ``doc_index`` (indices
into ``dedupe_docs(load_news())`` per split); per target the task, split shapes, class counts,
[UNK] rate and truncation rate; a sha256 per tensor (dtype + shape + bytes), per file, and
``data_hash`` over all file hashes (the one id to tag runs with; also stored as ``hash``, the key
the shared stages read, next to ``datasets``: split sizes per dataset, as in the image manifest).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from transferlab.data.text_sources import SOURCES
from transferlab.errors import ConfigError
from transferlab.io import atomic_dir, atomic_path, write_json
from transferlab.schema import TextDataConf
from transferlab.schema import defaults as schema_defaults

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
#: Special tokens, in id order: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)

#: Defaults for ``build_text_data``: the schema's (``data.text``, :class:`transferlab.schema.TextDataConf`);
#: the composed config holds every key, a direct caller's cfg only needs the keys it changes.
DEFAULT_TEXT_CFG: dict[str, Any] = schema_defaults(TextDataConf)


# --------------------------------------------------------------------------- tokenizer helpers
def new_tokenizer() -> Tokenizer:
    """An untrained BPE tokenizer: NFKC, whitespace folding, lower-casing, SentencePiece-style ▁.

    Pieces never cross whitespace, punctuation or digit boundaries, and the Metaspace decoder turns
    ``▁`` back into spaces, so ``decode(encode(s)) == normalize(s)`` whenever every character of
    ``s`` is in the learnt alphabet; any other character encodes to ``[UNK]``.
    """

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tok


def source_alphabet(tok: Tokenizer, texts: Sequence[str], limit: int) -> list[str]:
    """The ``limit`` most frequent characters of the normalised texts, ties broken by code point.

    The BPE trainer's own ``limit_alphabet`` breaks ties between equally frequent characters in
    hash order, so two runs on the same text could keep different characters (and shift every
    id); choosing the alphabet here and forcing it keeps training deterministic.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tok.normalizer.normalize_str(text))
    # The Metaspace pre-tokenizer writes spaces (and each text's start) as "▁".
    counts["▁"] += counts.pop(" ", 0) + len(texts)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return sorted(c for c, _ in ranked[:limit])


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, min_frequency: int = 2, limit_alphabet: int = 100
) -> Tokenizer:
    """Train :func:`new_tokenizer` on ``texts`` (the source train split, nothing else).

    Only the ``limit_alphabet`` most frequent characters of ``texts`` get a token; all other
    characters encode to ``[UNK]``.
    """

    tok = new_tokenizer()
    alphabet = source_alphabet(tok, texts, limit_alphabet)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # Forced characters count as infinitely frequent, so with the limit equal to their
        # number the trainer keeps exactly these.
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, expected {i}")
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer saved by :func:`build_text_data` (``tokenizer.json`` or its folder)."""

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    return Tokenizer.from_file(str(path))


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return {name: int(tokenizer.token_to_id(name)) for name in SPECIAL_TOKENS}


def _encode_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # add_special_tokens=False: the tokenizer has no post-processor; [SEP] is added by the callers.
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def encode_batch(
    tokenizer: Tokenizer, texts: Sequence[str], seq_len: int, add_sep: bool = True
) -> torch.Tensor:
    """Encode texts as a ``(N, seq_len)`` LongTensor: truncated, ``[SEP]``-terminated, padded.

    Padding is ``[PAD]`` (id 0) on the right; characters outside the vocabulary become ``[UNK]``.
    With ``add_sep`` (the format of the saved classification items) the last non-pad token is
    ``[SEP]``; the attention mask is ``ids != 0``.
    """

    sep, pad = tokenizer.token_to_id(SEP), tokenizer.token_to_id(PAD)
    keep = seq_len - 1 if add_sep else seq_len
    out = torch.full((len(texts), seq_len), pad, dtype=torch.long)
    for i, ids in enumerate(_encode_ids(tokenizer, texts)):
        row = ids[:keep] + ([sep] if add_sep else [])
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def lm_blocks(
    tokenizer: Tokenizer, docs: Sequence[str], seq_len: int, max_blocks: int | None = None
) -> torch.Tensor:
    """Concatenate ``doc [SEP] doc [SEP] ...`` and cut it into ``(N, seq_len)`` blocks.

    The tail shorter than ``seq_len`` is dropped. ``max_blocks`` keeps the first blocks (callers
    shuffle ``docs`` first).
    """

    sep = tokenizer.token_to_id(SEP)
    budget = None if max_blocks is None else max_blocks * seq_len
    stream: list[int] = []
    # Encode in chunks so a capped corpus does not tokenise text it will throw away.
    chunk = 256
    for start in range(0, len(docs), chunk):
        for ids in _encode_ids(tokenizer, docs[start : start + chunk]):
            stream.extend(ids)
            stream.append(sep)
        if budget is not None and len(stream) >= budget:
            break
    n = len(stream) // seq_len
    if max_blocks is not None:
        n = min(n, max_blocks)
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


# --------------------------------------------------------------------------- hashing
def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (independent of how it is serialised)."""
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: str | Path, obj: Any) -> None:
    """``torch.save`` with reproducible bytes, written atomically.

    ``torch.save`` to a path names the archive's root folder after the file, and an atomic write
    saves to a randomly named temporary file, so identical data would hash differently; saving to
    a buffer first gives the fixed root name ``archive``.
    """

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


# --------------------------------------------------------------------------- cfg
def _plain(obj: Any) -> Any:
    """Recursively turn Mappings/Sequences (OmegaConf containers included) into dicts/lists."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [_plain(v) for v in obj]
    return obj


def resolve_text_cfg(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_TEXT_CFG`` updated with ``cfg`` (``loader_options`` merged per source), checked."""

    out = copy.deepcopy(DEFAULT_TEXT_CFG)
    user = _plain(cfg or {})
    unknown = sorted(set(user) - set(out))
    if unknown:
        raise ConfigError(f"unknown text data key(s) {unknown}; allowed: {sorted(out)}")
    opts = user.pop("loader_options", None) or {}
    out.update(user)
    for name, kw in opts.items():
        out["loader_options"][name] = {**out["loader_options"].get(name, {}), **(kw or {})}

    names = [out["source"], *out["targets"]]
    bad = [n for n in names if n not in SOURCES]
    if bad:
        raise ConfigError(f"unknown text source(s) {bad}; allowed: {sorted(SOURCES)}")
    if SOURCES[out["source"]][1]:
        raise ConfigError(f"text source must be an unlabelled corpus, got {out['source']!r}")
    if out["source"] in out["targets"] or len(set(out["targets"])) != len(out["targets"]):
        raise ConfigError(f"text targets must be distinct and exclude the source: {out['targets']}")
    for key in (
        "vocab_size",
        "seq_len",
        "shots_per_class",
        "pool_per_class",
        "max_unlabelled_blocks",
    ):
        if not isinstance(out[key], int) or out[key] < 1:
            raise ConfigError(f"text data {key} must be a positive integer, got {out[key]!r}")
    for key in ("val_per_class", "test_per_class", "max_eval_blocks"):
        if not isinstance(out[key], int) or out[key] < 1:
            raise ConfigError(f"text data {key} must be a positive integer, got {out[key]!r}")
    if out["seq_len"] < 4:
        raise ConfigError(f"text data seq_len must be at least 4, got {out['seq_len']}")
    if out["vocab_size"] <= len(SPECIAL_TOKENS) + out["limit_alphabet"] // 2:
        raise ConfigError(f"text data vocab_size {out['vocab_size']} is too small")
    if not (0 < out["val_frac"] < 0.5 and 0 < out["test_frac"] < 0.5):
        raise ConfigError("text data val_frac and test_frac must lie in (0, 0.5)")
    msd = out["max_source_docs"]
    if msd is not None and (not isinstance(msd, int) or msd < 10):
        raise ConfigError(
            f"text data max_source_docs must be null or an integer >= 10, got {msd!r}"
        )
    return out


# --------------------------------------------------------------------------- splitting
def _norm_key(text: str) -> str:
    return " ".join(text.lower().split())


def dedupe_docs(docs: Sequence[str]) -> list[str]:
    """Drop repeated documents (same text after lower-casing/whitespace folding), keep order."""
    seen: set[str] = set()
    out = []
    for d in docs:
        k = _norm_key(d)
        if k and k not in seen:
            seen.add(k)
            out.append(d)
    return out


def dedupe_items(items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep the first copy of each text; drop texts that occur with more than one label."""
    labels: dict[str, set[str]] = {}
    for text, label in items:
        labels.setdefault(_norm_key(text), set()).add(label)
    seen: set[str] = set()
    out = []
    for text, label in items:
        k = _norm_key(text)
        if k and k not in seen and len(labels[k]) == 1:
            seen.add(k)
            out.append((text, label))
    return out


def generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded from ``(seed, name)``: each dataset's draws depend on nothing else.

    So adding or removing one target leaves every other target's splits and samples unchanged.
    """

    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _perm(n: int, g: torch.Generator) -> list[int]:

    return torch.randperm(n, generator=g).tolist()


def split_docs(
    n: int, val_frac: float, test_frac: float, g: torch.Generator
) -> dict[str, list[int]]:
    """Shuffle ``range(n)`` and cut it into disjoint train/val/test index lists (each >= 1)."""
    order = _perm(n, g)
    n_val = max(1, round(n * val_frac))
    n_test = max(1, round(n * test_frac))
    if n - n_val - n_test < 1:
        raise ConfigError(f"too few documents ({n}) to split into train/val/test")
    return {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }


def split_items(
    labels: Sequence[str],
    classes: Sequence[str],
    shots: int,
    n_val: int,
    n_test: int,
    g: torch.Generator,
    name: str = "target",
) -> dict[str, list[int]]:
    """Per class: hold out ``n_test`` then ``n_val`` items, sample ``shots`` from the rest.

    Returns index lists ``train`` (the few-shot sample), ``val``, ``test`` and ``pool`` (every
    item not in val/test, which includes ``train``); each list is shuffled across classes.
    """
    by_class: dict[str, list[int]] = {c: [] for c in classes}
    for i, label in enumerate(labels):
        by_class[label].append(i)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": [], "pool": []}
    for c in classes:
        idx = by_class[c]
        need = shots + n_val + n_test
        if len(idx) < need:
            raise ConfigError(
                f"text target {name!r} class {c!r} has {len(idx)} items, fewer than "
                f"pool_per_class + val_per_class + test_per_class = {need}"
            )
        order = [idx[j] for j in _perm(len(idx), g)]
        out["test"] += order[:n_test]
        out["val"] += order[n_test : n_test + n_val]
        pool = order[n_test + n_val :]
        out["pool"] += pool
        out["train"] += pool[:shots]  # pool is already a seeded permutation: a random sample
    return {k: [v[j] for j in _perm(len(v), g)] for k, v in out.items()}


# --------------------------------------------------------------------------- build
def _load(name: str, cfg: Mapping[str, Any]) -> list:

    loader, _ = SOURCES[name]
    return loader(**cfg["loader_options"].get(name, {}))


def _class_counts(labels: torch.Tensor, classes: Sequence[str]) -> dict[str, int]:
    counts = Counter(labels.tolist())
    return {c: int(counts.get(i, 0)) for i, c in enumerate(classes)}


def _build_lm_target(
    name: str, docs: list[str], tok: Tokenizer, cfg: Mapping[str, Any], g: torch.Generator
) -> tuple[dict, dict]:
    docs = dedupe_docs(docs)
    idx = split_docs(len(docs), cfg["val_frac"], cfg["test_frac"], g)
    L = cfg["seq_len"]
    blocks = {
        "unlabelled": lm_blocks(
            tok, [docs[i] for i in idx["train"]], L, cfg["max_unlabelled_blocks"]
        ),
        "lm_val": lm_blocks(tok, [docs[i] for i in idx["val"]], L, cfg["max_eval_blocks"]),
        "lm_test": lm_blocks(tok, [docs[i] for i in idx["test"]], L, cfg["max_eval_blocks"]),
    }
    data = {
        "name": name,
        "task": "lm",
        "seq_len": L,
        "classes": [],
        **blocks,
        # Aliases of the same tensors (torch.save stores shared storage once).
        "train": {"x": blocks["unlabelled"]},
        "val": {"x": blocks["lm_val"]},
        "test": {"x": blocks["lm_test"]},
    }
    info = {
        "task": "lm",
        "docs": {"total": len(docs), **{k: len(v) for k, v in idx.items()}},
        "blocks": {k: int(v.shape[0]) for k, v in blocks.items()},
        "unk_rate": _unk_rate(blocks["unlabelled"], tok),
    }
    return data, info


def _build_cls_target(
    name: str,
    items: list[tuple[str, str]],
    tok: Tokenizer,
    cfg: Mapping[str, Any],
    g: torch.Generator,
) -> tuple[dict, dict]:

    items = dedupe_items(items)
    texts = [t for t, _ in items]
    labels = [label for _, label in items]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ConfigError(f"text target {name!r} has fewer than two classes: {classes}")
    idx = split_items(
        labels,
        classes,
        cfg["pool_per_class"],
        cfg["val_per_class"],
        cfg["test_per_class"],
        g,
        name,
    )
    cid = {c: i for i, c in enumerate(classes)}
    L = cfg["seq_len"]
    data: dict[str, Any] = {
        "name": name,
        "task": "classification",
        "seq_len": L,
        "classes": classes,
    }
    for split in ("train", "val", "test"):
        data[split] = {
            "x": encode_batch(tok, [texts[i] for i in idx[split]], L),
            "y": torch.tensor([cid[labels[i]] for i in idx[split]], dtype=torch.long),
            "text": [texts[i] for i in idx[split]],
        }
    data["unlabelled"] = lm_blocks(
        tok, [texts[i] for i in idx["pool"]], L, cfg["max_unlabelled_blocks"]
    )
    data["lm_val"] = lm_blocks(tok, [texts[i] for i in idx["val"]], L, cfg["max_eval_blocks"])
    data["lm_test"] = lm_blocks(tok, [texts[i] for i in idx["test"]], L, cfg["max_eval_blocks"])
    info = {
        "task": "classification",
        "classes": classes,
        "items": {"total": len(items), "pool": len(idx["pool"])},
        "available_per_class": dict(sorted(Counter(labels).items())),
        "class_counts": {s: _class_counts(data[s]["y"], classes) for s in ("train", "val", "test")},
        "blocks": {k: int(data[k].shape[0]) for k in ("unlabelled", "lm_val", "lm_test")},
        "unk_rate": _unk_rate(data["unlabelled"], tok),
        "truncated_frac_test": _truncated_frac(data["test"]["x"], tok),
    }
    return data, info


def _unk_rate(blocks: torch.Tensor, tok: Tokenizer) -> float:
    if blocks.numel() == 0:
        return 0.0
    return round(float((blocks == tok.token_to_id(UNK)).float().mean()), 6)


def _truncated_frac(ids: torch.Tensor, tok: Tokenizer) -> float:
    # An item filled to the last position lost its tail to truncation (or fitted exactly).
    if ids.numel() == 0:
        return 0.0
    return round(float((ids[:, -1] != tok.token_to_id(PAD)).float().mean()), 4)


def _hashes(obj: Any, prefix: str = "") -> dict[str, str]:
    """sha256 per tensor in a (nested) dict, keyed by dotted path; aliases hashed once each."""

    out: dict[str, str] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[prefix + k] = tensor_sha256(v)
        elif isinstance(v, Mapping):
            out.update(_hashes(v, f"{prefix}{k}."))
    return out


def _sizes(obj: Mapping[str, Any]) -> dict[str, list[int]]:

    out: dict[str, list[int]] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k] = list(v.shape)
        elif isinstance(v, Mapping):
            out.update({f"{k}.{kk}": vv for kk, vv in _sizes(v).items()})
    return out


def build_text_data(
    cfg: Mapping[str, Any] | None, out_dir: str | Path, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Build tokenizer, source LM blocks and target sets into ``out_dir``; return the manifest.

    ``cfg`` overrides :data:`DEFAULT_TEXT_CFG`. ``seed`` drives every random choice (source
    document sample and splits, target splits, few-shot samples) through one generator per
    dataset (:func:`generator`), so a target's data depends only on the seed, its own options and
    the tokenizer (i.e. the source options), not on which other targets are built. The directory is built in a
    temporary sibling and swapped in whole, so a failed build leaves the old one untouched.
    """

    cfg = resolve_text_cfg(cfg)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    L = cfg["seq_len"]
    targets = list(cfg["targets"])

    bar = Progress(
        TextColumn("[bold]text data[/] {task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
        transient=False,
    )
    manifest: dict[str, Any] = {"kind": "text", "seed": int(seed), "cfg": cfg}
    with bar, atomic_dir(out_dir) as tmp:
        task = bar.add_task(f"source {cfg['source']}", total=len(targets) + 2)

        # Source: sample documents, split by document, train the tokenizer on train only.
        g = generator(seed, f"source/{cfg['source']}")
        docs = dedupe_docs(_load(cfg["source"], cfg))
        n_all = len(docs)
        chosen = _perm(n_all, g)
        if cfg["max_source_docs"] is not None:
            chosen = chosen[: cfg["max_source_docs"]]
        sidx = split_docs(len(chosen), cfg["val_frac"], cfg["test_frac"], g)
        sdoc = {k: [chosen[i] for i in v] for k, v in sidx.items()}
        tok = train_tokenizer(
            [docs[i] for i in sdoc["train"]],
            cfg["vocab_size"],
            cfg["min_frequency"],
            cfg["limit_alphabet"],
        )
        tok_path = tmp / "tokenizer.json"
        tok.save(str(tok_path))
        tok_hash = file_sha256(tok_path)
        source = {
            k: {"x": lm_blocks(tok, [docs[i] for i in sdoc[k]], L)}
            for k in ("train", "val", "test")
        }
        save_tensors(tmp / "source.pt", source)
        manifest["tokenizer"] = {
            "file": "tokenizer.json",
            "sha256": tok_hash,
            "type": "BPE",
            "vocab_size": tok.get_vocab_size(),
            "special_ids": special_ids(tok),
            "trained_on": f"{cfg['source']}/train",
        }
        manifest["source"] = {
            "name": cfg["source"],
            "file": "source.pt",
            "docs": {"available": n_all, **{k: len(v) for k, v in sdoc.items()}},
            "blocks": {k: int(v["x"].shape[0]) for k, v in source.items()},
            "tokens": {k: int(v["x"].numel()) for k, v in source.items()},
            "doc_index": {k: sorted(v) for k, v in sdoc.items()},
            "sha256": _hashes(source),
        }
        bar.advance(task)

        manifest["targets"] = {}
        for name in targets:
            bar.update(task, description=f"target {name}")
            raw = _load(name, cfg)
            g = generator(seed, f"target/{name}")
            if SOURCES[name][1]:
                data, info = _build_cls_target(name, raw, tok, cfg, g)
            else:
                data, info = _build_lm_target(name, raw, tok, cfg, g)
            rel = f"targets/{name}.pt"
            save_tensors(tmp / rel, data)
            manifest["targets"][name] = {
                "file": rel,
                **info,
                "shapes": _sizes(data),
                "sha256": _hashes(data),
            }
            bar.advance(task)

        bar.update(task, description="manifest")
        manifest["files"] = {
            p.relative_to(tmp).as_posix(): file_sha256(p)
            for p in [*sorted(tmp.rglob("*.pt")), tok_path]
        }
        # One hash for the whole dataset, for run tags: over the file hashes (tokenizer included).
        manifest["data_hash"] = hashlib.sha256(
            json.dumps(manifest["files"], sort_keys=True).encode()
        ).hexdigest()
        manifest["hash"] = manifest["data_hash"]
        manifest["datasets"] = {
            "source": {"splits": dict(manifest["source"]["blocks"])},
            **{
                name: {"splits": {s: shapes[f"{s}.x"][0] for s in ("train", "val", "test")}}
                for name, shapes in ((n, t["shapes"]) for n, t in manifest["targets"].items())
            },
        }
        write_json(tmp / "manifest.json", manifest)
        bar.advance(task)
    manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
    return manifest

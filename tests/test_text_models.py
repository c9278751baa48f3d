"""Text models: shapes, the backbone interface, padding invariance, causality, weight tying."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from transferlab.models.text_decoder import TextDecoder
from transferlab.models.text_encoder import SelfAttention, TextEncoder

V, L = 97, 24
SMALL = {"vocab_size": V, "max_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 4}


def _ids(batch: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, V, (batch, length), generator=g)  # ids >= 5: no special tokens


@pytest.fixture
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(**SMALL).eval()


@pytest.fixture
def decoder() -> TextDecoder:
    torch.manual_seed(0)
    return TextDecoder(**SMALL).eval()


def test_encoder_shapes(encoder: TextEncoder) -> None:
    ids = _ids(length=L)
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert encoder(ids).shape == (3, 32)
    assert encoder.forward_tokens(ids, mask).shape == (3, L, 32)
    assert encoder.mlm_logits(ids, mask).shape == (3, L, V)
    assert encoder.feature_dim == 32


def test_decoder_shapes(decoder: TextDecoder) -> None:
    ids = _ids(length=L)
    assert decoder(ids).shape == (3, 32)
    assert decoder(ids, ids != 0).shape == (3, 32)
    assert decoder.lm_logits(ids).shape == (3, L, V)
    assert TextDecoder(**SMALL, pool="mean")(ids).shape == (3, 32)
    with pytest.raises(ValueError, match="pool"):
        TextDecoder(**SMALL, pool="cls")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [TextEncoder, TextDecoder])
def test_blocks_interface_and_freezing(cls: type) -> None:
    model = cls(**SMALL)
    assert isinstance(model.blocks, torch.nn.ModuleList)
    assert model.num_blocks == SMALL["n_layers"] + 1
    assert model.blocks[0].tok is model.token_embedding
    for p in model.blocks[:2].parameters():  # freezing depth 2: embeddings + first layer
        p.requires_grad_(False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("blocks.0.", "blocks.1.")) for n in trainable)
    assert any(n.startswith("blocks.2.") for n in trainable)


def test_default_sizes_are_small() -> None:
    for model in (TextEncoder(4000), TextDecoder(4000)):
        n = sum(p.numel() for p in model.parameters())
        assert 0.5e6 < n < 3e6
        assert model.feature_dim == 128 and model.num_blocks == 5


def test_encoder_ignores_padding(encoder: TextEncoder) -> None:
    ids = _ids(batch=2, length=10)
    padded = F.pad(ids, (0, 6), value=0)
    assert torch.allclose(encoder(ids), encoder(padded), atol=1e-5)
    h, hp = encoder.forward_tokens(ids), encoder.forward_tokens(padded, padded != 0)
    assert torch.allclose(h, hp[:, :10], atol=1e-5)
    # an explicit mask over the real tokens gives the same as the default (ids != pad_id)
    assert torch.allclose(encoder(padded, padded != 0), encoder(padded), atol=1e-6)
    # without the mask the pads would be attended to, which changes the features
    everything = torch.ones_like(padded, dtype=torch.bool)
    assert not torch.allclose(encoder.forward_tokens(padded, everything)[:, :10], h, atol=1e-4)


def test_encoder_is_bidirectional(encoder: TextEncoder) -> None:
    ids = _ids(batch=1, length=10)
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] + 1 - 5) % (V - 5) + 5
    h, hc = encoder.forward_tokens(ids), encoder.forward_tokens(changed)
    assert not torch.allclose(h[:, 0], hc[:, 0])


def test_all_padding_row_is_finite(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = torch.zeros(2, 6, dtype=torch.long)
    ids[1, :3] = 7
    assert torch.isfinite(encoder(ids)).all()
    assert torch.isfinite(decoder(ids)).all()


def test_decoder_is_causal(decoder: TextDecoder) -> None:
    ids = _ids(batch=2, length=L)
    changed = ids.clone()
    t = 15
    changed[:, t] = (ids[:, t] + 1 - 5) % (V - 5) + 5
    logits, logits_c = decoder.lm_logits(ids), decoder.lm_logits(changed)
    assert torch.allclose(logits[:, :t], logits_c[:, :t], atol=1e-6)
    assert not torch.allclose(logits[:, t:], logits_c[:, t:], atol=1e-4)


def test_decoder_pools_last_real_token(decoder: TextDecoder) -> None:
    ids = _ids(batch=2, length=10)
    padded = F.pad(ids, (0, 5), value=0)
    feats = decoder(padded)
    assert torch.allclose(feats, decoder.forward_tokens(ids)[:, -1], atol=1e-5)
    ragged = padded.clone()
    ragged[1, 7:] = 0
    assert torch.allclose(decoder(ragged)[1], decoder.forward_tokens(ids[1:, :7])[0, -1], atol=1e-5)


def test_causal_attention_with_key_mask_stays_causal() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, dropout=0.0, causal=True).eval()
    x = torch.randn(2, 5, 16)
    full = torch.ones(2, 5, dtype=torch.bool)
    assert torch.allclose(attn(x), attn(x, full), atol=1e-6)


def test_heads_are_tied_to_embeddings() -> None:
    enc, dec = TextEncoder(**SMALL), TextDecoder(**SMALL)
    ids = _ids(batch=2, length=8)
    for logits in (enc.mlm_logits(ids), dec.lm_logits(ids)):
        logits.sum().backward()
    assert enc.token_embedding.weight.grad is not None
    assert dec.token_embedding.weight.grad is not None
    # tied, not copied: the only (V, D) matrix in either model is the token embedding
    for model in (enc, dec):
        big = [n for n, p in model.named_parameters() if p.shape == (V, SMALL["d_model"])]
        assert big == ["blocks.0.tok.weight"]


def test_too_long_sequence_is_refused(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="max_len"):
        encoder(_ids(batch=1, length=40))


@pytest.mark.parametrize("cls", [TextEncoder, TextDecoder])
def test_a_few_steps_reduce_lm_loss(cls: type) -> None:
    torch.manual_seed(0)
    model = cls(**{**SMALL, "dropout": 0.0})
    ids = _ids(batch=8, length=16, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_fn() -> torch.Tensor:
        if isinstance(model, TextEncoder):
            masked = ids.clone()
            masked[:, ::3] = 4  # [MASK] every third token; predict the originals there
            logits = model.mlm_logits(masked)[:, ::3]
            return F.cross_entropy(logits.reshape(-1, V), ids[:, ::3].reshape(-1))
        logits = model.lm_logits(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))

    first = loss_fn().item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first

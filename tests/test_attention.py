"""Per-sample attention for packed rows gives what each sample alone gives, and steps aside
for everything else."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from tunelab.attention import NAME, sample_spans, supports, use_packed_attention

# three samples of 5, 3 and 6 tokens in one row, then a tail of 2 that is its own "sample"
LENGTHS = (5, 3, 6, 2)


def _models(model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    plain = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    packed = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    assert use_packed_attention(packed)
    assert packed.config._attn_implementation == NAME
    return plain.train(), packed.train()


def _packed_row() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 151_000, (1, sum(LENGTHS)), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    return ids, positions


def test_a_packed_row_equals_each_sample_alone_in_outputs_and_gradients(qwen3_dir: Path) -> None:
    plain, packed = _models(qwen3_dir)
    ids, positions = _packed_row()
    logits = packed(input_ids=ids, position_ids=positions, use_cache=False).logits
    logits.pow(2).sum().backward()
    start, alone = 0, []
    for length in LENGTHS:
        alone.append(plain(input_ids=ids[:, start : start + length], use_cache=False).logits)
        start += length
    torch.cat(alone, dim=1).pow(2).sum().backward()
    torch.testing.assert_close(logits, torch.cat(alone, dim=1), rtol=1e-5, atol=1e-5)
    # fp32 sums over a 151,936-entry vocabulary in another order: ~2e-4 apart, as
    # transformers' own block-diagonal mask is; attending across samples would be ~1
    for (name, param), reference in zip(packed.named_parameters(), plain.parameters(), strict=True):
        error = (param.grad - reference.grad).norm() / reference.grad.norm()
        assert error < 1e-3, (name, error.item())


def test_padding_masks_and_generation_go_to_sdpa(qwen3_dir: Path) -> None:
    plain, packed = _models(qwen3_dir)
    plain.eval(), packed.eval()
    ids = torch.randint(0, 151_000, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as in batched generation
    with torch.no_grad():
        torch.testing.assert_close(
            packed(input_ids=ids, attention_mask=mask).logits,
            plain(input_ids=ids, attention_mask=mask).logits,
        )
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 151643}
    assert torch.equal(
        packed.generate(ids, attention_mask=mask, **settings),
        plain.generate(ids, attention_mask=mask, **settings),
    )


def test_spans_follow_position_resets() -> None:
    _, positions = _packed_row()
    assert sample_spans(positions, torch.Size([1, 4, 16, 8])) == [
        [(0, 5), (5, 8), (8, 14), (14, 16)]
    ]
    assert sample_spans(None, torch.Size([1, 4, 16, 8])) is None


def test_sliding_window_models_keep_their_attention() -> None:
    sliding = Qwen3Config(
        num_hidden_layers=2, use_sliding_window=True, sliding_window=4, max_window_layers=0
    )
    assert not supports(sliding)
    assert supports(Qwen3Config(num_hidden_layers=2))

"""The SFT loss: packing and logits-only-where-labelled change speed, never the numbers."""

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunelab.data.batching import collate
from tunelab.data.encode import IGNORE_INDEX, encode_chat
from tunelab.tasks.sft import CausalLMLoss, chunked_cross_entropy


def encoded_samples(tokenizer, count: int = 6) -> list:
    chats = [
        [
            {"role": "user", "content": f"问题{i}" * (1 + i)},
            {"role": "assistant", "content": "回答" * (2 + i)},
        ]
        for i in range(count)
    ]
    return [encode_chat(tokenizer, chat, 256) for chat in chats]


def plain_loss_sum(model, sample) -> torch.Tensor:
    ids = torch.tensor([sample.input_ids])
    labels = torch.tensor([sample.labels])
    logits = model(ids).logits[:, :-1]
    return F.cross_entropy(
        logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def test_packed_loss_equals_the_unpacked_loss(qwen3_dir, qwen3_tok) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(qwen3_dir).eval()
    samples = encoded_samples(qwen3_tok)
    loss = CausalLMLoss(model)
    packed_sum, packed_count = loss(collate(samples, qwen3_tok.pad_token_id, pack_length=96))
    padded_sum, padded_count = loss(collate(samples, qwen3_tok.pad_token_id, pack_length=None))
    reference = sum(plain_loss_sum(model, s) for s in samples)
    expected_count = sum(s.target_tokens for s in samples)
    assert packed_count.item() == padded_count.item() == expected_count
    torch.testing.assert_close(
        packed_sum / packed_count, reference / expected_count, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        padded_sum / padded_count, reference / expected_count, rtol=0, atol=1e-5
    )


def test_chunked_head_loss_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1000, bias=False)
    hidden = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (50,))
    plain = F.cross_entropy(head(hidden), targets, reduction="sum")
    grad_plain = torch.autograd.grad(plain, [hidden, head.weight])
    chunked, count = chunked_cross_entropy(hidden, targets, head, chunk=7)
    grad_chunked = torch.autograd.grad(chunked, [hidden, head.weight])
    assert count.item() == 50
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-5)
    for a, b in zip(grad_plain, grad_chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

"""The SFT loss: packing and logits-only-where-labelled change speed, never the numbers."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunelab.cpu.attention import use_cpu_attention
from tunelab.data.batching import collate, forward_batches
from tunelab.data.encode import IGNORE_INDEX, encode_chat
from tunelab.tasks.sft.loss import CausalLMLoss, chunked_cross_entropy


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
    assert use_cpu_attention(model)
    (segmented,) = forward_batches(samples, qwen3_tok.pad_token_id, 96, 4096, segmented=True)
    assert segmented.input_ids.shape[0] == 1 and segmented.cu_seq_lens.numel() == 7
    segmented_sum, segmented_count = loss(segmented)
    assert segmented_count.item() == expected_count
    torch.testing.assert_close(
        segmented_sum / segmented_count, reference / expected_count, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        padded_sum / padded_count, reference / expected_count, rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("bias", [False, True], ids=["gradient-in-forward", "autograd"])
def test_chunked_head_loss_gives_the_same_loss_and_gradients(bias: bool) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1000, bias=bias)
    hidden = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (50,))
    plain = F.cross_entropy(head(hidden), targets, reduction="sum")
    grad_plain = torch.autograd.grad(2.5 * plain, [hidden, head.weight])
    chunked, count = chunked_cross_entropy(hidden, targets, head, chunk=7)
    grad_chunked = torch.autograd.grad(2.5 * chunked, [hidden, head.weight])
    assert count.item() == 50
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-5)
    for a, b in zip(grad_plain, grad_chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(hidden, targets, head, 7)[0], plain)


def test_the_loss_keeps_no_logits_for_backward() -> None:
    head = torch.nn.Linear(8, 20_000, bias=False).requires_grad_(False)
    hidden = torch.randn(300, 8, requires_grad=True)
    targets = torch.randint(0, 20_000, (300,))
    kept: list[int] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        chunked_cross_entropy(hidden, targets, head, chunk=50)[0].backward()
    # the gradient for hidden is all it keeps: 300 x 8, not 300 x 20,000 logits
    assert max(kept) == hidden.numel()


def test_an_sft_run_refuses_a_text_template_it_would_ignore(tmp_path, qwen3_tok) -> None:
    from tunelab.config_file import validate_config
    from tunelab.errors import TunelabError
    from tunelab.tasks.sft.task import SftTask

    (tmp_path / "t.jsonl").write_text('{"instruction": "问", "output": "答"}\n', encoding="utf-8")
    data = {"train": str(tmp_path / "t.jsonl"), "text_template": "Review: {text} Answer:"}
    config = validate_config({"data": data}, "t.yaml")
    with pytest.raises(TunelabError, match="text_template frames the texts of task classify"):
        SftTask().prepare(config, qwen3_tok)

"""Ranking candidates by a best-first search over their token trie: the exact top-k of
scoring every candidate alone, without expanding every branch."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from tunelab import ranking
from tunelab.data.encode import encode_prompt
from tunelab.ranking import rank_candidates


def alone(model, prompt: list[int], tokens: list[int], boundary: list[int]) -> float:
    """log P(tokens, then a boundary token | prompt), from one plain forward pass."""
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([prompt + tokens])).logits[0].log_softmax(-1)
    start = len(prompt) - 1
    score = sum(float(logprobs[start + i, token]) for i, token in enumerate(tokens))
    return score + float(torch.logsumexp(logprobs[start + len(tokens), boundary], 0))


def exhaustive(
    model, prompt: list[int], tokens: list[list[int]], candidates: list[str], boundary: list[int]
) -> list[tuple[float, str]]:
    """Every candidate scored alone, best first: what the search must reproduce."""
    scored = zip(tokens, candidates, strict=True)
    return sorted(((alone(model, prompt, t, boundary), c) for t, c in scored), reverse=True)


def test_the_search_finds_the_exact_top_k_and_expands_a_fraction(qwen3_dir, qwen3_tok) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(qwen3_dir).eval()
    # 300 targets sharing their first tokens, as film titles or app names do
    candidates = [f"观看电影 | 电影{i // 20}之{i % 20}号" for i in range(300)] + [
        "启动应用 | QQ.exe"
    ]
    prompt = encode_prompt(qwen3_tok, [{"role": "user", "content": "下一个事件？"}])
    boundary = [qwen3_tok.eos_token_id]
    expanded: list[int] = []
    original = model.forward

    def counting(*args, **kwargs):
        expanded.append(kwargs["input_ids"].numel())
        return original(*args, **kwargs)

    model.forward = counting
    ranked = rank_candidates(model, qwen3_tok, prompt, candidates, boundary, depth=10, chunk=16)
    model.forward = original
    tokens = [qwen3_tok(c, add_special_tokens=False)["input_ids"] for c in candidates]
    truth = exhaustive(model, prompt, tokens, candidates, boundary)
    assert [c for c, _ in ranked[:10]] == [c for _, c in truth[:10]]
    for (_, score), (exact, _) in zip(ranked[:10], truth[:10], strict=True):
        assert abs(score - exact) < 1e-4
    assert sorted(c for c, _ in ranked) == sorted(candidates)
    trie_nodes = len({tuple(t[:i]) for t in tokens for i in range(1, len(t) + 1)})
    # tokens computed after the prompt (its first pass also takes the shared stem): far
    # fewer than the trie's nodes, which scoring every branch would compute
    assert sum(expanded) - len(prompt) < trie_nodes


def test_eager_attention_takes_the_tree_mask_as_scores_to_add(qwen3_dir, qwen3_tok) -> None:
    """The tree mask is boolean for SDPA and additive for eager attention: both rank alike."""
    torch.manual_seed(0)
    candidates = [f"访问网站 | site{i}.com" for i in range(40)] + ["启动应用 | QQ.exe"]
    prompt = encode_prompt(qwen3_tok, [{"role": "user", "content": "下一个事件？"}])
    boundary = [qwen3_tok.eos_token_id]
    ranked = {}
    for implementation in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(
            qwen3_dir, attn_implementation=implementation
        ).eval()
        ranked[implementation] = rank_candidates(
            model, qwen3_tok, prompt, candidates, boundary, depth=5, chunk=8
        )
    tokens = qwen3_tok(ranked["eager"][0][0], add_special_tokens=False)["input_ids"]
    assert abs(ranked["eager"][0][1] - alone(model, prompt, tokens, boundary)) < 1e-4
    for (name, score), (same, other) in zip(ranked["sdpa"][:5], ranked["eager"][:5], strict=True):
        assert name == same and abs(score - other) < 1e-4


def test_a_pass_reads_only_the_prompt_its_ancestors_and_itself(
    qwen3_dir, qwen3_tok, monkeypatch
) -> None:
    """Later passes attend over a fraction of the grown sequence, and rank as before."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(qwen3_dir).eval()
    candidates = [f"观看电影 | 电影{i // 20}之{i % 20}号" for i in range(200)]
    prompt = encode_prompt(qwen3_tok, [{"role": "user", "content": "下一个事件？"}])
    boundary = [qwen3_tok.eos_token_id]
    read: list[tuple[int, int]] = []  # (columns returned, sequence length), every layer
    original = ranking._TreeLayer.update

    def recording(layer, keys, values, *args, **kwargs):
        out = original(layer, keys, values, *args, **kwargs)
        read.append((out[0].shape[-2], layer.length))
        return out

    monkeypatch.setattr(ranking._TreeLayer, "update", recording)
    ranked = rank_candidates(model, qwen3_tok, prompt, candidates, boundary, depth=10, chunk=16)
    tokens = [qwen3_tok(c, add_special_tokens=False)["input_ids"] for c in candidates]
    truth = exhaustive(model, prompt, tokens, candidates, boundary)
    assert [c for c, _ in ranked[:10]] == [c for _, c in truth[:10]]
    layers = model.config.num_hidden_layers
    first, later = read[:layers], read[layers:]
    assert all(columns == length for columns, length in first)  # the prompt's pass: all
    assert later and all(columns <= length for columns, length in later)
    assert later[-1][0] < later[-1][1] / 2

"""Ranking candidate events with the model: pruned scoring equals exhaustive scoring."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tunelab.behavior.llm import boundary_tokens, event_grammar
from tunelab.data.encode import encode_prompt
from tunelab.ranking import rank_candidates


def test_pruned_ranking_matches_scoring_every_candidate(qwen3_dir: Path, qwen3_tok) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(qwen3_dir).eval()
    targets = ["LAX", "LAS", "ORD", "ATL", "BOS", "SFO", "SEA", "MIA", "DFW", "DEN", "IAH", "MSP"]
    candidates = [f"depart | {t}" for t in targets] + ["启动应用 | QQ.exe"]
    prompt = encode_prompt(qwen3_tok, [{"role": "user", "content": "next event?"}])
    boundary = boundary_tokens(qwen3_tok)
    every = rank_candidates(
        model, qwen3_tok, prompt, candidates, boundary, depth=len(candidates), chunk=4
    )
    pruned = rank_candidates(model, qwen3_tok, prompt, candidates, boundary, depth=3, chunk=2)
    assert [c for c, _ in pruned[:3]] == [c for c, _ in every[:3]]
    for (name, score), (same, exact) in zip(pruned[:3], every[:3], strict=True):
        assert name == same and abs(score - exact) < 1e-4
    assert sorted(c for c, _ in pruned) == sorted(candidates)
    # scoring is a proper probability over a prefix-free candidate set: totals stay below 1
    assert torch.tensor([s for _, s in every]).exp().sum() < 1.0


def test_grammar_closes_targets_per_action_and_adds_the_delay() -> None:
    vocabulary = {
        "actions": {"启动应用": ["QQ.exe", "Code.exe"], "访问网站": ["github.com"]},
        "details": ["", "时长: 5.26秒"],
    }
    grammar = event_grammar(vocabulary, predict_time=True)
    assert '"启动应用 | " target0' in grammar and '"QQ.exe" | "Code.exe"' in grammar
    assert '"@ +"' in grammar.replace('" @ +"', '"@ +"')
    import xgrammar as xgr

    xgr.Grammar.from_ebnf(grammar)  # parses

"""Ranking thousands of candidate targets for next-event prediction: seconds per row on the
embedded model, with the top-k checked against scoring every candidate alone on a few rows.

    python -m bench.ranking [--candidates 2000] [--rows 10] [--depth 10]

The candidates look like a film catalogue (`观看电影 | Title (year)`): they share their first
tokens, which is what made chunked scoring prune little. Prints a result line; run it with
another tunelab source on PYTHONPATH to compare releases.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

ADJECTIVES = ["Silent", "Last", "Red", "Lost", "Golden", "Dark", "Little", "Secret", "Wild", "Blue"]
NOUNS = ["River", "City", "Garden", "Night", "Road", "House", "Summer", "Star", "Game", "Heart"]


def catalogue(size: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    titles: set[str] = set()
    while len(titles) < size:
        words = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        titles.add(f"观看电影 | The {words} {rng.randint(2, 9)} ({rng.randint(1950, 2024)})")
    return sorted(titles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args()
    try:
        from tunelab.ranking import rank_candidates
    except ImportError:  # releases before tunelab.ranking
        from tunelab.generate import rank_candidates
    from tunelab.config import ModelConfig
    from tunelab.data.encode import encode_prompt

    try:
        from tunelab.models.load import load_causal_lm, load_tokenizer
        from tunelab.models.resolve import resolve_model
    except ImportError:
        from tunelab.models import load_causal_lm, load_tokenizer, resolve_model

    folder = resolve_model(ModelConfig())
    tokenizer = load_tokenizer(folder)
    model = load_causal_lm(folder, ModelConfig(), torch.float32).eval()
    candidates = catalogue(args.candidates)
    boundary = sorted(
        {*tokenizer(" |", add_special_tokens=False)["input_ids"][:1], tokenizer.eos_token_id}
    )
    rng = random.Random(1)
    seconds = []
    for row in range(args.rows):
        history = "\n".join(rng.sample(candidates, 5))
        question = f"最近的事件：\n{history}\n下一个事件是什么？"
        prompt = encode_prompt(tokenizer, [{"role": "user", "content": question}])
        started = time.perf_counter()
        ranked = rank_candidates(model, tokenizer, prompt, candidates, boundary, args.depth)
        seconds.append(time.perf_counter() - started)
        print(
            f"row {row}: {seconds[-1]:.2f} s, top: {ranked[0][0]} ({ranked[0][1]:.3f})", flush=True
        )
    mean = sum(seconds) / len(seconds)
    print(
        f"{args.candidates} candidates, depth {args.depth}, {args.rows} rows: "
        f"{mean:.2f} s per row (min {min(seconds):.2f}, max {max(seconds):.2f})"
    )


if __name__ == "__main__":
    main()

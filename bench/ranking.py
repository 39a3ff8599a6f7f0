"""Ranking thousands of candidate targets for next-event prediction: seconds per row on the
embedded model, with the top-k checked against scoring every candidate alone on a few rows.

    python -m bench.ranking [--candidates 2000] [--rows 10] [--depth 10] [--precision bf16]
    python -m bench.ranking --run runs/NAME [--rows 10] [--precision fp32]

The candidates look like a film catalogue (`观看电影 | Title (year)`): they share their first
tokens, which is what made chunked scoring prune little. On the base model (the first form)
probability is spread over the whole catalogue, the hardest case; `--run` ranks a trained
behaviour run's test prompts against its vocabulary of targets, as `tunelab behavior eval`
does. Prints a result line; run it with another tunelab source on PYTHONPATH to compare
releases.

Each row also says how many prefixes the search computed, in how many forward passes, and
how many of them any exact search must compute: those whose score beats the final
``depth``-th candidate's (a prefix's score bounds every candidate below it, and no cheaper
proof that a candidate is out of the top exists).
"""

from __future__ import annotations

import argparse
import random
import time

ADJECTIVES = ["Silent", "Last", "Red", "Lost", "Golden", "Dark", "Little", "Secret", "Wild", "Blue"]
NOUNS = ["River", "City", "Garden", "Night", "Road", "House", "Summer", "Star", "Game", "Heart"]


def catalogue(size: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    titles: set[str] = set()
    while len(titles) < size:
        words = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        titles.add(f"观看电影 | The {words} {rng.randint(2, 9)} ({rng.randint(1950, 2024)})")
    return sorted(titles)


class SearchCounts:
    """Prefixes computed, forward passes and prefixes no exact search can skip, per row,
    read off ``tunelab.ranking``'s search while it runs."""

    def __init__(self) -> None:
        self.computed = self.passes = 0
        self.scores: list[float] = []
        self.threshold = float("-inf")
        try:
            from tunelab.ranking import _Search
        except ImportError:  # releases before the trie search
            return
        expand, open_, run = _Search._expand, _Search._open, _Search.run
        counts = self

        def counted_expand(search, rows):
            counts.computed, counts.passes = counts.computed + len(rows), counts.passes + 1
            return expand(search, rows)

        def counted_open(search, node, score, logprobs):
            counts.scores.append(score)
            return open_(search, node, score, logprobs)

        def counted_run(search, root):
            run(search, root)
            counts.threshold = search.threshold

        _Search._expand, _Search._open, _Search.run = counted_expand, counted_open, counted_run

    def line(self) -> str:
        """This row's counts; then starts counting the next."""
        needed = sum(score > self.threshold for score in self.scores[1:])  # not the stem
        text = f"{self.computed} prefixes in {self.passes} passes ({needed} unavoidable)"
        self.computed = self.passes = 0
        self.scores = []
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--run", help="a behaviour run: its model, test prompts and targets")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], help="default: what `auto` picks on this machine"
    )
    args = parser.parse_args()
    if args.run:
        trained_run(args.run, args.rows, args.depth, args.precision)
        return
    try:
        from tunelab.ranking import rank_candidates
    except ImportError:  # releases before tunelab.ranking
        from tunelab.generate import rank_candidates
    from tunelab.data.encode import encode_prompt
    from tunelab.use.open import open_model

    # placed as tunelab places a model it uses: bf16 frozen matmuls where bf16 is chosen
    opened = open_model("smollm2-135m", args.precision)
    model, tokenizer = opened.model, opened.tokenizer
    print(f"base model in {opened.precision}", flush=True)
    candidates = catalogue(args.candidates)
    boundary = sorted(
        {*tokenizer(" |", add_special_tokens=False)["input_ids"][:1], tokenizer.eos_token_id}
    )
    rng = random.Random(1)
    seconds = []
    counts = SearchCounts()
    for row in range(args.rows):
        history = "\n".join(rng.sample(candidates, 5))
        question = f"最近的事件：\n{history}\n下一个事件是什么？"
        prompt = encode_prompt(tokenizer, [{"role": "user", "content": question}])
        started = time.perf_counter()
        ranked = rank_candidates(model, tokenizer, prompt, candidates, boundary, args.depth)
        seconds.append(time.perf_counter() - started)
        print(
            f"row {row}: {seconds[-1]:.2f} s, {counts.line()}, "
            f"top: {ranked[0][0]} ({ranked[0][1]:.3f})",
            flush=True,
        )
    mean = sum(seconds) / len(seconds)
    print(
        f"{args.candidates} candidates, depth {args.depth}, {args.rows} rows: "
        f"{mean:.2f} s per row (min {min(seconds):.2f}, max {max(seconds):.2f})"
    )


def trained_run(run_root: str, rows: int, depth: int, precision: str | None) -> None:
    """Seconds per row and top-1 hits ranking a behaviour run's test rows."""
    from pathlib import Path

    from tunelab.behavior.llm import boundary_tokens, prompt_ids
    from tunelab.behavior.samples import read_split
    from tunelab.behavior.workflow import candidate_events, data_folder
    from tunelab.use.open import open_run

    folder, record = data_folder(Path(run_root))
    test = read_split(folder, "test")[:rows]
    opened = open_run(run_root, precision=precision)
    if hasattr(opened, "merge_adapter"):  # releases before it ranked on the unmerged adapter
        opened.merge_adapter()
    candidates = candidate_events(record["vocabulary"])
    boundary = boundary_tokens(opened.tokenizer)
    seconds, hits = [], 0
    counts = SearchCounts()
    for row, prompt in zip(test, prompt_ids(opened.tokenizer, test), strict=True):
        started = time.perf_counter()
        ranked = opened.rank(prompt, candidates, boundary, depth)
        seconds.append(time.perf_counter() - started)
        hits += row["output"].startswith(ranked[0][0])
        print(
            f"{seconds[-1]:.2f} s, {counts.line()}, top: {ranked[0][0]} ({ranked[0][1]:.3f})",
            flush=True,
        )
    print(
        f"{run_root}: {len(candidates)} candidates, depth {depth}, {len(test)} rows: "
        f"{sum(seconds) / len(seconds):.2f} s per row (min {min(seconds):.2f}, "
        f"max {max(seconds):.2f}); top-1 hits {hits}/{len(test)}"
    )


if __name__ == "__main__":
    main()

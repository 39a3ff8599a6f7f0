"""Dispatch simulation: replay held-out events, keep at most K apps warm, count the hits.

Before each event a policy names the apps to keep warm; the event is a hit when its app is
among them. A preload is an app a policy warms that was not warm before; it is wasted when
it leaves the warm set (or the replay ends) without having been used. Each user's replay
starts cold. Predictive policies fill slots their ranking leaves empty with the apps most
used in training, so every policy uses all K slots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

LRU = "LRU"
MOST_FREQUENT = "most-frequent apps"


@dataclass
class Tally:
    """The outcome of one policy at one capacity."""

    policy: str
    capacity: int
    hits: int = 0
    misses: int = 0
    preloads: int = 0
    wasted: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "capacity": self.capacity,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
            "preloads": self.preloads,
            "wasted_preloads": self.wasted,
        }


def app_frequencies(train_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Apps by how often training events used them, commonest first."""
    counts = Counter(row["app"] for row in train_rows if row.get("app"))
    return [app for app, _ in counts.most_common()]


def replay(
    rows: Sequence[dict[str, Any]],
    policy: str,
    capacity: int,
    fallback: Sequence[str],
    rankings: Sequence[Sequence[str]] | None = None,
) -> Tally:
    """One policy over rows sorted by user and time; `rankings` (apps, best first, one list
    per row) drive predictive policies, LRU and most-frequent need none."""
    tally = Tally(policy, capacity)
    indexed = list(enumerate(rows))
    for _, group in groupby(indexed, key=lambda item: item[1]["user"]):
        _replay_user(list(group), policy, capacity, fallback, rankings, tally)
    return tally


def _replay_user(
    group: list[tuple[int, dict[str, Any]]],
    policy: str,
    capacity: int,
    fallback: Sequence[str],
    rankings: Sequence[Sequence[str]] | None,
    tally: Tally,
) -> None:
    recent = [a for a in group[0][1].get("recent_apps", []) if a]
    warm: list[str] = []
    unused: set[str] = set()
    for index, row in group:
        if policy == LRU:
            warm = list(dict.fromkeys(reversed(recent)))[:capacity]
        else:
            ranked = rankings[index] if rankings is not None and policy != MOST_FREQUENT else []
            chosen = list(dict.fromkeys([*ranked, *fallback]))[:capacity]
            added = [a for a in chosen if a not in warm]
            tally.preloads += len(added)
            tally.wasted += sum(a in unused for a in warm if a not in chosen)
            unused = {a for a in unused if a in chosen} | set(added)
            warm = chosen
        app = row.get("app")
        if app:
            if app in warm:
                tally.hits += 1
                unused.discard(app)
            else:
                tally.misses += 1
            recent.append(app)
    tally.wasted += len(unused)


def simulate_all(
    rows: Sequence[dict[str, Any]],
    fallback: Sequence[str],
    rankings: dict[str, Sequence[Sequence[str]]],
    capacities: Sequence[int],
) -> list[Tally]:
    """Every policy at every capacity: LRU, most-frequent, and each ranked predictor."""
    results = []
    for capacity in capacities:
        results.append(replay(rows, LRU, capacity, fallback))
        results.append(replay(rows, MOST_FREQUENT, capacity, fallback))
        for name, ranked in rankings.items():
            results.append(replay(rows, name, capacity, fallback, ranked))
    return results


def plot_hit_rates(tallies: Sequence[Tally], path: Any, title: str) -> None:
    """Hit rate against capacity, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.report import find_cjk_font

    font = find_cjk_font()
    if font:
        plt.rcParams["font.family"] = font
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for policy in dict.fromkeys(t.policy for t in tallies):
        points = sorted((t.capacity, t.hit_rate) for t in tallies if t.policy == policy)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=policy)
    axes.set_xlabel("apps kept warm (K)")
    axes.set_ylabel("hit rate")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

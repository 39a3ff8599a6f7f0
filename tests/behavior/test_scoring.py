"""Scoring, baselines and the dispatch simulation on hand-checked cases."""

from __future__ import annotations

from tunelab.behavior.baselines import baselines, ranked_apps, ranked_keys
from tunelab.behavior.scoring import parse_answer, score_predictions
from tunelab.behavior.simulate import LRU, MOST_FREQUENT, replay

ACTIONS = ["启动应用", "切换到窗口"]


def test_exact_partial_wrong_invalid_and_overall() -> None:
    references = [
        "切换到窗口 | main.py | 应用: Code.exe",
        "切换到窗口 | main.py | 应用: Code.exe",
        "启动应用 | QQ.exe",
        "启动应用 | QQ.exe",
    ]
    answers = [
        "切换到窗口 | main.py | 应用: Code.exe",
        "切换到窗口 | main.py | 应用: Other.exe",
        "启动应用 | WeChat.exe",
        "打开 QQ",
    ]
    rankings = [["切换到窗口 | main.py"], ["启动应用 | QQ.exe", "切换到窗口 | main.py"], [], []]
    metrics, rows = score_predictions(references, answers, ACTIONS, rankings)
    assert [r["status"] for r in rows] == ["exact", "partial", "wrong", "invalid"]
    assert metrics["overall"] == 0.25 + 0.5 * 0.25
    assert metrics["action_accuracy"] == 0.75 and metrics["target_accuracy"] == 0.5
    assert metrics["top1_target"] == 0.25 and metrics["top3_target"] == 0.5
    assert [r["target_rank"] for r in rows] == [1, 2, None, None]


def test_time_error_when_delays_are_predicted() -> None:
    metrics, _ = score_predictions(
        ["启动应用 | QQ.exe @ +10m", "启动应用 | QQ.exe @ +4m"],
        ["启动应用 | QQ.exe @ +13m", "启动应用 | QQ.exe"],
        ACTIONS,
    )
    assert metrics["time_mae_minutes"] == 3.0 and metrics["exact"] == 1.0
    assert parse_answer("启动应用 | QQ.exe @ +7m", ACTIONS).minutes == 7


def row(history: list[str], output: str, user: str = "u", app: str | None = None) -> dict:
    return {
        "recent": history,
        "recent_apps": [h.split(" | ")[1] for h in history],
        "output": output,
        "user": user,
        "app": app or output.split(" | ")[1],
    }


def test_baselines_most_frequent_markov_and_backoff() -> None:
    a, b, c = "启动应用 | A", "启动应用 | B", "启动应用 | C"
    train = [row([a], b), row([a], b), row([b], c), row([c], a), row([c], a), row([b, c], b)]
    frequent, markov, ngram = baselines(train)
    assert frequent.rank([c])[0][0] == b
    assert markov.rank([a])[0][0] == b and markov.rank([c])[0][0] == a
    assert ngram.rank([b, c])[0][0] == b  # the trigram context wins over c -> a
    assert ngram.rank(["启动应用 | unseen"])[0][0] == b  # backs off to frequencies
    assert ranked_keys(markov.rank([c])) == [a, b, c]  # a, then the back-off frequencies
    assert ranked_apps([a, b, "切换到窗口 | x"], {a: "A", b: "B"}) == ["A", "B"]


def test_dispatch_replay_counts_hits_misses_and_wasted_preloads() -> None:
    rows = [
        row(["启动应用 | A"], "启动应用 | B"),
        row(["启动应用 | B"], "启动应用 | A"),
        row(["启动应用 | A"], "启动应用 | C"),
    ]
    perfect = [["B"], ["A"], ["C"]]
    tally = replay(rows, "oracle", 1, fallback=["A"], rankings=perfect)
    assert (tally.hits, tally.misses, tally.preloads, tally.wasted) == (3, 0, 3, 0)
    wrong = [["C"], ["C"], ["B"]]
    tally = replay(rows, "bad", 1, fallback=["A"], rankings=wrong)
    # C is evicted unused before its event comes; B is still unused when the replay ends
    assert (tally.hits, tally.misses, tally.preloads, tally.wasted) == (0, 3, 2, 2)
    lru = replay(rows, LRU, 2, fallback=[])
    assert (lru.hits, lru.misses, lru.preloads) == (1, 2, 0)
    frequent = replay(rows, MOST_FREQUENT, 1, fallback=["A"])
    assert (frequent.hits, frequent.misses, frequent.preloads, frequent.wasted) == (1, 2, 1, 0)

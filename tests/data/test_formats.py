from pathlib import Path

import openpyxl
import pytest

from tunelab.data.prepare import check_strict, load_examples, split_holdout
from tunelab.errors import TunelabError


def reasons(loaded) -> list[str]:
    return [f"{r.source.line}|{r.field}|{r.reason}" for r in loaded.rejects]


def test_alpaca_with_system_history_and_input(write_jsonl) -> None:
    path = write_jsonl(
        [
            {
                "system": "be brief",
                "history": [["hi", "hello"]],
                "instruction": "translate",
                "input": "猫",
                "output": "cat",
                "task": "mt",
            }
        ]
    )
    loaded = load_examples([path])
    example = loaded.examples[0]
    assert example.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "translate\n猫"},
        {"role": "assistant", "content": "cat"},
    ]
    assert example.extra == {"task": "mt"}
    assert loaded.files[0].format == "alpaca"


def test_alpaca_missing_field_and_empty_reply_are_rejected(write_jsonl) -> None:
    path = write_jsonl(
        [
            {"instruction": "a", "output": "b"},
            {"instruction": "a", "output": "  "},
            {"input": "x", "output": "y", "instruction": ""},
        ],
        name="alpaca.jsonl",
    )
    loaded = load_examples([path], format_name="alpaca")
    assert len(loaded.examples) == 1
    assert reasons(loaded) == ["2|output|empty assistant reply", "3|instruction|empty"]
    loaded = load_examples(
        [write_jsonl([{"instruction": "a"}], name="m.jsonl")], format_name="alpaca"
    )
    assert reasons(loaded) == ["1|output|missing"]


def test_sharegpt_roles_and_endings(write_jsonl) -> None:
    good = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ]
    }
    path = write_jsonl(
        [
            good,
            {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "human", "value": "again?"},
                ]
            },
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
            {"conversations": "nope"},
        ]
    )
    loaded = load_examples([path])
    assert loaded.files[0].format == "sharegpt"
    assert loaded.examples[0].messages[0] == {"role": "system", "content": "s"}
    assert reasons(loaded) == [
        "2|conversations[1].from|unknown role 'bot'; expected human, gpt, system",
        "3|conversations|the conversation must end with an assistant turn",
        "4|conversations[1]|empty assistant reply",
        "5|conversations|expected a list of turns",
    ]


def test_openai_messages_with_text_parts_and_bad_roles(write_jsonl) -> None:
    path = write_jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": "yo"},
                ]
            },
            {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            },
        ]
    )
    loaded = load_examples([path])
    assert loaded.examples[0].messages[0]["content"] == "hi"
    assert reasons(loaded) == [
        "2|messages[0].role|unknown role 'tool'; expected system, user, assistant",
        "3|messages|turns must alternate user/assistant; turn 2 is user",
    ]


def test_excel_sheet_without_expected_columns_names_sheet_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "table.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "评论"
    book.active.append(["text", "label"])
    book.active.append(["很好", "正面"])
    book.save(path)
    with pytest.raises(
        TunelabError,
        match=r"table.xlsx\[评论\]: no known format matches the columns \(text, label\)",
    ):
        load_examples([path])


def test_csv_with_conversations_as_json_cells(tmp_path: Path) -> None:
    path = tmp_path / "chats.csv"
    cell = '"[{""from"": ""human"", ""value"": ""q""}, {""from"": ""gpt"", ""value"": ""a""}]"'
    path.write_text(f"conversations\n{cell}\n", encoding="utf-8")
    loaded = load_examples([path])
    assert loaded.examples[0].answer == "a"


def test_strict_mode_turns_rejects_into_an_error(write_jsonl) -> None:
    loaded = load_examples([write_jsonl([{"instruction": "a", "output": "b"}, "{oops"])])
    check_strict(loaded.rejects, strict=False)
    with pytest.raises(
        TunelabError, match=r"data.strict is on and 1 row\(s\) were rejected:\n.*:2: malformed JSON"
    ):
        check_strict(loaded.rejects, strict=True)


def test_holdout_split_is_seeded_and_disjoint(write_jsonl) -> None:
    from conftest import alpaca_rows

    examples = load_examples([write_jsonl(alpaca_rows(50))]).examples
    train, val = split_holdout(examples, 0.2, seed=7)
    _, again_val = split_holdout(examples, 0.2, seed=7)
    assert [e.source for e in val] == [e.source for e in again_val]
    assert len(val) == 10 and len(train) == 40
    assert not {e.source for e in val} & {e.source for e in train}
    assert [e.source for e in split_holdout(examples, 0.2, seed=8)[1]] != [e.source for e in val]
    assert len(split_holdout(examples, 0.5, seed=7, max_rows=3)[1]) == 3

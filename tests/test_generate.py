"""Generation on a tiny random model: constraints make every answer parse."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.data.encode import encode_prompt
from tunelab.generate import AnswerFormat, GenerationOptions, generate_texts


@pytest.fixture(scope="module")
def model_and_prompts(qwen3_dir, qwen3_tok):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(qwen3_dir).eval()
    questions = ["这条评论是正面还是负面？", "Say something", "给出一个数字", "JSON please", "你好"]
    prompts = [encode_prompt(qwen3_tok, [{"role": "user", "content": q}]) for q in questions]
    return model, prompts


def test_random_model_without_constraint_is_mostly_not_a_label(
    model_and_prompts, qwen3_tok
) -> None:
    model, prompts = model_and_prompts
    outputs = generate_texts(
        model, qwen3_tok, prompts, GenerationOptions(max_new_tokens=4, batch_size=2)
    )
    assert len(outputs) == len(prompts)
    assert sum(o.strip() in {"正面", "负面"} for o in outputs) < len(outputs)


@pytest.mark.parametrize(
    "answer",
    [
        AnswerFormat(choices=("正面", "负面", "中性偏正面")),
        AnswerFormat(regex=r"[0-9]{2,3}"),
        AnswerFormat(
            json_schema=json.dumps(
                {
                    "type": "object",
                    "properties": {"label": {"enum": ["yes", "no"]}},
                    "required": ["label"],
                    "additionalProperties": False,
                }
            )
        ),
    ],
    ids=["choices", "regex", "json_schema"],
)
def test_constrained_answers_always_parse(model_and_prompts, qwen3_tok, answer) -> None:
    model, prompts = model_and_prompts
    options = GenerationOptions(max_new_tokens=24, batch_size=3)
    outputs = generate_texts(model, qwen3_tok, prompts, options, [answer] * len(prompts))
    assert all(answer.is_valid(o) for o in outputs), outputs


def test_rows_of_one_batch_can_have_different_formats(model_and_prompts, qwen3_tok) -> None:
    model, prompts = model_and_prompts
    formats = [AnswerFormat(choices=("是", "否")), None, AnswerFormat(regex="[a-z]+"), None, None]
    outputs = generate_texts(
        model, qwen3_tok, prompts, GenerationOptions(max_new_tokens=6, batch_size=5), formats
    )
    assert outputs[0] in {"是", "否"}
    assert AnswerFormat(regex="[a-z]+").is_valid(outputs[2])


def test_sampling_is_reproducible_with_a_seed_and_stop_strings_cut(
    model_and_prompts, qwen3_tok
) -> None:
    model, prompts = model_and_prompts
    options = GenerationOptions(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert generate_texts(model, qwen3_tok, prompts, options) == generate_texts(
        model, qwen3_tok, prompts, options
    )
    stopped = generate_texts(
        model, qwen3_tok, prompts[:1], GenerationOptions(max_new_tokens=8, stop=("的",))
    )
    assert "的" not in stopped[0]


def test_constrained_decoding_is_not_biased_against_long_labels(qwen3_dir, qwen3_tok) -> None:
    """Labels of 1 and of several tokens: summing log-probs favours the short one; constrained
    decoding decides at the first differing token, so the long label keeps its share."""
    from tunelab.ranking import label_logprobs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(qwen3_dir).eval()
    labels = ("是", "不是这样的情况")
    lengths = [len(qwen3_tok(label, add_special_tokens=False)["input_ids"]) for label in labels]
    assert lengths[0] == 1 and lengths[1] >= 3
    questions = [f"问题{i}：对吗？" for i in range(24)]
    prompts = [encode_prompt(qwen3_tok, [{"role": "user", "content": q}]) for q in questions]
    decoded = generate_texts(
        model,
        qwen3_tok,
        prompts,
        GenerationOptions(max_new_tokens=12, batch_size=8),
        [AnswerFormat(choices=labels)] * len(prompts),
    )
    sums, counts = label_logprobs(model, qwen3_tok, prompts, labels)
    by_sum = [labels[i] for i in sums.argmax(-1).tolist()]
    assert counts[0].tolist() == [2.0, lengths[1] + 1.0]  # each label ends with its stop token
    # summing log-probs all but never picks the long label; constrained decoding does
    assert by_sum.count("是") > decoded.count("是")
    assert decoded.count(labels[1]) >= 3 and set(decoded) <= set(labels)

import pytest

from tunelab.data.encode import IGNORE_INDEX, EncodeError, encode_chat, encode_prompt

CHAT = [
    {"role": "system", "content": "你是助手"},
    {"role": "user", "content": "第一问"},
    {"role": "assistant", "content": "第一答"},
    {"role": "user", "content": "第二问：第一答"},
    {"role": "assistant", "content": "第二答"},
]


def learned_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])


def learned_runs(encoded) -> list[list[int]]:
    """Consecutive runs of learned token ids."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [*runs, current] if current else runs


def test_smollm2_only_assistant_turns_and_their_end_token_are_learned(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    encoded = encode_chat(tok, CHAT, max_length=512)
    runs = [tok.decode(run) for run in learned_runs(encoded)]
    assert runs == ["第一答<|im_end|>", "第二答<|im_end|>"]
    # everything else -- system, user, role headers, newlines -- is masked
    full = tok.decode(encoded.input_ids)
    assert full.count("<|im_start|>") == 5
    masked = [
        t
        for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label == IGNORE_INDEX
    ]
    assert "第一问" in tok.decode(masked) and "你是助手" in tok.decode(masked)
    assert (
        encoded.input_ids
        == tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    )


def test_qwen3_targets_have_no_think_blocks_unless_the_data_has_them(qwen3_tok) -> None:
    encoded = encode_chat(qwen3_tok, CHAT, max_length=512)
    runs = [qwen3_tok.decode(run) for run in learned_runs(encoded)]
    assert runs == ["第一答<|im_end|>", "第二答<|im_end|>"]
    # the last turn keeps Qwen's empty think block -- in the prompt, not in the target
    assert "<think>\n\n</think>\n\n第二答" in qwen3_tok.decode(encoded.input_ids)
    # generation prompt for evaluation ends the same way, so train and inference agree
    prompt = qwen3_tok.decode(encode_prompt(qwen3_tok, CHAT[:-1]))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    end_token = qwen3_tok.convert_tokens_to_ids("<|im_end|>")
    assert encoded.labels.count(end_token) == 2


def test_qwen3_reasoning_in_the_data_is_learned(qwen3_tok) -> None:
    chat = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>\n1+1=2\n</think>\n\n2"},
    ]
    encoded = encode_chat(qwen3_tok, chat, max_length=512)
    assert learned_text(qwen3_tok, encoded) == "<think>\n1+1=2\n</think>\n\n2<|im_end|>"
    prompt = qwen3_tok.decode(encode_prompt(qwen3_tok, chat[:-1], thinking=True))
    assert prompt.endswith("<|im_start|>assistant\n")


def test_user_text_equal_to_the_answer_is_not_learned(smollm_tokenizer) -> None:
    chat = [{"role": "user", "content": "正面"}, {"role": "assistant", "content": "正面"}]
    encoded = encode_chat(smollm_tokenizer, chat, max_length=512)
    assert [smollm_tokenizer.decode(r) for r in learned_runs(encoded)] == ["正面<|im_end|>"]


def test_truncation_keeps_what_fits_and_rejects_when_nothing_is_left(smollm_tokenizer) -> None:
    chat = [{"role": "user", "content": "问" * 10}, {"role": "assistant", "content": "答" * 40}]
    full = encode_chat(smollm_tokenizer, chat, max_length=1000)
    cut = encode_chat(smollm_tokenizer, chat, max_length=len(full.input_ids) - 5)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:-5] and cut.labels == full.labels[:-5]
    assert 0 < cut.target_tokens < full.target_tokens
    with pytest.raises(
        EncodeError,
        match=r"no assistant tokens left after truncation to max_length=20 \(the sample has \d+",
    ):
        encode_chat(smollm_tokenizer, chat, max_length=20)


@pytest.mark.parametrize("tokenizer_name", ["qwen3_tok", "smollm_tokenizer"])
def test_a_long_conversation_renders_in_linear_work(tokenizer_name, request) -> None:
    tokenizer = request.getfixturevalue(tokenizer_name)
    pairs = 300
    chat = [{"role": "system", "content": "你是助手"}]
    for i in range(pairs):
        chat += [
            {"role": "user", "content": f"问题 {i}"},
            {"role": "assistant", "content": f"回答 {i}"},
        ]
    rendered: list[int] = []
    original = tokenizer.apply_chat_template

    def counted(messages, *args, **kwargs):
        rendered.append(len(messages))
        return original(messages, *args, **kwargs)

    tokenizer.apply_chat_template = counted
    try:
        encoded = encode_chat(tokenizer, chat, max_length=100_000)
    finally:
        del tokenizer.apply_chat_template
    # every reply is learned, and no render covers the whole history once per reply
    runs = [tokenizer.decode(run) for run in learned_runs(encoded)]
    assert runs == [f"回答 {i}<|im_end|>" for i in range(pairs)]
    assert sum(rendered) <= len(chat) + 8 * pairs  # the old prefix rendering: ~pairs^2

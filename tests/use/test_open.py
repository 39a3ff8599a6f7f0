"""open_run: one object per finished run that generates, streams, classifies and ranks with
the run's own adapter, template and recorded precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.encode import encode_prompt
from tunelab.errors import TunelabError
from tunelab.precision import resolve_precision, usable_precision
from tunelab.run_dir import RunDir
from tunelab.use.open import open_run

CHAT = [{"role": "user", "content": "评论 3：好还是坏？"}]


def test_a_run_records_its_precision_and_opens_in_it(tiny_run: Path) -> None:
    record = RunDir(tiny_run).read_record()
    assert record["precision"] == {
        "requested": "auto",
        "resolved": resolve_precision("auto"),
        "device": "cpu",
    }
    opened = open_run(tiny_run)
    assert opened.precision == record["precision"]["resolved"]
    assert opened.adapter == tiny_run / "adapter" and opened.labels == []
    assert open_run(tiny_run, precision="fp32").precision == "fp32"


def test_a_precision_this_machine_cannot_run_falls_back_to_auto(monkeypatch) -> None:
    monkeypatch.setattr("tunelab.precision.cpu_has_native_bf16", lambda: False)
    assert usable_precision("bf16") == "fp32"  # trained in bf16 elsewhere
    assert usable_precision("fp16") == resolve_precision("auto")  # fp16 is GPU-only
    assert usable_precision(None) == "fp32"
    monkeypatch.setattr("tunelab.precision.cpu_has_native_bf16", lambda: True)
    assert usable_precision("bf16") == "bf16"


def test_generate_stream_and_rank_use_the_runs_template(tiny_run: Path) -> None:
    opened = open_run(tiny_run, checkpoint="2")
    assert opened.adapter == tiny_run / "checkpoints" / "step-000002" / "adapter"
    (answer,) = opened.generate([CHAT])
    prompt = encode_prompt(opened.tokenizer, CHAT, thinking=False)
    assert opened.generate_ids([prompt]) == [answer]
    # the run's eval settings decode 3 new tokens, greedily; streaming them gives the same
    max_new_tokens = opened.config.eval.generation.max_new_tokens
    assert "".join(opened.stream(CHAT, max_new_tokens)).strip() == answer.strip()
    ranked = opened.rank(prompt, ["好", "坏"], [opened.tokenizer.eos_token_id], depth=2)
    assert sorted(c for c, _ in ranked) == sorted(["好", "坏"])
    assert ranked[0][1] >= ranked[1][1]
    with pytest.raises(TunelabError, match="not a class-head run"):
        opened.classify(["很好"])


def test_a_merged_adapter_ranks_as_the_adapter_did(tiny_run: Path) -> None:
    from peft import PeftModel

    # in fp32 on every machine: where the run trained in bf16 the base weights are bf16, and
    # rounding W + s B A to bf16 is no longer a reordering of the same sums
    opened = open_run(tiny_run, precision="fp32")
    prompt = encode_prompt(opened.tokenizer, CHAT, thinking=False)
    candidates, end = ["好", "坏", "很好", "不好"], [opened.tokenizer.eos_token_id]
    before = opened.rank(prompt, candidates, end, depth=4)
    opened.merge_adapter()
    assert not isinstance(opened.model, PeftModel)
    after = opened.rank(prompt, candidates, end, depth=4)
    # (W + s B A) x against W x + s B (A x): the same sums in another order, fp32 rounding
    assert [c for c, _ in after] == [c for c, _ in before]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(after, before, strict=True))


def test_an_adapter_is_folded_into_fp32_weights_where_the_base_was_bf16(tiny_run: Path) -> None:
    import torch

    from tunelab.precision import bf16_frozen_matmuls

    opened = open_run(tiny_run, precision="fp32")
    assert bf16_frozen_matmuls(opened.model) > 0  # as a run opened in bf16 on a CPU holds it
    opened.merge_adapter()
    assert all(param.dtype == torch.float32 for param in opened.model.parameters())
    prompt = encode_prompt(opened.tokenizer, CHAT, thinking=False)
    assert opened.rank(prompt, ["好", "坏"], [opened.tokenizer.eos_token_id], depth=2)


def test_opening_what_is_not_there_says_what_to_give(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="neither a run directory"):
        open_run(tmp_path)
    with pytest.raises(TunelabError, match="no adapter there"):
        open_run(tiny_run, checkpoint="99")
    with pytest.raises(TunelabError, match="expected final, best or a step number"):
        open_run(tiny_run, checkpoint="latest")


def test_a_class_head_run_classifies_and_predict_gives_the_same(
    class_run: Path, tmp_path: Path
) -> None:
    from tunelab.use.predict import predict_file

    opened = open_run(class_run)
    assert opened.labels == ["正面", "负面"]
    texts = ["很好 很好", "很差", "一般般吧，还可以"]
    probabilities = opened.classify(texts)
    assert [list(p) for p in probabilities] == [["正面", "负面"]] * 3
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-5) for p in probabilities)
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n",
        encoding="utf-8",
    )
    predict_file(class_run, source, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for row, expected in zip(rows, probabilities, strict=True):
        assert row["prediction"] == max(expected, key=expected.__getitem__)
        assert row["p_正面"] == round(expected["正面"], 4)
    with pytest.raises(TunelabError, match="classifies texts; it does not generate"):
        opened.generate([CHAT])
    with pytest.raises(TunelabError, match="no base model to compare with"):
        open_run(class_run, base_only=True)

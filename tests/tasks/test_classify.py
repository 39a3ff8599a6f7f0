"""task classify: table rows, a class head, label maps, metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import torch

from tunelab.config import DataConfig, ModelConfig
from tunelab.config_file import validate_config
from tunelab.cpu.attention import takes_sample_boundaries
from tunelab.data.batching import Batch
from tunelab.data.readers import Source
from tunelab.errors import TunelabError
from tunelab.tasks.classify.data import (
    ClassSample,
    ClassSet,
    LabelledText,
    encode_text,
    label_names,
    prepare_classify,
    read_labelled,
    resolve_labels,
)
from tunelab.tasks.classify.head import (
    HEAD_MODULES,
    ClassifierLoss,
    class_batcher,
    class_logits,
    class_weights,
    evaluate_classifier,
)


def write_table(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    return path


def test_rows_missing_text_or_label_and_unknown_labels_are_rejected(tmp_path: Path) -> None:
    path = write_table(
        tmp_path / "t.jsonl",
        [
            {"text": "很好", "label": "正面"},
            {"text": "", "label": "负面"},
            {"text": "一般"},
            {"text": "差", "label": "负面"},
            {"text": "还行", "label": "中性"},
        ],
    )
    data = DataConfig(train=[path], labels=["正面", "负面"])
    texts, rejects = read_labelled(data.train, data)
    kept, unknown = resolve_labels(texts, data.labels)
    assert [t.text for t in kept] == ["很好", "差"]
    assert [(r.source.line, r.field, r.reason) for r in rejects + unknown] == [
        (2, "text", "missing or empty text"),
        (3, "label", "missing label"),
        (5, "label", "unknown label '中性'; expected one of ['正面', '负面']"),
    ]


def test_labels_as_ids_map_to_names_and_excel_columns_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "t.xlsx"
    book = openpyxl.Workbook()
    book.active.append(["text_cn", "n_labels"])
    book.active.append(["好", 0])
    book.active.append(["坏", 1])
    book.save(path)
    data = DataConfig(
        train=[path], text_column="text_cn", label_column="n_labels", labels=["正常", "违规"]
    )
    texts, _ = read_labelled(data.train, data)
    kept, unknown = resolve_labels(texts, data.labels)
    assert [t.label for t in kept] == ["正常", "违规"] and not unknown
    assert label_names(kept, []) == ["正常", "违规"]
    with pytest.raises(
        TunelabError, match=r"no column 'text'; the columns are \['n_labels', 'text_cn'\]"
    ):
        read_labelled([path], DataConfig(train=[path]))


def test_class_weights_auto_is_inverse_frequency(tmp_path: Path, qwen3_tok) -> None:
    rows = [{"text": f"t{i}", "label": "a" if i < 6 else "b"} for i in range(8)]
    path = write_table(tmp_path / "t.jsonl", rows)
    config = validate_config(
        {
            "task": "classify",
            "data": {"train": str(path), "val": str(path)},
            "train": {"class_weights": "auto"},
        },
        "t",
    )
    data = prepare_classify(config.data, qwen3_tok)
    weights = class_weights(config, data.labels, data.train)
    torch.testing.assert_close(weights, torch.tensor([8 / (2 * 6), 8 / (2 * 2)]))
    config.train.class_weights = {"b": 3.0}
    torch.testing.assert_close(
        class_weights(config, data.labels, data.train), torch.tensor([1.0, 3.0])
    )


def review_run_config(tmp_path: Path, qwen3_dir: Path, max_steps: int, every: int = 3) -> Any:
    """A classify run on 48 two-label reviews, scored (and checkpointed) ``every`` steps."""
    rows = [
        {
            "text": ("很好 " if i % 2 else "很差 ") * (1 + i % 3),
            "label": "正面" if i % 2 else "负面",
        }
        for i in range(48)
    ]
    path = write_table(tmp_path / "reviews.jsonl", rows)
    return validate_config(
        {
            "task": "classify",
            "name": "cls",
            "output_dir": str(tmp_path / "runs"),
            "model": str(qwen3_dir),
            "data": {"train": str(path), "val_fraction": 0.25},
            "lora": {"r": 4, "alpha": 8},
            "train": {
                "max_steps": max_steps,
                "batch_size": 8,
                "learning_rate": 5e-3,
                "save_every": every,
                "val_loss_every": every,
            },
            "eval": {"scoring": {"metric": "macro_f1"}, "select": {"every": every}},
        },
        "t",
    )


def advice_recorded(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the end-of-run advice was told the head read its texts bare, per run."""
    from tunelab.train import finish

    told: list[bool] = []
    original = finish.below_baseline_advice

    def recorded(*args: Any, unframed_head: bool = False, **kwargs: Any) -> Any:
        told.append(unframed_head)
        return original(*args, unframed_head=unframed_head, **kwargs)

    monkeypatch.setattr(finish, "below_baseline_advice", recorded)
    return told


def test_a_classify_run_trains_the_head_and_writes_its_outputs(
    tmp_path: Path, qwen3_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tunelab.tasks.classify import task as classify_task
    from tunelab.train.run import train

    evaluated: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        evaluated.append(args[4])
        return evaluate_classifier(*args, **kwargs)

    monkeypatch.setattr(classify_task, "evaluate_classifier", counted)
    advised = advice_recorded(monkeypatch)

    config = review_run_config(tmp_path, qwen3_dir, max_steps=6)
    result = train(config)
    run = tmp_path / "runs" / "cls"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the scoring pass gives the eval loss too: one pass over the val rows, one record
    # the last step's scoring is the final evaluation, not repeated
    assert evaluated == ["step-3", "step-6"]
    assert [(r["step"], "eval_macro_f1" in r) for r in history if "eval_loss" in r] == [
        (3, True),
        (6, True),
    ]
    final_loss = next(r["eval_loss"] for r in history if r["step"] == 6 and "eval_loss" in r)
    assert result.eval_loss == final_loss
    assert json.loads((run / "labels.json").read_text()) == {"labels": ["正面", "负面"]}
    assert (run / "adapter" / "labels.json").exists()
    metrics = json.loads((run / "eval" / "final" / "metrics.json").read_text())
    report = metrics["tasks"]["all"]["classification"]
    assert set(report["per_class"]) == {"正面", "负面"} and len(report["confusion"]["matrix"]) == 2
    assert result.metric == "macro_f1" and 0.0 <= result.scores["fine-tuned"] <= 1.0
    # the ensemble with the baseline is one more figure beside the model's own
    assert list(result.scores) == ["fine-tuned", "TF-IDF+LR", "ensemble"]
    assert advised == [True]  # a head that read its texts bare may be offered a frame
    mixed = [json.loads(line) for line in (run / "eval" / "ensemble" / "predictions.jsonl").open()]
    assert len(mixed) == metrics["tasks"]["all"]["rows"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in mixed)
    assert (run / "eval" / "final" / "confusion_all.png").exists()
    assert result.best is not None and (run / "best" / "adapter_config.json").exists()
    base = AutoModelForSequenceClassification.from_pretrained(qwen3_dir, num_labels=2)
    tuned = PeftModel.from_pretrained(base, run / "adapter")
    saved = {n for n, _ in tuned.named_parameters() if "modules_to_save" in n}
    assert any("score" in n for n in saved)  # the head was trained in full and saved
    # use it: predict keeps the columns and adds a label and a probability per class
    import csv
    import subprocess
    import sys

    source = tmp_path / "new.csv"
    source.write_text("id,text\n1,很好 很好\n2,\n3,很差\n", encoding="utf-8")
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "predict",
            str(run),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "p.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    rows = list(csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8-sig")))
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["prediction"] in {"正面", "负面"} and rows[1]["prediction"] == ""
    assert abs(float(rows[0]["p_正面"]) + float(rows[0]["p_负面"]) - 1) < 1e-3
    evaluated = subprocess.run(
        [sys.executable, "-m", "tunelab", "eval", str(run), "--name", "again"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "ensemble" in evaluated.stdout and "vs ensemble" not in evaluated.stdout
    again = json.loads((run / "eval" / "again" / "metrics.json").read_text())
    assert again["score"] == metrics["score"]  # the same rows and adapter give the same macro-F1
    # the baseline's and the ensemble's predictions are written beside the model's
    for beside in ("again-baseline", "again-ensemble"):
        predictions = (run / "eval" / beside / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == again["tasks"]["all"]["rows"]
    mixed_again = json.loads((run / "eval" / "again-ensemble" / "metrics.json").read_text())
    assert (
        mixed_again["score"]
        == json.loads((run / "eval" / "ensemble" / "metrics.json").read_text())["score"]
    )


def test_train_fraction_trains_on_leading_rows_with_the_whole_tables_labels(
    tmp_path: Path, qwen3_tok
) -> None:
    rows = [{"text": f"t{i}", "label": "a" if i < 6 else "b"} for i in range(8)]
    path = write_table(tmp_path / "t.jsonl", rows)
    config = validate_config(
        {"task": "classify", "data": {"train": str(path), "val": str(path), "train_fraction": 0.5}},
        "t",
    )
    data = prepare_classify(config.data, qwen3_tok)
    # label b only occurs after the share: the head still has it, as in the full run
    assert data.labels == ["a", "b"]
    assert data.report["train"]["kept"] == 4 and data.report["val"]["kept"] == 8
    assert data.report["val"]["origin"]["train_fraction"] == {
        "fraction": 0.5,
        "rows_used": 4,
        "rows_left_out": 4,
    }


def _tiny_classifier(model_dir: Path) -> Any:
    from tunelab.config import LoraConfig
    from tunelab.cpu.training import prepare_for_cpu_training
    from tunelab.models.load import attach_lora, load_classifier

    torch.manual_seed(0)
    model = load_classifier(model_dir, ModelConfig(), ["a", "b", "c"], 0, torch.float32)
    model = attach_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), "SEQ_CLS", HEAD_MODULES)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero, so every adapter carries a gradient
            torch.nn.init.normal_(param, std=0.1)
    prepare_for_cpu_training(model, "fp32", 256)
    return model.train()


def _loss_logits_grads(
    model: Any, batches: list[Batch]
) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss_module = ClassifierLoss(model)
    total = sum(loss_module(batch)[0] for batch in batches)
    total.backward()
    with torch.no_grad():
        logits = torch.cat([class_logits(model, batch) for batch in batches])
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return total.item(), logits, grads


def _random_samples(lengths: list[int]) -> list[ClassSample]:
    generator = torch.Generator().manual_seed(4)
    return [
        ClassSample(torch.randint(1, 151_000, (n,), generator=generator).tolist(), i % 3, n)
        for i, n in enumerate(lengths)
    ]


def test_segmented_rows_give_the_padded_batches_loss_logits_and_gradients(
    qwen3_dir: Path, sdpa_masks: Callable[[], list[Any]]
) -> None:
    lengths = [13, 11, 9, 9, 6, 4, 2]  # longest first: both batchers keep this order
    samples = _random_samples(lengths)
    model = _tiny_classifier(qwen3_dir)
    assert takes_sample_boundaries(model)
    padded = class_batcher(0, 30)(samples)
    segmented = class_batcher(0, 30, segmented=True)(samples)
    # every row unpadded, within the budget, samples in order, one loss term per sample
    assert [b.input_ids.shape[0] for b in segmented] == [1, 1]
    assert [b.padded_tokens for b in segmented] == [b.real_tokens for b in segmented]
    assert [b.real_tokens for b in segmented] == [24, 30]
    assert torch.cat([b.labels for b in segmented]).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert sum(b.padded_tokens for b in padded) > sum(lengths)
    loss, logits, grads = _loss_logits_grads(model, padded)
    calls = sdpa_masks()
    segmented_loss, segmented_logits, segmented_grads = _loss_logits_grads(model, segmented)
    # each sample attends to itself alone: one causal call per sample and layer (twice: the
    # loss, then the logits), no mask
    layers = model.get_base_model().config.num_hidden_layers
    assert calls == [None] * (2 * layers * len(samples))
    assert segmented_loss == pytest.approx(loss, rel=1e-5)
    torch.testing.assert_close(segmented_logits, logits, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(segmented_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_evaluation_gives_the_mean_training_loss_from_its_own_passes(qwen3_dir: Path) -> None:
    samples = _random_samples([5, 12, 3, 9, 7])  # out of length order: predictions are put back
    split = ClassSet(
        [
            LabelledText(f"text {i}", "abc"[s.label_id], Source("t.jsonl", i + 1))
            for i, s in enumerate(samples)
        ],
        samples,
    )
    weights = torch.tensor([1.0, 2.0, 0.5])
    model = _tiny_classifier(qwen3_dir).eval()
    batcher = class_batcher(0, 20, segmented=True)
    result = evaluate_classifier(model, split, ["a", "b", "c"], batcher, "tuned", weights)
    loss_module = ClassifierLoss(model, weights)
    with torch.no_grad():
        summed = sum(loss_module(batch)[0].item() for batch in batcher(samples))
    assert result.loss == pytest.approx(summed / len(samples), abs=2e-6)
    # each row's probability is its own sample's, in the split's order
    probabilities = [class_logits(model, b).softmax(-1) for b in class_batcher(0, 20)(samples)]
    top = [round(p.max().item(), 4) for p in torch.cat(probabilities)]
    by_length = sorted(range(len(samples)), key=lambda i: -len(samples[i].input_ids))
    # both sides are rounded to 4 decimals: values a rounding error apart that straddle a
    # boundary print one unit (1e-4) apart
    assert [result.rows[i]["probability"] for i in by_length] == pytest.approx(top, abs=1.5e-4)


def test_a_final_model_better_than_every_scored_step_becomes_best(
    tmp_path: Path, qwen3_dir: Path
) -> None:
    from safetensors.torch import load_file

    from tunelab.train.run import train

    result = train(review_run_config(tmp_path, qwen3_dir, max_steps=3, every=2))
    run = tmp_path / "runs" / "cls"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = next(r["eval_macro_f1"] for r in history if "eval_macro_f1" in r)
    final = result.scores["fine-tuned"]
    assert final > scored  # the case under test: step 2 scored, step 3 better
    assert result.best == {"step": 3, "score": final, "stale": 0}
    best, last = (load_file(run / d / "adapter_model.safetensors") for d in ("best", "adapter"))
    assert all(torch.equal(best[k], last[k]) for k in last)
    assert (run / "best" / "labels.json").exists() and (run / "best" / "tokenizer.json").exists()
    assert json.loads((run / "results.json").read_text())["best"]["step"] == 3


FRAME = "Review: {text}\nIs this review positive or negative? Answer:"


def test_a_text_template_frames_each_text_and_a_cut_keeps_the_frames_tail(qwen3_tok) -> None:
    framed = DataConfig(max_length=64, text_template=FRAME)
    sample = encode_text(qwen3_tok, "很好", 1, framed)
    whole = qwen3_tok("Review: 很好\nIs this review positive or negative? Answer:")["input_ids"]
    assert sample.input_ids == whole and sample.label_id == 1
    tail = qwen3_tok("\nIs this review positive or negative? Answer:", add_special_tokens=False)
    long_text = "很好" * 200
    cut = encode_text(qwen3_tok, long_text, 0, framed)
    assert len(cut.input_ids) == 64 and cut.full_length > 64
    assert cut.input_ids[-len(tail["input_ids"]) :] == tail["input_ids"]  # the question stays
    assert cut.input_ids[:3] == qwen3_tok("Review: 很好")["input_ids"][:3]  # the text's start too
    bare = encode_text(qwen3_tok, long_text, 0, DataConfig(max_length=64))
    assert bare.input_ids == qwen3_tok(long_text)["input_ids"][:64]


@pytest.mark.parametrize("template", ["Review: {text} and {text}", "Review: {review}"])
def test_a_text_template_without_one_text_slot_is_refused(template: str) -> None:
    with pytest.raises(TunelabError, match=r"text_template.*\{text\} exactly once"):
        validate_config({"task": "classify", "data": {"text_template": template}}, "t.yaml")


def test_a_framed_run_predicts_on_framed_texts_and_its_baseline_reads_bare_ones(
    tmp_path: Path, qwen3_dir: Path, qwen3_tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.tasks.classify import task as classify_task
    from tunelab.train.run import train
    from tunelab.use.open import open_run

    seen_by_baseline: list[str] = []
    original = classify_task.classify_baseline

    def recorded(metric: str, train_texts: Any, *args: Any) -> Any:
        seen_by_baseline.extend(t.text for t in train_texts)
        return original(metric, train_texts, *args)

    monkeypatch.setattr(classify_task, "classify_baseline", recorded)
    config = review_run_config(tmp_path, qwen3_dir, max_steps=2, every=2)
    config.data.text_template = FRAME
    prepared = prepare_classify(config.data, qwen3_tok)
    scored = classify_task.ClassifyTask().eval_rows(config, qwen3_tok, prepared.labels, None)
    for sample in [*prepared.train.samples, *prepared.val.samples, *scored.split.samples]:
        assert qwen3_tok.decode(sample.input_ids).startswith("Review: ")
    advised = advice_recorded(monkeypatch)
    train(config)
    assert advised == [False]
    assert seen_by_baseline and not any("Review:" in text for text in seen_by_baseline)
    opened = open_run(tmp_path / "runs" / "cls")
    assert opened.config.data.text_template == FRAME  # kept in the run's own config
    framed = opened.classify(["很好 很好"])[0]
    opened.config.data.text_template = None
    bare = opened.classify(["很好 很好"])[0]
    assert framed.keys() == bare.keys() and framed != bare

"""Text classification with a class head: table rows in, a label per text out.

The model is ``AutoModelForSequenceClassification`` on the same bases (it pools the last
non-padding token); LoRA adapts the body and the head (`score`) is trained in full.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import DataConfig, RunConfig
from tunelab.data.batching import Batch, consecutive_rows, fit_budget, segment_row
from tunelab.data.prepare import (
    check_strict,
    describe_rejects,
    leading_share,
    length_stats,
    split_holdout,
)
from tunelab.data.readers import RawRow, Reject, Source, read_rows
from tunelab.errors import TunelabError
from tunelab.models import adapted_model

HEAD_MODULES = ["score"]


@dataclass
class LabelledText:
    """One row of a classification table."""

    text: str
    label: str
    source: Source
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassSample:
    """A tokenised text and its class id."""

    input_ids: list[int]
    label_id: int
    full_length: int


@dataclass
class ClassSet:
    """One split: the texts kept, their encodings, and the rows rejected."""

    texts: list[LabelledText] = field(default_factory=list)
    samples: list[ClassSample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def read_labelled(
    paths: Sequence[Path], data: DataConfig
) -> tuple[list[LabelledText], list[Reject]]:
    """Rows with a text and a label column; a row missing either is rejected with its place."""
    texts: list[LabelledText] = []
    rejects: list[Reject] = []
    for path in paths:
        read = read_rows(Path(path), data.sheet)
        rejects += read.rejects
        _require_columns(path, read.rows, data)
        for row in read.rows:
            item = _labelled(row, data)
            if isinstance(item, Reject):
                rejects.append(item)
            else:
                texts.append(item)
    return texts, rejects


def label_names(texts: Sequence[LabelledText], configured: Sequence[str]) -> list[str]:
    """The label set, in order: as configured, or sorted from the training rows.

    Numeric labels given as ids of a configured list are mapped to names by position.
    """
    if configured:
        return list(configured)
    return sorted(
        {t.label for t in texts}, key=lambda name: (not name.isdigit(), _as_number(name), name)
    )


def resolve_labels(
    texts: list[LabelledText], labels: Sequence[str]
) -> tuple[list[LabelledText], list[Reject]]:
    """Map ids to names and reject labels outside the set."""
    kept, rejects = [], []
    for text in texts:
        name = text.label
        if name not in labels and name.isdigit() and int(name) < len(labels):
            name = labels[int(name)]
        if name not in labels:
            rejects.append(
                Reject(
                    text.source,
                    "label",
                    f"unknown label {text.label!r}; expected one of {list(labels)}",
                )
            )
            continue
        text.label = name
        kept.append(text)
    return kept, rejects


def encode_texts(
    tokenizer: Any, texts: Sequence[LabelledText], labels: Sequence[str], max_length: int
) -> ClassSet:
    """Tokenise each text (cut to max_length, counted) with its class id."""
    index = {name: i for i, name in enumerate(labels)}
    result = ClassSet()
    for text in texts:
        ids = tokenizer(text.text, add_special_tokens=True)["input_ids"]
        result.texts.append(text)
        result.samples.append(ClassSample(ids[:max_length], index[text.label], len(ids)))
    return result


@dataclass
class PreparedClasses:
    """A classification run's data: splits, the label set and the report."""

    train: ClassSet
    val: ClassSet
    labels: list[str]
    report: dict[str, Any]

    @property
    def rejects(self) -> list[Reject]:
        """Every rejected row."""
        return self.train.rejects + self.val.rejects


@dataclass
class LabelledSplits:
    """Train and val texts with resolved labels, before any tokenizer sees them."""

    train: list[LabelledText]
    val: list[LabelledText]
    labels: list[str]
    train_rejects: list[Reject]
    val_rejects: list[Reject]
    origin: dict[str, Any]


def read_splits(data: DataConfig, val_files: Sequence[Path] | None = None) -> LabelledSplits:
    """Read and label-check the train table and the val table (`val_files`, else `data.val`,
    else a seeded split of train)."""
    train_texts, train_rejects = read_labelled(data.train, data)
    labels = label_names(train_texts, data.labels)
    train_texts, unknown = resolve_labels(train_texts, labels)
    train_rejects += unknown
    val_files = list(val_files or data.val)
    if val_files:
        val_texts, val_rejects = read_labelled(val_files, data)
        val_texts, unknown = resolve_labels(val_texts, labels)
        val_rejects += unknown
        origin: dict[str, Any] = {"from": "files", "files": [str(p) for p in val_files]}
    else:
        train_texts, val_texts = split_holdout(
            train_texts, data.val_fraction, data.split_seed, data.val_max_rows
        )
        val_rejects = []
        origin = {"from": "split of train", "seed": data.split_seed, "fraction": data.val_fraction}
    # after the labels and the split, so every share of a sweep has the same head and val rows
    train_texts, share = leading_share(train_texts, data.train_fraction)
    if share:
        origin["train_fraction"] = share
    return LabelledSplits(train_texts, val_texts, labels, train_rejects, val_rejects, origin)


def prepare_classify(data: DataConfig, tokenizer: Any) -> PreparedClasses:
    """Read, validate, split and encode a classification table."""
    splits = read_splits(data)
    train_texts, val_texts, labels = splits.train, splits.val, splits.labels
    train_rejects, val_rejects, origin = splits.train_rejects, splits.val_rejects, splits.origin
    check_strict(train_rejects + val_rejects, data.strict)
    if len(labels) < 2:
        raise TunelabError(f"classification needs at least 2 labels; found {labels}")
    train = encode_texts(tokenizer, train_texts, labels, data.max_length)
    val = encode_texts(tokenizer, val_texts, labels, data.max_length)
    train.rejects, val.rejects = train_rejects, val_rejects
    if not train.samples:
        raise TunelabError(f"no usable training rows:\n{describe_rejects(train_rejects)}")
    report = {
        "max_length": data.max_length,
        "labels": labels,
        "train": _split_summary(train, labels),
        "val": {**_split_summary(val, labels), "origin": origin},
    }
    return PreparedClasses(train, val, labels, report)


def class_weights(config: RunConfig, labels: Sequence[str], train: ClassSet) -> torch.Tensor | None:
    """Loss weights per class: none, inverse frequency (`auto`), or as given per label."""
    setting = config.train.class_weights
    if setting == "none":
        return None
    if setting == "auto":
        counts = Counter(s.label_id for s in train.samples)
        total = sum(counts.values())
        return torch.tensor(
            [total / (len(labels) * max(counts.get(i, 0), 1)) for i in range(len(labels))]
        )
    missing = [name for name in setting if name not in labels]
    if missing:
        raise TunelabError(
            f"train.class_weights: unknown labels {missing}; labels are {list(labels)}"
        )
    return torch.tensor([float(setting.get(name, 1.0)) for name in labels])


class ClassifierLoss(nn.Module):
    """Summed (optionally class-weighted) cross-entropy of the class head, and the row count."""

    def __init__(self, model: nn.Module, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sum of losses, number of rows) for the batch."""
        logits = class_logits(self.model, batch)
        loss = F.cross_entropy(logits.float(), batch.labels, weight=self.weights, reduction="sum")
        return loss, torch.tensor(batch.labels.numel(), device=logits.device)


def class_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """(samples, classes): the head's logits at each sample's last token.

    A segmented row (``batch.cu_seq_lens``) goes through the model's body, and the head reads
    the last token of each sample; a padded batch goes through the whole model, which pools
    the last non-padding token of each row.
    """
    if batch.cu_seq_lens is None:
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    classifier = adapted_model(model)
    body = getattr(classifier, classifier.base_model_prefix)
    hidden = body(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        use_cache=False,
        **batch.attention_kwargs,
    ).last_hidden_state
    last_tokens = batch.cu_seq_lens[1:].long() - 1
    return classifier.score(hidden[0, last_tokens])


def class_batcher(
    pad_id: int, token_budget: int, segmented: bool = False
) -> Callable[[Sequence[ClassSample]], list[Batch]]:
    """Samples -> batches in order of length, longest first, each within the token budget:
    right-padded rows, or with ``segmented`` (the model's attention takes sample
    boundaries, ``kernels.takes_sample_boundaries``) one unpadded row each."""

    def batches(samples: Sequence[ClassSample]) -> list[Batch]:
        ordered = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)
        if segmented:
            return [_segmented(row) for row in consecutive_rows(ordered, token_budget)]
        return [
            _collate(group, pad_id) for group in fit_budget([[s] for s in ordered], token_budget)
        ]

    return batches


def inference_batcher(
    model: nn.Module, pad_id: int, token_budget: int
) -> Callable[[Sequence[ClassSample]], list[Batch]]:
    """The batcher to predict with ``model``: on a CPU the model's attention becomes
    tunelab's (``kernels.use_cpu_attention``), so that rows go unpadded."""
    from tunelab import kernels

    on_cpu = next(model.parameters()).device.type == "cpu"
    segmented = (
        on_cpu and kernels.use_cpu_attention(model) and kernels.takes_sample_boundaries(model)
    )
    return class_batcher(pad_id, token_budget, segmented)


def predict_classes(
    model: nn.Module, samples: Sequence[ClassSample], batcher: Callable[..., list[Batch]]
) -> torch.Tensor:
    """Class probabilities for every sample, in the order given (one forward per batch)."""
    return class_log_probabilities(model, samples, batcher).exp()


def class_log_probabilities(
    model: nn.Module, samples: Sequence[ClassSample], batcher: Callable[..., list[Batch]]
) -> torch.Tensor:
    """(samples, classes) log-probabilities, in the order given (one forward per batch).

    ``batcher`` must keep the order of the samples it is given, as ``class_batcher`` does.
    """
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids), reverse=True)
    results: list[torch.Tensor] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in batcher([samples[i] for i in order]):
            logits = class_logits(model, batch.to(device))
            results.append(logits.float().log_softmax(-1).cpu())
    stacked = torch.cat(results) if results else torch.zeros(len(samples), 0)
    unsorted = torch.empty_like(stacked)
    unsorted[torch.tensor(order, dtype=torch.long)] = stacked
    return unsorted


def _segmented(row: list[ClassSample]) -> Batch:
    ids, positions, starts = segment_row([s.input_ids for s in row])
    labels = torch.tensor([s.label_id for s in row], dtype=torch.long)
    return Batch(ids, labels, positions, None, ids.numel(), len(row), starts)


def _collate(group: list[list[ClassSample]], pad_id: int) -> Batch:
    samples = [row[0] for row in group]
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for r, sample in enumerate(samples):
        ids[r, : len(sample.input_ids)] = torch.tensor(sample.input_ids)
        mask[r, : len(sample.input_ids)] = 1
    labels = torch.tensor([s.label_id for s in samples], dtype=torch.long)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return Batch(ids, labels, positions, mask, int(mask.sum()), len(samples))


def _labelled(row: RawRow, data: DataConfig) -> LabelledText | Reject:
    text, label = row.data.get(data.text_column), row.data.get(data.label_column)
    if text is None or not str(text).strip():
        return Reject(row.source, data.text_column, "missing or empty text")
    if label is None or not str(label).strip():
        return Reject(row.source, data.label_column, "missing label")
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    extra = {k: v for k, v in row.data.items() if k not in (data.text_column, data.label_column)}
    return LabelledText(str(text), str(label).strip(), row.source, extra)


def _require_columns(path: Path, rows: Sequence[RawRow], data: DataConfig) -> None:
    if not rows:
        return
    columns = set().union(*(row.data for row in rows[:50]))
    missing = [c for c in (data.text_column, data.label_column) if c not in columns]
    if missing:
        where = str(rows[0].source).rsplit(":", 1)[0]
        raise TunelabError(
            f"{where}: no column {missing[0]!r}; the columns are {sorted(columns)}. "
            "Set data.text_column / data.label_column."
        )


def _split_summary(split: ClassSet, labels: Sequence[str]) -> dict[str, Any]:
    counts = Counter(s.label_id for s in split.samples)
    return {
        "kept": len(split.samples),
        "rejected": len(split.rejects),
        "truncated": sum(s.full_length > len(s.input_ids) for s in split.samples),
        "tokens": length_stats([s.full_length for s in split.samples]),
        "per_label": {name: counts.get(i, 0) for i, name in enumerate(labels)},
    }


def _as_number(name: str) -> int:
    return int(name) if name.isdigit() else 0


def evaluate_classifier(
    model: nn.Module,
    split: ClassSet,
    labels: Sequence[str],
    batcher: Callable[..., list[Batch]],
    name: str,
    weights: torch.Tensor | None = None,
    metric: str = "macro_f1",
) -> Any:
    """Accuracy, P/R/F1 and the confusion matrix on a split, ``metric`` (accuracy or
    macro_f1) the score; a row per text with its predicted label and probability; and the
    mean loss ``ClassifierLoss`` gives the split (class ``weights`` as in training), from the
    same forward passes."""
    from tunelab.evaluate import EvalResult
    from tunelab.metrics import label_task_metrics

    was_training = model.training
    model.eval()
    log_probabilities = class_log_probabilities(model, split.samples, batcher)
    model.train(was_training)
    probabilities = log_probabilities.exp()
    predicted = [labels[i] for i in probabilities.argmax(-1).tolist()] if len(split.samples) else []
    references = [labels[s.label_id] for s in split.samples]
    rows = [
        {
            "source": str(text.source),
            "task": "all",
            "input": text.text,
            "reference": reference,
            "prediction": guess,
            "status": "correct" if guess == reference else "wrong",
            "probability": round(float(p.max()), 4),
        }
        for text, reference, guess, p in zip(
            split.texts, references, predicted, probabilities, strict=True
        )
    ]
    metrics = label_task_metrics(predicted, references, labels, metric)
    result = EvalResult(name, metric, metrics["headline"], {"all": metrics}, rows)
    if split.samples:
        targets = torch.tensor([s.label_id for s in split.samples])
        summed = F.nll_loss(log_probabilities, targets, weight=weights, reduction="sum")
        result.loss = round(summed.item() / len(split.samples), 6)
    return result

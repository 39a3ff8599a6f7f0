"""The class head: its loss, its logits at each text's last token, batching (padded rows, or
unpadded rows where the attention takes sample boundaries), prediction and evaluation.

The model is ``AutoModelForSequenceClassification`` on the same bases (it pools the last
non-padding token); LoRA adapts the body and the head (`score`) is trained in full.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import RunConfig
from tunelab.data.batching import Batch, consecutive_rows, fit_budget, segment_row
from tunelab.errors import TunelabError
from tunelab.models.load import adapted_model
from tunelab.tasks.classify.data import ClassSample, ClassSet

HEAD_MODULES = ["score"]


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
    boundaries, ``cpu.attention.takes_sample_boundaries``) one unpadded row each."""

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
    tunelab's (``cpu.attention.use_cpu_attention``), so that rows go unpadded."""
    from tunelab.cpu.attention import takes_sample_boundaries, use_cpu_attention

    on_cpu = next(model.parameters()).device.type == "cpu"
    segmented = on_cpu and use_cpu_attention(model) and takes_sample_boundaries(model)
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
    from tunelab.metrics import label_task_metrics
    from tunelab.scoring import EvalResult

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
            "probabilities": {
                label: round(float(q), 4) for label, q in zip(labels, p, strict=True)
            },
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

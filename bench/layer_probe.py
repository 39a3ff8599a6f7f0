"""How well each layer of a frozen base model reads the labels: a linear probe per layer.

    python -m bench.layer_probe TRAIN.jsonl TEST.jsonl [--rows 800] [--model smollm2-135m]

Logistic regression on every other layer's hidden state at the text's last token (what the
class head reads) and on the mean of the layer's states, fitted on ``--rows`` training rows
and scored (macro-F1) on the test rows. The texts are encoded as `task: classify` encodes
them (``--text-column``, ``--label-column``, at most ``--max-length`` tokens). Printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tunelab.config import DataConfig, ModelConfig
from tunelab.data.readers import read_rows
from tunelab.models.load import load_tokenizer
from tunelab.models.resolve import resolve_model
from tunelab.tasks.classify.data import encode_text


def layer_features(model: Any, tokenizer: Any, texts: list[str], data: DataConfig) -> np.ndarray:
    """[texts, 2 (last token, mean), layers + 1, hidden] from one forward pass per text."""
    features = []
    for text in texts:
        ids = encode_text(tokenizer, text, 0, data).input_ids
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        last = torch.stack([state[0, -1] for state in states])
        mean = torch.stack([state[0].mean(0) for state in states])
        features.append(torch.stack([last, mean]))
    return torch.stack(features).numpy()


def probe(train: np.ndarray, train_labels: list, test: np.ndarray, test_labels: list) -> float:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    classifier.fit(train, train_labels)
    return float(f1_score(test_labels, classifier.predict(test), average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text-column", default="input")
    parser.add_argument("--label-column", default="output")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    from transformers import AutoModel

    folder = resolve_model(ModelConfig(name=args.model))
    tokenizer = load_tokenizer(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    splits = [read_rows(args.train).rows[: args.rows], read_rows(args.test).rows]
    started = time.perf_counter()
    data = DataConfig(max_length=args.max_length)  # bare texts, as the probe reads them
    train, test = [
        layer_features(model, tokenizer, [r.data[args.text_column] for r in rows], data)
        for rows in splits
    ]
    train_labels, test_labels = ([r.data[args.label_column] for r in rows] for rows in splits)
    print(f"{len(train)} + {len(test)} rows encoded in {time.perf_counter() - started:.0f} s")
    for layer in range(0, train.shape[2], 2):
        last, mean = (
            probe(train[:, kind, layer], train_labels, test[:, kind, layer], test_labels)
            for kind in (0, 1)
        )
        print(f"layer {layer:2d}: last token {last:.4f}  mean {mean:.4f}")


if __name__ == "__main__":
    main()

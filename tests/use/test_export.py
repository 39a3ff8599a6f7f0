"""tunelab export: GGUF files read back with gguf's reader and loaded back with transformers;
the Modelfile's Go template rendered by Go's own text/template."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunelab.errors import TunelabError
from tunelab.models.gguf_export import gguf_architecture, interleave_rotary_halves
from tunelab.models.modelfile import render, turn_pieces
from tunelab.use.export import PROBE_TEXTS, export_run, gguf_tolerance
from tunelab.use.open import open_run

GO_RENDER = Path(__file__).parent / "render_go_template.go"


def read_gguf(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field for name, field in reader.fields.items()}
    return {
        "arch": fields["general.architecture"].contents(),
        "tokens": len(fields["tokenizer.ggml.tokens"].data),
        "eos": fields["tokenizer.ggml.eos_token_id"].contents(),
        "template": fields["tokenizer.chat_template"].contents(),
        "pre": fields["tokenizer.ggml.pre"].contents(),
        "types": {t.tensor_type.name for t in reader.tensors},
    }


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """A finished run of the tiny Llama (SmolLM2's tokenizer and template), 2 steps."""
    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    root = tmp_path_factory.mktemp("llama-run")
    data = root / "rows.jsonl"
    rows = [{"instruction": f"Say {i}", "output": f"{i} 号"} for i in range(16)]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    config = {
        "name": "llama",
        "output_dir": str(root / "runs"),
        "model": str(llama_dir),
        "data": {"train": str(data), "max_length": 64, "val_fraction": 0.25},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-2},
        "eval": {"generate": False},
    }
    train(validate_config(config, "llama"))
    return root / "runs" / "llama"


@pytest.fixture(scope="module")
def qwen3_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny Qwen3 run exported once for Ollama (a GGUF in f16 and a Modelfile): loading a
    GGUF with a 151,936-token vocabulary back takes transformers about a minute."""
    return export_run(tiny_run, tmp_path_factory.mktemp("qwen3") / "m.gguf", "ollama", "f16")


def test_a_qwen3_run_exports_its_tokenizer_and_template_and_loads_back(
    tiny_run: Path, qwen3_export: dict
) -> None:
    opened = open_run(tiny_run)
    found = read_gguf(Path(qwen3_export["path"]))
    assert found["arch"] == "qwen3" and found["pre"] == "qwen2"
    assert found["tokens"] == opened.model.config.vocab_size == qwen3_export["vocab_size"]
    assert found["eos"] == opened.tokenizer.eos_token_id
    assert found["template"] == opened.tokenizer.chat_template
    assert "F16" in found["types"] and "F32" in found["types"]  # norms stay f32
    # export_run itself loaded the file back and compared; its figures are within the bound
    assert qwen3_export["relative_logit_difference"] <= gguf_tolerance("f16", 2)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_a_llama_run_is_permuted_for_gguf_and_loads_back_equal(
    llama_run: Path, tmp_path: Path, dtype: str
) -> None:
    from transformers import AutoTokenizer

    report = export_run(llama_run, tmp_path / "llama.gguf", "gguf", dtype)
    found = read_gguf(tmp_path / "llama.gguf")
    # the embedded tokenizer splits like GPT-2 (no separate digits): llama.cpp must too
    assert found["arch"] == "llama" and found["pre"] == "gpt-2"
    assert {"f16": "F16", "bf16": "BF16"}[dtype] in found["types"]
    assert report["relative_logit_difference"] <= gguf_tolerance(dtype, 2)
    carried = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="llama.gguf")
    opened = open_run(llama_run)
    for text in PROBE_TEXTS:
        assert carried(text)["input_ids"] == opened.tokenizer(text)["input_ids"]


def test_without_the_rotary_permutation_the_check_would_fail(
    llama_run: Path, tmp_path: Path
) -> None:
    import tunelab.models.gguf_export as exporter

    original = exporter.interleave_rotary_halves
    exporter.interleave_rotary_halves = lambda weight, heads: weight
    try:
        with pytest.raises(TunelabError, match="logits differ"):
            export_run(llama_run, tmp_path / "broken.gguf", "gguf", "f16")
    finally:
        exporter.interleave_rotary_halves = original


def test_interleaving_pairs_each_head_halves() -> None:
    import numpy as np

    rows = np.arange(8).reshape(8, 1)  # two heads of four: halves (0,1 | 2,3), (4,5 | 6,7)
    assert interleave_rotary_halves(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_class_heads_and_other_architectures_get_a_clear_refusal(
    class_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(TunelabError, match=r"classification heads.*tunelab serve"):
        export_run(class_run, tmp_path / "x.gguf")
    with pytest.raises(TunelabError, match=r"not GPT2LMHeadModel.*tunelab merge"):
        gguf_architecture(SimpleNamespace(architectures=["GPT2LMHeadModel"]))
    with pytest.raises(TunelabError, match="--dtype q4"):
        export_run(class_run.parent.parent.parent / "nothing", tmp_path / "x.gguf", dtype="q4")


CONVERSATIONS = [
    [{"role": "user", "content": "你好"}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Capital of France?"},
    ],
    [
        {"role": "user", "content": "第一个问题"},
        {"role": "assistant", "content": "第一个回答"},
        {"role": "user", "content": "Second question,\nwith two lines"},
    ],
]


def render_with_go(template: str, system: str, messages: list[dict[str, str]], tmp: Path) -> str:
    """Go's text/template on Ollama's data: .System and the other turns in .Messages."""
    payload = tmp / "data.json"
    payload.write_text(json.dumps({"template": template, "system": system, "messages": messages}))
    done = subprocess.run(
        ["go", "run", str(GO_RENDER), str(payload)], capture_output=True, text=True, check=True
    )
    return done.stdout


def modelfile_parts(text: str) -> tuple[str, str, list[str]]:
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else ""
    stops = [line.split('"')[1] for line in text.splitlines() if line.startswith("PARAMETER stop")]
    return template, system, stops


@pytest.mark.skipif(
    shutil.which("go") is None, reason="Go is not installed (make test installs it)"
)
@pytest.mark.parametrize("which", ["qwen3", "llama"])
def test_the_modelfile_renders_what_the_runs_template_renders(
    which: str, tiny_run: Path, llama_run: Path, qwen3_export: dict, tmp_path: Path
) -> None:
    if which == "qwen3":
        run, report = tiny_run, qwen3_export
    else:  # and q8_0 on the way
        run, report = llama_run, export_run(llama_run, tmp_path / "m.gguf", "ollama", "q8_0")
        assert "Q8_0" in read_gguf(tmp_path / "m.gguf")["types"]
        assert report["relative_logit_difference"] <= gguf_tolerance("q8_0", 2)
    template, default_system, stops = modelfile_parts(Path(report["modelfile"]).read_text())
    opened = open_run(run)
    assert opened.tokenizer.eos_token in stops
    thinking = opened.config.eval.generation.thinking
    for conversation in CONVERSATIONS:
        system = next((m["content"] for m in conversation if m["role"] == "system"), "")
        turns = [m for m in conversation if m["role"] != "system"]
        expected = render(opened.tokenizer, conversation, thinking)
        assert render_with_go(template, system or default_system, turns, tmp_path) == expected
    if which == "llama":  # SmolLM2's template writes its own system turn when none is given
        assert "SmolLM" in default_system
    assert turn_pieces(opened.tokenizer, thinking).close.strip() in stops


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (make llama-cpp compiles it, ~15 minutes)",
)
def test_llama_cpp_answers_like_tunelab_predict(embedded_dir: Path, tmp_path: Path) -> None:
    from llama_cpp import Llama

    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    rows = [
        {
            "instruction": f"评论：{'很好' if i % 2 else '很差'}。好还是坏？",
            "output": "好" if i % 2 else "坏",
        }
        for i in range(24)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    config = {
        "name": "embedded",
        "output_dir": str(tmp_path / "runs"),
        "model": "smollm2-135m",
        "data": {"train": str(data), "max_length": 128, "val_fraction": 0.25},
        "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-3},
        "eval": {"generate": False},
    }
    train(validate_config(config, "embedded"))
    run = tmp_path / "runs" / "embedded"
    export_run(run, tmp_path / "embedded.gguf", "gguf", "f16")
    opened = open_run(run)
    chat = [{"role": "user", "content": rows[1]["instruction"]}]
    expected = opened.generate([chat])[0]
    llama = Llama(str(tmp_path / "embedded.gguf"), n_ctx=256, verbose=False)
    prompt = render(opened.tokenizer, chat, opened.config.eval.generation.thinking)
    answer = llama(prompt, max_tokens=opened.config.eval.generation.max_new_tokens, temperature=0)
    assert answer["choices"][0]["text"].strip() == expected.strip()

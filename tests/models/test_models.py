"""Model specs: every kind resolves or fails with a message that says what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.models.load import attach_lora, load_causal_lm
from tunelab.models.resolve import convert_gguf, embedded_gguf, resolve_model


def test_local_directory_and_bad_specs(qwen3_dir: Path, tmp_path: Path) -> None:
    assert resolve_model(ModelConfig(name=str(qwen3_dir))) == qwen3_dir
    with pytest.raises(TunelabError, match=r"the directory has no config\.json"):
        resolve_model(ModelConfig(name=str(tmp_path)))
    with pytest.raises(TunelabError, match="GGUF file not found"):
        resolve_model(ModelConfig(name=str(tmp_path / "x.gguf")))
    with pytest.raises(
        TunelabError, match=r"not an embedded model .*a local directory, a \.gguf file"
    ):
        resolve_model(ModelConfig(name="./no/such/dir"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_resolve(spec: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = (
        "from tunelab.config import ModelConfig\nfrom tunelab.models.resolve import resolve_model\n"
        "from tunelab.errors import TunelabError\n"
        f"try:\n    resolve_model(ModelConfig(name={spec!r}))\n"
        "except TunelabError as e:\n    print('ERROR', e)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.mark.parametrize("offline", ["0", "1"])
def test_unreachable_hub_names_the_alternatives(tmp_path: Path, offline: str) -> None:
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": offline,
    }
    result = run_resolve("Qwen/Qwen3-0.6B", env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("ERROR model Qwen/Qwen3-0.6B: the hub (http://127.0.0.1:")
    assert "give a local model directory or a .gguf file" in result.stdout


def test_hub_cache_is_used_offline(tmp_path: Path, qwen3_dir: Path) -> None:
    """A model already in the HF cache loads with HF_HUB_OFFLINE=1 and no network."""
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for file in qwen3_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    code = (
        "from tunelab.config import ModelConfig\nfrom tunelab.models.resolve import resolve_model\n"
        "print(resolve_model(ModelConfig(name='acme/tiny')))"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == str(snapshot), result.stderr


def test_modelscope_without_the_extra_says_how_to_install(tmp_path: Path) -> None:
    result = run_resolve("modelscope:Qwen/Qwen3-0.6B", {})
    if "ModelScope support is an extra" not in result.stdout:
        pytest.skip("modelscope is installed here")
    assert "pip install 'tunelab[modelscope]'" in result.stdout


def test_qlora_on_cpu_is_a_clear_error(qwen3_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TunelabError, match="4bit \\(QLoRA\\) needs a CUDA GPU"):
        load_causal_lm(
            qwen3_dir, ModelConfig(name=str(qwen3_dir), quantization="4bit"), torch.float32
        )


def test_lora_targets_all_linear_layers_and_freezes_the_base(qwen3_dir: Path) -> None:
    from tunelab.config import LoraConfig

    model = attach_lora(
        load_causal_lm(qwen3_dir, ModelConfig(name=str(qwen3_dir)), torch.float32), LoraConfig(r=2)
    )
    trainable = {
        n.split(".lora_")[0].rsplit(".", 1)[-1]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_on_the_last_layers_only_keeps_backward_out_of_the_others(qwen3_dir: Path) -> None:
    from tunelab.config import LoraConfig

    base = load_causal_lm(qwen3_dir, ModelConfig(name=str(qwen3_dir)), torch.float32)
    model = attach_lora(base, LoraConfig(r=2, last_layers=1))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    }  # fmt: skip
    assert all(".layers.1." in n for n in trainable)
    outputs = {}
    for index, layer in enumerate(model.get_base_model().model.layers):
        layer.register_forward_hook(lambda _m, _i, out, index=index: outputs.update({index: out}))
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    first, last = (o[0] if isinstance(o, tuple) else o for o in (outputs[0], outputs[1]))
    assert not first.requires_grad and last.requires_grad
    with pytest.raises(TunelabError, match=r"lora\.last_layers: 3, but this model has 2 layers"):
        attach_lora(
            load_causal_lm(qwen3_dir, ModelConfig(name=str(qwen3_dir)), torch.float32),
            LoraConfig(r=2, last_layers=3),
        )


@pytest.mark.slow
def test_embedded_gguf_converts_once_and_answers_like_the_gguf(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf("smollm2-135m")
    converted = convert_gguf(gguf, tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in converted.iterdir()
    }
    assert not list(converted.glob("*.bin"))
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(gguf, tmp_path) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again

    tokenizer = AutoTokenizer.from_pretrained(converted)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    original = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    copy = AutoModelForCausalLM.from_pretrained(converted)
    with torch.no_grad():
        assert torch.equal(original(ids).logits, copy(ids).logits)
    assert "quantization_config" not in (converted / "config.json").read_text()


@pytest.mark.slow
def test_a_qwen3_gguf_file_converts_and_matches_the_gguf_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tiny_models import write_tiny_qwen3_gguf

    gguf = write_tiny_qwen3_gguf(tmp_path / "tiny-qwen3.gguf", embedded_gguf("smollm2-135m"))
    converted = resolve_model(ModelConfig(name=str(gguf), cache_dir=tmp_path / "cache"))
    assert converted.parent == tmp_path / "cache"
    copy = AutoModelForCausalLM.from_pretrained(converted)
    assert copy.config.model_type == "qwen3" and copy.config.num_hidden_layers == 2
    original = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=gguf.name, dtype=torch.float32
    )
    ids = torch.tensor([[1, 200, 3000, 45]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, copy(ids).logits)


def test_every_n_th_layer_needs_a_transformers_that_takes_it() -> None:
    from tunelab.models.load import set_activation_checkpointing

    class BeforeTheRename:  # the first transformers 5.x releases: old names, no every_n_layers
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict) -> None:
            self.enabled = gradient_checkpointing_kwargs

    model = BeforeTheRename()
    with pytest.raises(TunelabError, match="takes every_n_layers; use true"):
        set_activation_checkpointing(model, 2)
    set_activation_checkpointing(model, 1)
    assert model.enabled == {"use_reentrant": False}

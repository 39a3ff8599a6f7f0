"""Loading: tokenizer, base model (in NF4 for QLoRA), class-head model, LoRA adapters, and
activation checkpointing."""

from __future__ import annotations

import importlib.util
import re
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tunelab.config import LoraConfig, ModelConfig
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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
        target_modules=_targets(model, lora),
        task_type=task_type,
        modules_to_save=modules_to_save,
        layers_to_transform=_last_layers(model, lora.last_layers),
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        if "not found in the base model" not in str(error):
            raise
        linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_linear(m)}
        raise TunelabError(
            f"lora.target_modules: {lora.target_modules} are not layers of this model; its "
            f"linear layers are {sorted(linear)} (or use all-linear)"
        ) from None


def _targets(model: PreTrainedModel, lora: LoraConfig) -> str | list[str]:
    """``lora.target_modules``; with ``last_layers``, `all-linear` spelt out as the names of
    the linear layers inside the numbered blocks (peft takes no layer range with a string)."""
    if lora.last_layers is None or lora.target_modules != "all-linear":
        return lora.target_modules
    in_blocks = re.compile(r"\.\d+\.")
    names = {
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if _is_linear(m) and in_blocks.search(n)
    }
    return sorted(names)


def _last_layers(model: PreTrainedModel, count: int | None) -> list[int] | None:
    """The indices of the model's last ``count`` layers (None: every layer)."""
    if count is None:
        return None
    total = model.config.num_hidden_layers
    if count > total:
        raise TunelabError(f"lora.last_layers: {count}, but this model has {total} layers")
    return list(range(total - count, total))


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")


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

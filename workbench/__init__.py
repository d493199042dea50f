"""workbench: an interpretability research workbench for GPT-2-style transformers."""

__version__ = "0.1.0"

from workbench.errors import (
    CheckpointError,
    ContextLengthError,
    HookError,
    InputError,
    ModelConfigError,
    ModelNotFoundError,
    WorkbenchError,
)
from workbench.hooks import ActivationCache, HookPoint, act_name
from workbench.models import GPT, FactoredMatrix, GPTConfig, gpt2_tokenizer, load_model
from workbench.models.default import load_default_model, resolve_default_model

__all__ = [
    "GPT", "GPTConfig", "FactoredMatrix", "load_model", "load_default_model", "resolve_default_model", "ActivationCache", "HookPoint", "act_name", "gpt2_tokenizer",
    "CheckpointError", "ContextLengthError", "HookError", "InputError", "ModelConfigError", "ModelNotFoundError",
    "WorkbenchError",
]

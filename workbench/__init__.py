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

# TransformerLens's name for our model class: the same class, so ported code that imports
# HookedTransformer builds, loads (HookedTransformer.from_pretrained) and type-checks GPTs.
HookedTransformer = GPT

from workbench import patching, utils  # noqa: E402  (TransformerLens's module names; they import the above)

__all__ = [
    "GPT", "HookedTransformer", "GPTConfig", "FactoredMatrix", "load_model", "load_default_model", "resolve_default_model", "ActivationCache", "HookPoint", "act_name", "gpt2_tokenizer",
    "CheckpointError", "ContextLengthError", "HookError", "InputError", "ModelConfigError", "ModelNotFoundError",
    "WorkbenchError", "patching", "utils",
]

"""Exceptions for bad input: each says what was wrong and what is allowed."""

import torch


class WorkbenchError(Exception):
    """Base class of workbench's own errors."""


class InputError(WorkbenchError, ValueError):
    """Tokens, prompts or options that the model or a method cannot take."""


class ContextLengthError(InputError):
    """A prompt longer than the model's context window (`block_size`)."""


class CheckpointError(WorkbenchError, ValueError):
    """A checkpoint that is missing, corrupt, truncated or does not fit the model."""


class ModelNotFoundError(WorkbenchError, FileNotFoundError):
    """A model name or path that cannot be resolved to weights."""


class ModelConfigError(InputError):
    """A model config (`GPTConfig`) with hyperparameters no GPT can have, or fields it does not know."""


class HookError(WorkbenchError):
    """Hooks used in a way that cannot work; each subclass keeps the built-in base it replaced."""


class UnknownHookError(HookError, KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class HookShapeError(HookError, ValueError):
    """A hook returned a tensor whose shape differs from the activation it replaces."""


class HookTypeError(HookError, TypeError):
    """A hook that returned something other than None or a Tensor, or a hook target that is
    neither a hook name nor a predicate on names."""


class HookUsageError(HookError, ValueError):
    """A hook option that cannot work: an unknown direction, a loss that is not a scalar, a
    backward pass with nothing to differentiate."""


class NotCachedError(WorkbenchError, KeyError):
    """An activation name that an `ActivationCache` does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a PyTorch error is the device (or the host, for CPU tensors) running out of memory."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text

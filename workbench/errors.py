"""Exceptions for bad input: each says what was wrong and what is allowed."""


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

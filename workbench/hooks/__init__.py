"""Hook points, the hooked-model mixin and the activation cache."""

from workbench.errors import HookShapeError, UnknownHookError
from workbench.hooks.cache import ActivationCache, act_name
from workbench.hooks.hook_point import HookPoint
from workbench.hooks.hooked import HookedRootModule

__all__ = [
    "ActivationCache",
    "HookPoint",
    "HookShapeError",
    "HookedRootModule",
    "UnknownHookError",
    "act_name",
]

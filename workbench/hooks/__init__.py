"""Hook points, the hooked-model mixin and the activation cache."""

from workbench.hooks.cache import ActivationCache, act_name
from workbench.hooks.hook_point import HookPoint, HookShapeError
from workbench.hooks.hooked import HookedRootModule, UnknownHookError

__all__ = [
    "ActivationCache",
    "HookPoint",
    "HookShapeError",
    "HookedRootModule",
    "UnknownHookError",
    "act_name",
]

"""Hook points, the hooked-model mixin, the activation cache and the hook layout.

names (`act_name` and every rule that reads a hook name), hook_point (`HookPoint`), hooked
(`HookedRootModule`: hooks, caching, input checks at the entry points), cache (`ActivationCache`),
accounting (activation shapes and cache sizes, from a meta-device forward).
"""

from workbench.errors import HookShapeError, UnknownHookError
from workbench.hooks.cache import ActivationCache, AttentionLayer
from workbench.hooks.hook_point import HookPoint
from workbench.hooks.hooked import HookedRootModule
from workbench.hooks.names import act_name, act_names

__all__ = [
    "ActivationCache",
    "AttentionLayer",
    "HookPoint",
    "HookShapeError",
    "HookedRootModule",
    "UnknownHookError",
    "act_name",
    "act_names",
]

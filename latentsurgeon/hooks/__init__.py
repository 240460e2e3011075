"""The one hook mechanism: layer selection, hook contexts that always clean up, a state guard,
early stop of a forward pass, and model surgery (a hook-free copy with layers followed by edits)."""

from latentsurgeon.errors import LayerNotFoundError
from latentsurgeon.hooks.handles import HookGroup, check_hook_function, hooked
from latentsurgeon.hooks.outputs import (
    classification_logits,
    primary_tensor,
    replace_primary,
    select_logits,
)
from latentsurgeon.hooks.resolve import (
    LayerSelectorError,
    Select,
    get_layer,
    is_layer_selector,
    layer_names,
    resolve_layer,
    resolve_layers,
)
from latentsurgeon.hooks.state import hook_count, preserve_model_state
from latentsurgeon.hooks.stop import ForwardStopper
from latentsurgeon.hooks.surgery import Followed, edited_copy

__all__ = [
    "Followed",
    "ForwardStopper",
    "HookGroup",
    "LayerNotFoundError",
    "LayerSelectorError",
    "Select",
    "check_hook_function",
    "classification_logits",
    "edited_copy",
    "get_layer",
    "hook_count",
    "hooked",
    "is_layer_selector",
    "layer_names",
    "preserve_model_state",
    "primary_tensor",
    "replace_primary",
    "resolve_layer",
    "resolve_layers",
    "select_logits",
]

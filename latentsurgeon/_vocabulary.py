"""The vocabulary as data: one name per concept, and the rules every public signature keeps.

``docs/architecture.md`` ("One name per concept") is the table for people; this module is the
same table for the test that reads every public signature (``tests/test_vocabulary.py``). A
parameter spelled another way, a positional order other than model -> layer -> data, an option
that can be passed positionally, or a ``progress`` that is off by default fails that test unless
it is listed in :data:`EXCEPTIONS` with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DATA_ROLES", "EXCEPTIONS", "LAYER_ROLES", "MODEL_ROLES", "PACKAGES", "REPLACED",
           "SIGNATURE_DEFAULTS", "TERMS", "Term"]


@dataclass(frozen=True)
class Term:
    """One concept: the parameter ``name`` that spells it, what it means, and the spellings
    accepted for it (``{alias: "supported (seed)" | "deprecated"}``)."""

    concept: str
    name: str
    meaning: str
    aliases: dict[str, str] = field(default_factory=dict)


TERMS: tuple[Term, ...] = (
    Term("the network", "model", "a torch.nn.Module; the first positional argument of every "
         "call that runs one (a label-free explainer's encoder is `encoder`)"),
    Term("one layer", "layer", "one exact model.named_modules() name (resolved once; what is "
         "stored is the canonical name)", {"layer_name": "supported (detoxai)"}),
    Term("several layers", "layers", "a selector: names, globs, 'path:' globs, 're:' regexes, "
         "module classes, Select, lists", {"cav_layers": "supported (detoxai)",
                                           "layer_names": "supported (detoxai)"}),
    Term("the samples analysed", "data", "a tensor (N, ...), a tuple (inputs, labels, ...), a "
         "dict of tensors, a split, Samples, a Dataset or a DataLoader",
         {"images": "deprecated", "inputs": "deprecated", "train": "deprecated (explainers' "
          "fit)", "test": "deprecated (explainers' explain)"}),
    Term("samples in two roles", "clean_inputs/corrupted_inputs, positive_inputs/"
         "negative_inputs, train/test, clean/poisoned", "a call that compares two sets names "
         "each by its role"),
    Term("class labels", "labels", "(N,) ints (a probe's regression values too)",
         {"targets": "deprecated (probe_layers)"}),
    Term("artifact flags", "artifact_labels", "(N,) 0/1: which samples carry the artifact"),
    Term("artifact masks", "masks", "1 = artifact element, of the inputs' shape or a "
         "per-sample shape", {"shortcut_masks": "supported (shortcut_detect, RRR)"}),
    Term("layer outputs given instead of inputs", "activations", "(N, ...) values of one layer"),
    Term("the output explained", "target", "the logit (output column) explained, tested or "
         "penalised: an int, (N,) indices, or None = the predicted class",
         {"target_class": "supported (detoxai)", "targets": "deprecated (artifact_relevance)"}),
    Term("where the logits are", "head", "dict key, attribute or tuple index of the logits in a "
         "structured output; 'logits' on a plain tuple takes element 0"),
    Term("the task head of a concept model", "task_head", "the module that maps concepts to "
         "task logits (a concept model's submodule; task_gradients' first argument)",
         {"head": "deprecated (task_gradients)"}),
    Term("the kind of a concept model's task head", "head_kind", "'linear' or 'mlp'; the CLI's "
         "--task-head", {"head": "deprecated (concept models)"}),
    Term("the scalar a gradient penalty differentiates", "masking", "RR-ClArC: max_logit, "
         "target_logit, ...; RRR: true_label, sum_log_probs", {"target": "deprecated (RRR)"}),
    Term("training passes", "epochs", "passes over the training data",
         {"n_epochs": "supported (shortcut_detect)"}),
    Term("randomness", "seed", "None = fresh randomness on every call, an int >= 0 = "
         "reproducible, a torch.Generator = draw from it",
         {"random_state": "supported (shortcut_detect)"}),
    Term("strength", "alpha", "how strongly an edit acts (ClArC projection, steering, shift)"),
    Term("significance level", "significance", "the level of a statistical test (TCAV)",
         {"alpha": "deprecated (tcav)"}),
    Term("pooling", "pooling", "how (N, C, *spatial) activations become per-sample vectors: "
         "'max', 'mean', 'flatten', 'none'; token activations (N, T, D): 'mean'/'max' over "
         "unmasked tokens with an attention_mask, and 'cls', 'last', 'position:K', 'token_mean', "
         "'token_max'; LEACE's channel-wise erasure is 'channel'"),
    Term("batch", "batch_size", "samples per forward (or training) pass"),
    Term("progress", "progress", "show a tqdm bar (it hides itself off a TTY); True by default "
         "everywhere"),
    Term("device", "device", "training calls: train there and move the model back (None = "
         "where it is); analysis calls run where the model is, so device= there is deprecated "
         "(a FutureWarning; only the model's own device is accepted)"),
)

#: Spellings that name a vocabulary concept another way, ``{spelling: canonical}``. A public
#: analysis signature never uses them (as aliases they are accepted, not declared).
REPLACED: dict[str, str] = {
    "layer_name": "layer", "layer_names": "layers", "cav_layers": "layers",
    "n_epochs": "epochs", "random_state": "seed", "target_class": "target",
    "targets": "target (the output) or labels (y values)", "images": "data", "inputs": "data",
}

#: Roles, for the order rule: positional parameters run model, then layer(s), then data, then
#: what the call is about (required); everything with a default beyond that is keyword-only.
MODEL_ROLES = frozenset({"model", "encoder", "before", "after"})
LAYER_ROLES = frozenset({"layer", "layers"})
DATA_ROLES = frozenset({
    "data", "labels", "artifact_labels", "masks", "shortcut_masks", "concepts", "activations",
    "train", "test", "clean", "poisoned", "clean_inputs", "corrupted_inputs", "positive_inputs",
    "negative_inputs",
})

#: Defaults every signature that has the parameter must use.
SIGNATURE_DEFAULTS: dict[str, object] = {"progress": True}

#: The public packages whose ``__all__`` is checked.
PACKAGES: tuple[str, ...] = ("activations", "concepts", "correct", "explain", "intervene",
                             "metrics", "cbm", "hooks", "training", "models", "data",
                             "experiments", "report", "verify", "discover")

#: ``{"package:qualname": reason}``: signatures that keep another form on purpose.
EXCEPTIONS: dict[str, str] = {
    "correct:add_clarc_hook": "detoxai's signature (model, cav, mean_length, layer, alpha), kept "
                              "so code written for detoxai runs unchanged",
    "correct:add_mass_mean_probe_hook": "detoxai's signature (model, probe, layers, alpha)",
    "activations:capture": "inputs= is a flag (also capture each layer's inputs), not data",
}

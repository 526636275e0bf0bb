"""Read a model's architecture: which layers LoRA can target, their shapes, and who is trainable.

Decoders name their layers differently, and a course that hard-codes Llama's ``q_proj`` breaks on
the first GPT-2 a learner brings:

================  ==================================  =======================================
architecture      attention                           MLP
================  ==================================  =======================================
Llama, Qwen,      ``q_proj k_proj v_proj o_proj``     ``gate_proj up_proj down_proj``
Gemma, Mistral
Phi-3             ``qkv_proj`` (fused) ``o_proj``     ``gate_up_proj`` (fused) ``down_proj``
GPT-2             ``c_attn`` (fused) ``attn.c_proj``  ``c_fc mlp.c_proj`` (``Conv1D`` layers)
GPT-NeoX, Falcon  ``query_key_value`` ``dense``       ``dense_h_to_4h dense_4h_to_h``
OPT               ``q_proj k_proj v_proj out_proj``   ``fc1 fc2`` (directly in the layer)
================  ==================================  =======================================

So everything here is read from the model itself. The linear layers are the ones peft's
``target_modules="all-linear"`` adapts (``nn.Linear`` and transformers' ``Conv1D``, without the
output head); each is classed as attention or MLP by the module it sits in. The names returned
are what ``LoraConfig(target_modules=...)`` accepts: the short name (``q_proj``), or, where the
short name alone would also match a layer of the other kind (GPT-2's ``c_proj`` is both
attention's output and the MLP's down projection), the last two parts (``mlp.c_proj``): peft
matches a target against the end of the module name.

GPT-2's ``Conv1D`` computes ``x @ W + b`` with ``W`` stored as (in, out), transposed from
``nn.Linear``; peft handles it with ``fan_in_fan_out=True`` (set automatically, with a warning).
A fused projection (``qkv_proj``) is one linear layer: LoRA adds one ``A``/``B`` pair on it,
``r * (in + out)`` parameters with ``out = q + k + v`` outputs.

>>> from course_utils.tiny_models import tiny_model
>>> gpt2 = tiny_model("gpt2")
>>> attention_projection_names(gpt2), mlp_projection_names(gpt2)
(['c_attn', 'attn.c_proj'], ['c_fc', 'mlp.c_proj'])
>>> fused_projections(tiny_model("phi3"))
{'qkv_proj': ('q', 'k', 'v'), 'gate_up_proj': ('gate', 'up')}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from course_utils.tables import Html, html_table

__all__ = [
    "ATTENTION_OUTPUTS",
    "LinearLayer",
    "TrainableTable",
    "all_linear_names",
    "architecture_notes",
    "as_linear",
    "attention_projection_names",
    "bitsandbytes_support",
    "decoder_linear_layers",
    "default_lora_targets",
    "fused_projections",
    "ia3_targets",
    "is_conv1d",
    "layer_shape",
    "linear_layer_names",
    "logical_numel",
    "lora_parameter_count",
    "matches_target",
    "mlp_projection_names",
    "prefix_tuning_kwargs",
    "trainable_parameter_table",
]

_ATTENTION_WORDS = ("attn", "attention")
#: Attention output projections by name. Registration order does not tell (Phi-3 registers o_proj
# before qkv_proj), and a forward pass to see the call order would need real weights.
ATTENTION_OUTPUTS = ("o_proj", "out_proj", "dense", "c_proj", "wo", "out_lin")
# Fused projections by name (transformers' modeling files): what each one computes at once.
_FUSED = {
    "qkv_proj": ("q", "k", "v"),  # Phi-3, Phi-4-mini
    "query_key_value": ("q", "k", "v"),  # GPT-NeoX / Pythia, Falcon
    "c_attn": ("q", "k", "v"),  # GPT-2 (Conv1D)
    "Wqkv": ("q", "k", "v"),  # MPT, Phi-2 style
    "W_pack": ("q", "k", "v"),  # Baichuan
    "gate_up_proj": ("gate", "up"),  # Phi-3
}


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored (in, out).

    >>> is_conv1d(torch.nn.Linear(2, 3))
    False
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, Conv1D)


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear``, a ``Conv1D``, a bitsandbytes or a peft-wrapped layer.

    >>> layer_shape(torch.nn.Linear(8, 4))
    (8, 4)
    """
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if is_conv1d(base):
        return int(base.nx), int(base.nf)  # weight is (in, out)
    if hasattr(base, "in_features") and hasattr(base, "out_features"):
        return int(base.in_features), int(base.out_features)
    raise TypeError(f"{type(module).__name__} is not a linear layer (no in_features/out_features, not a Conv1D).")


def as_linear(module: nn.Module) -> nn.Linear:
    """A float32 CPU ``nn.Linear`` computing the same as ``module`` (a copy; ``Conv1D``'s weight transposed).

    GPT-2's ``Conv1D`` stores its weight as (in, out); ``nn.Linear`` as (out, in). Copying it into an
    ``nn.Linear`` lets code written for ``nn.Linear`` (a LoRA layer from scratch) run on any model.

    >>> from transformers.pytorch_utils import Conv1D
    >>> conv = Conv1D(nf=4, nx=8)
    >>> x = torch.randn(2, 8)
    >>> torch.allclose(as_linear(conv)(x), conv(x), atol=1e-6)
    True
    """
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    in_f, out_f = layer_shape(base)
    weight = base.weight.detach().float().cpu()
    if is_conv1d(base):
        weight = weight.T
    if weight.shape != (out_f, in_f):
        raise TypeError(
            f"Cannot copy {type(base).__name__} into nn.Linear: weight shape {tuple(weight.shape)} "
            f"is not (out, in) = {(out_f, in_f)} (a quantized layer? dequantize it first)."
        )
    bias = getattr(base, "bias", None)
    linear = nn.Linear(in_f, out_f, bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.detach().float().cpu())
    return linear


@dataclass(frozen=True)
class LinearLayer:
    """One adaptable linear layer of the decoder.

    ``name`` is the full module name; ``target`` the name to put in ``target_modules``; ``kind`` is
    ``"attention"``, ``"mlp"`` or ``"other"`` (a linear layer outside the decoder blocks).
    """

    name: str
    target: str
    kind: str
    in_features: int
    out_features: int
    bias: bool
    conv1d: bool
    fused: tuple[str, ...] | None


def _is_linear(module: nn.Module) -> bool:
    # peft's "all-linear" takes exactly these two classes (peft/tuners/tuners_utils.py,
    # _maybe_include_all_linear_layers); bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear.
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _kind(name: str) -> str:
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    if not digits:
        return "other"
    inner = parts[digits[-1] + 1 : -1]  # modules between the layer index and the layer itself
    if any(w in p.lower() for p in inner for w in _ATTENTION_WORDS):
        return "attention"
    return "mlp"  # the rest of a decoder block is its feed-forward part (mlp, ffn, or OPT's fc1/fc2)


def _output_head_names(model: nn.Module) -> set[str]:
    heads = set()
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    for name, module in model.named_modules():
        if (out is not None and module is out) or name.split(".")[-1] in ("lm_head", "embed_out"):
            heads.add(name)
    return heads


def decoder_linear_layers(model: nn.Module) -> list[LinearLayer]:
    """Every linear layer LoRA could adapt (what peft's ``"all-linear"`` selects), in model order.

    Works on a plain model, a peft-wrapped one (the frozen layer sits in ``.base_layer``; LoRA's
    own ``lora_A`` / ``lora_B`` are skipped) and a bitsandbytes-quantized one.

    >>> from course_utils.tiny_models import tiny_model
    >>> [(l.target, l.kind) for l in decoder_linear_layers(tiny_model("gpt2"))][:4]
    [('c_attn', 'attention'), ('attn.c_proj', 'attention'), ('c_fc', 'mlp'), ('mlp.c_proj', 'mlp')]
    """
    heads = _output_head_names(model)
    found: list[tuple[str, nn.Module]] = []
    seen: set[str] = set()
    for name, module in model.named_modules():
        if not _is_linear(module) or ".lora_" in f".{name}" or name in heads:
            continue
        name = name.removesuffix(".base_layer")
        name = name.replace("base_model.model.", "", 1) if name.startswith("base_model.model.") else name
        if name in seen or name.split(".")[-1] in ("lm_head", "embed_out"):
            continue
        seen.add(name)
        found.append((name, module))
    # Target names: the short name, or parent.short where the short name alone would also match a
    # layer of another kind (peft matches a target against the end of the module name).
    kinds: dict[str, set[str]] = {}
    for name, _ in found:
        kinds.setdefault(name.split(".")[-1], set()).add(_kind(name))
    layers = []
    for name, module in found:
        short = name.split(".")[-1]
        target = ".".join(name.split(".")[-2:]) if len(kinds[short]) > 1 else short
        in_f, out_f = layer_shape(module)
        layers.append(
            LinearLayer(
                name=name,
                target=target,
                kind=_kind(name),
                in_features=in_f,
                out_features=out_f,
                bias=getattr(module, "bias", None) is not None,
                conv1d=is_conv1d(module),
                fused=_FUSED.get(short),
            )
        )
    return layers


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def attention_projection_names(model: nn.Module) -> list[str]:
    """The ``target_modules`` names of the attention projections, e.g. ``['q_proj', 'k_proj', 'v_proj', 'o_proj']``.

    Read from the model (layers inside a module named like ``self_attn`` / ``attention``), so a
    notebook never hard-codes one architecture's names. The output projection comes last.

    >>> from course_utils.tiny_models import tiny_model
    >>> attention_projection_names(tiny_model("phi3"))
    ['qkv_proj', 'o_proj']

    >>> attention_projection_names(tiny_model("gpt_neox"))
    ['query_key_value', 'dense']
    """
    names = _unique(layer.target for layer in decoder_linear_layers(model) if layer.kind == "attention")
    return sorted(names, key=lambda n: n.split(".")[-1] in ATTENTION_OUTPUTS)  # stable: inputs first


def mlp_projection_names(model: nn.Module) -> list[str]:
    """The ``target_modules`` names of the MLP (feed-forward) layers, e.g. ``['gate_proj', 'up_proj', 'down_proj']``.

    >>> from course_utils.tiny_models import tiny_model
    >>> mlp_projection_names(tiny_model("opt")), mlp_projection_names(tiny_model("phi3"))
    (['fc1', 'fc2'], ['gate_up_proj', 'down_proj'])
    """
    return _unique(layer.target for layer in decoder_linear_layers(model) if layer.kind == "mlp")


def all_linear_names(model: nn.Module) -> list[str]:
    """The ``target_modules`` names peft's ``"all-linear"`` resolves to on ``model``.

    Asks peft itself (``_maybe_include_all_linear_layers``, what ``get_peft_model`` runs) which
    modules it would adapt, and names them as `decoder_linear_layers` does.

    >>> from course_utils.tiny_models import tiny_model
    >>> all_linear_names(tiny_model("falcon"))
    ['query_key_value', 'dense', 'dense_h_to_4h', 'dense_4h_to_h']
    """
    layers = decoder_linear_layers(model)
    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

        chosen = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules
        chosen = {n.replace(".base_layer", "") for n in chosen}
        picked = [layer for layer in layers if any(layer.name.endswith(n) or n.endswith(layer.name) for n in chosen)]
        layers = picked or layers
    except Exception:  # noqa: BLE001 - a private peft helper: fall back to the same rule written here
        pass
    return _unique(layer.target for layer in layers)


def default_lora_targets(model: nn.Module) -> list[str]:
    """peft's default ``target_modules`` for this model type, or the attention input projections.

    peft keeps a default per model type (``peft.utils.constants.
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``: ``q_proj, v_proj`` for Llama, ``c_attn``
    for GPT-2, ``query_key_value`` for NeoX and Falcon) and raises "Please specify
    ``target_modules``" for the others (Phi-3). For those this returns the attention projections
    that read the hidden states: the query and value projections, or the fused one (``qkv_proj``).

    >>> from course_utils.tiny_models import tiny_model
    >>> default_lora_targets(tiny_model("llama")), default_lora_targets(tiny_model("phi3"))
    (['q_proj', 'v_proj'], ['qkv_proj'])
    """
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING,
    )

    layers = decoder_linear_layers(model)
    present = {layer.target for layer in layers} | {layer.name.split(".")[-1] for layer in layers}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = [t for t in MAPPING.get(model_type, []) if t in present]
    if known:
        return known
    attention = attention_projection_names(model)
    inputs = [n for n in attention if n.split(".")[-1] not in ATTENTION_OUTPUTS] or attention
    return [n for n in inputs if n.split(".")[-1][0] in "qv" or n.split(".")[-1] in _FUSED] or inputs


def fused_projections(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Fused projections of ``model``: target name -> what it computes at once (``('q', 'k', 'v')``).

    >>> from course_utils.tiny_models import tiny_model
    >>> fused_projections(tiny_model("llama"))
    {}
    """
    return {layer.target: layer.fused for layer in decoder_linear_layers(model) if layer.fused}


def matches_target(module_name: str, target: str) -> bool:
    """True if peft's ``target_modules=[target]`` selects the module named ``module_name``.

    peft (``check_target_module_exists``) matches the full name or its end after a dot.

    >>> matches_target("transformer.h.0.mlp.c_proj", "mlp.c_proj"), matches_target("h.0.attn.c_proj", "mlp.c_proj")
    (True, False)
    """
    return module_name == target or module_name.endswith("." + target)


def linear_layer_names(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every adaptable linear layer, by target name, with its (in, out) features.

    The output head (``lm_head``) is left out, as peft's ``"all-linear"`` does.

    >>> from course_utils.tiny_models import tiny_model
    >>> linear_layer_names(tiny_model("phi3"))
    {'o_proj': (64, 64), 'qkv_proj': (64, 128), 'gate_up_proj': (64, 256), 'down_proj': (128, 64)}
    """
    out: dict[str, tuple[int, int]] = {}
    for layer in decoder_linear_layers(model):
        out.setdefault(layer.target, (layer.in_features, layer.out_features))
    return out


def lora_parameter_count(model: nn.Module, r: int, target_modules: Iterable[str]) -> int:
    """How many parameters LoRA of rank ``r`` adds on the layers ``target_modules`` selects.

    ``r * (in_features + out_features)`` summed over every selected linear or ``Conv1D`` layer, a
    fused one counted once: what ``print_trainable_parameters`` reports with ``bias="none"``.

    >>> from course_utils.tiny_models import tiny_model
    >>> lora_parameter_count(tiny_model("gpt2"), 8, ["c_attn"])    # 2 layers x 8 x (64 + 192)
    4096
    """
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    return sum(
        r * (layer.in_features + layer.out_features)
        for layer in decoder_linear_layers(model)
        if any(matches_target(layer.name, t) for t in targets)
    )


def ia3_targets(model: nn.Module) -> dict[str, list[str]]:
    """``target_modules`` and ``feedforward_modules`` for ``IA3Config``: peft's defaults, or read from the model.

    peft keeps IA3 defaults per model type (keys/values and the MLP's output projection) and raises
    "Please specify ``target_modules``" for the others (Phi-3). Those get the attention input
    projections that produce keys and values (the fused one where q/k/v are fused) and the MLP's
    output projection, whose input IA3 rescales.

    >>> from course_utils.tiny_models import tiny_model
    >>> ia3_targets(tiny_model("phi3"))
    {'target_modules': ['qkv_proj', 'down_proj'], 'feedforward_modules': ['down_proj']}
    """
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in TARGETS and model_type in FEEDFORWARD:
        return {"target_modules": list(TARGETS[model_type]), "feedforward_modules": list(FEEDFORWARD[model_type])}
    attention = [n for n in attention_projection_names(model) if n.split(".")[-1] not in ATTENTION_OUTPUTS]
    kv = [n for n in attention if n.split(".")[-1][0] in "kv" or n.split(".")[-1] in _FUSED] or attention
    mlp = mlp_projection_names(model)
    down = mlp[-1:]  # the output projection is the MLP's last layer in every architecture here
    return {"target_modules": kv + down, "feedforward_modules": down}


def prefix_tuning_kwargs(model: nn.Module) -> dict[str, int]:
    """Extra ``PrefixTuningConfig`` arguments this architecture needs (``{}`` when peft reads them itself).

    Prefix tuning trains one key and one value vector per layer, head and virtual token, so its
    shape must match the attention's key/value heads. peft reads ``num_key_value_heads`` from the
    config (grouped-query attention); Falcon's multi-query attention (one key/value head,
    ``multi_query=True``) is not described that way, and the prefix then has the wrong number of
    heads ("Sizes of tensors must match").

    >>> from course_utils.tiny_models import tiny_model
    >>> prefix_tuning_kwargs(tiny_model("llama")), prefix_tuning_kwargs(tiny_model("falcon"))
    ({}, {'num_attention_heads': 1, 'token_dim': 16})
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "num_key_value_heads", None) is not None:
        return {}
    if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return {"num_attention_heads": 1, "token_dim": head_dim}
    return {}


def bitsandbytes_support(model: nn.Module) -> str | None:
    """None if transformers' bitsandbytes loading quantizes this architecture's linear layers, else why not.

    transformers (``integrations/bitsandbytes.py``, ``replace_with_bnb_linear``) replaces only layers
    whose type is exactly ``nn.Linear`` or ``Conv1D``. Falcon's ``FalconLinear`` subclasses
    ``nn.Linear``, so a 4-bit or 8-bit Falcon loads with every layer unquantized.

    >>> from course_utils.tiny_models import tiny_model
    >>> bitsandbytes_support(tiny_model("llama")) is None
    True
    >>> print(bitsandbytes_support(tiny_model("falcon")))  # doctest: +ELLIPSIS
    transformers' bitsandbytes loading quantizes only plain nn.Linear and Conv1D layers, and falcon's are FalconLinear: ...
    """
    quantized = ("Linear4bit", "Linear8bitLt")
    odd = set()
    for layer in decoder_linear_layers(model):
        module = model.get_submodule(layer.name)
        module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if type(module).__name__ in quantized or type(module) is nn.Linear or is_conv1d(module):
            continue
        odd.add(type(module).__name__)
    if not odd:
        return None
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return (
        f"transformers' bitsandbytes loading quantizes only plain nn.Linear and Conv1D layers, and {model_type}'s "
        f"are {', '.join(sorted(odd))}: 4-bit and 8-bit loading leave them in full precision, so the "
        "quantization steps run but change nothing."
    )


def architecture_notes(model_name: str) -> list[str]:
    """One sentence per course topic that does not apply to ``model_name``'s architecture as it would on Llama.

    Reads only the config (a local folder, a shipped short name or a cached hub id) and builds an
    empty meta-device model: nothing is downloaded or allocated. Unknown or unreachable models get
    no notes (loading them will say what is wrong).

    >>> import tempfile
    >>> from course_utils.tiny_models import save_tiny_model
    >>> architecture_notes(str(save_tiny_model("falcon", tempfile.mkdtemp())))  # doctest: +ELLIPSIS
    ["transformers' bitsandbytes loading quantizes only plain nn.Linear and Conv1D layers, and falcon's ..."]
    """
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        from course_utils.loading import resolve_model_path

        config = AutoConfig.from_pretrained(resolve_model_path(model_name))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - notes are a courtesy: loading the model reports real problems
        return []
    notes = [bitsandbytes_support(model)]
    return [n for n in notes if n]


# --------------------------------------------------------------------------- trainable parameters

_ADAPTER_PARTS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}


def logical_numel(param: torch.Tensor) -> int:
    """Number of weights a parameter stands for (a 4-bit weight stores 2 per byte, its ``quant_state`` the shape).

    >>> logical_numel(torch.zeros(3, 4))
    12
    """
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        n = 1
        for d in shape:
            n *= int(d)
        return n
    return param.numel()


def _owner_parts(param_name: str) -> tuple[str, str]:
    """(parent module, module) that owns an adapter parameter: ('self_attn', 'q_proj') for LoRA on q_proj."""
    parts = param_name.split(".")
    for i, part in enumerate(parts):
        if part in _ADAPTER_PARTS and i > 0:
            return (parts[i - 2] if i > 1 else ""), parts[i - 1]
    # other adapters (IA3, prompt encoders, modules_to_save): the owning module's name
    owners = [p for p in parts[:-1] if not p.isdigit() and p not in ("default", "weight", "bias")]
    return (owners[-2] if len(owners) > 1 else ""), (owners[-1] if owners else parts[0])


@dataclass
class TrainableTable:
    """Trainable parameters grouped by target module (q_proj, v_proj, ...). See `trainable_parameter_table`."""

    rows: list[dict[str, Any]]
    trainable: int
    total: int

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    @property
    def reduction_pct(self) -> float:
        """How many fewer parameters are trained than in full fine-tuning, in percent."""
        return 100.0 - self.trainable_pct

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "trainable": self.trainable,
            "total": self.total,
            "trainable_pct": round(self.trainable_pct, 4),
            "reduction_pct": round(self.reduction_pct, 4),
        }

    def __repr__(self) -> str:
        lines = [f"{'module':<20} {'layers':>7} {'trainable':>12} {'% of total':>11}"]
        for r in self.rows:
            lines.append(f"{r['module']:<20} {r['modules']:>7} {r['trainable']:>12,} {r['pct_of_total']:>10.3f}%")
        lines.append(
            f"{'total':<20} {'':>7} {self.trainable:>12,} {self.trainable_pct:>10.3f}%  of {self.total:,} "
            f"-> {self.reduction_pct:.2f}% fewer trainable parameters than full fine-tuning"
        )
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = [(r["module"], str(r["modules"]), f"{r['trainable']:,}", f"{r['pct_of_total']:.3f}%") for r in self.rows]
        total = (
            Html("<b>total</b>"),
            "",
            Html(f"<b>{self.trainable:,}</b>"),
            Html(f"<b>{self.trainable_pct:.3f}%</b>"),
        )
        table = html_table(["module", "layers", "trainable", "% of total"], [*rows, total])
        return (
            f"<div>{table}{self.reduction_pct:.2f}% fewer trainable parameters than full fine-tuning "
            f"({self.total:,} in all)</div>"
        )


def trainable_parameter_table(model: nn.Module) -> TrainableTable:
    """Trainable parameters grouped by target module name, with counts and % of all parameters.

    For a LoRA model each row is a target (``q_proj``, ``v_proj``, ...): how many layers carry it
    and how many parameters its A and B matrices add (``r * (in + out)`` per layer). A short name
    shared by two kinds of layer (GPT-2's ``c_proj``) gets one row each (``attn.c_proj``, ``mlp.c_proj``).
    A 4-bit weight counts as the number of weights it stands for.

    >>> from peft import LoraConfig, get_peft_model
    >>> from course_utils.tiny_models import tiny_model
    >>> pm = get_peft_model(tiny_model("llama"), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    >>> table = trainable_parameter_table(pm)
    >>> [(row["module"], row["modules"], row["trainable"]) for row in table.rows]
    [('q_proj', 2, 2048), ('v_proj', 2, 1536)]
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[int] = set()
    total = trainable = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = logical_numel(p)
        total += n
        if not p.requires_grad:
            continue
        trainable += n
        key = _owner_parts(name)
        owner = name.split(".lora_")[0] if ".lora_" in name else name.rsplit(".", 1)[0]
        g = groups.setdefault(key, {"owners": set(), "trainable": 0})
        g["owners"].add(owner)
        g["trainable"] += n
    parents: dict[str, set[str]] = {}
    for parent, short in groups:
        parents.setdefault(short, set()).add(parent)
    rows = [
        {
            "module": f"{parent}.{short}" if len(parents[short]) > 1 and parent else short,
            "modules": len(g["owners"]),
            "trainable": g["trainable"],
            "pct_of_total": round(100.0 * g["trainable"] / max(total, 1), 4),
        }
        for (parent, short), g in groups.items()
    ]
    return TrainableTable(rows=rows, trainable=trainable, total=total)

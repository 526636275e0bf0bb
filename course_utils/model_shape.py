"""An architecture's numbers, before any weight is downloaded: its config and the shapes of its layers.

- :func:`load_config` / :func:`list_configs`: a ``transformers`` config from a shipped short name
  (``data/configs/``), a folder or a ``.json`` file; :func:`random_model_from_config` builds a
  random-weight model of that shape to measure.
- :class:`ModelShape`: what the memory planner needs from an architecture (sizes, one decoder
  layer's adaptable linear layers and their roles, parameter counts), read from an empty
  (meta-device) model with :func:`course_utils.architectures.decoder_linear_layers`, the course's
  one source for layer names and shapes.
- :func:`adapted_targets`: which of those layers a recipe's ``target_modules`` adapts.

>>> shape = ModelShape.from_config(load_config("smollm2-135m"))
>>> shape.hidden, shape.layers, sorted(shape.names("mlp_in"))
(576, 30, ['gate_proj', 'up_proj'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_utils.architectures import ATTENTION_OUTPUTS, decoder_linear_layers, matches_target
from course_utils.recipe import Recipe
from course_utils.resources import data_dir

__all__ = [
    "CONFIG_DIR",
    "ModelShape",
    "adapted_targets",
    "list_configs",
    "load_config",
    "random_model_from_config",
]

CONFIG_DIR = data_dir("configs")  # the clone's data/configs or the wheel's copy (course_utils/resources.py)


def list_configs() -> list[str]:
    """Short names of the model configs shipped in ``data/configs/``.

    >>> "smollm2-135m" in list_configs()
    True
    """
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in CONFIG_DIR.glob("*/config.json"))


def load_config(name_or_path: Any) -> Any:
    """Return a ``transformers.PretrainedConfig`` from a config, a shipped short name or a path.

    ``name_or_path`` may be a ``PretrainedConfig`` (returned as is), a short name from
    `list_configs()` (``"smollm2-1.7b"``), a folder holding ``config.json`` or a ``.json`` file.
    Nothing is downloaded.

    >>> load_config("smollm2-135m").hidden_size
    576
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(name_or_path, PretrainedConfig):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(
            f"load_config expects a PretrainedConfig, a short name or a path, got {type(name_or_path).__name__}."
        )
    text = str(name_or_path)
    shipped = CONFIG_DIR / text / "config.json"
    if shipped.is_file():
        return AutoConfig.from_pretrained(str(shipped.parent))
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path))
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text())
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise ValueError(f'{path} has no \'model_type\'; add e.g. "model_type": "llama".')
        return AutoConfig.for_model(model_type, **data)
    raise FileNotFoundError(
        f"No model config named {text!r}: not one of the shipped configs {list_configs()} "
        "and not a folder with config.json or a .json file."
    )


def random_model_from_config(name_or_config: Any, dtype: str | Any = "float32", device: str | None = None) -> Any:
    """Build a random-weight causal LM of the config's shape (``AutoModelForCausalLM.from_config``).

    Memory depends on shapes and dtypes, not on weight values, so this lets you measure a model
    before downloading it. ``device="meta"`` builds it without allocating memory (parameter
    counts and dtypes only).

    >>> m = random_model_from_config("smollm2-135m", device="meta")
    >>> sum(p.numel() for p in m.parameters())
    134515008
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(name_or_config)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device is None:
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype)


# Model types whose decoder layer follows Llama's code path (RMSNorm, rotary, SwiGLU, separate
# q/k/v): the activation terms below model exactly these mechanisms.
_LLAMA_PATH = {
    "llama",
    "mistral",
    "qwen2",
    "smollm3",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "cohere",
    "stablelm",
    "mixtral",
    "qwen2_moe",
}
_NOTE_ACTIVATIONS = (
    "Activations of {t} are modelled with Llama's per-layer mechanisms ({why}), so the activation "
    "and peak terms are approximate; parameter counts and the weight, gradient and optimizer "
    "terms are exact."
)


@dataclass
class ModelShape:
    """What the estimate needs from an architecture, read from an empty (meta-device) model of it.

    ``linears`` holds one decoder layer's adaptable layers by target name (as
    `course_utils.architectures` names them) as ``(in_features, out_features, has_bias)``, and
    ``roles`` their role: ``attn_in`` (read the hidden states: q/k/v or a fused qkv), ``attn_out``,
    ``mlp_in`` (gate/up/fc1, fused or not), ``mlp_out``. ``intermediate`` is the MLP's inner width.

    >>> ModelShape.from_config(load_config("smollm2-135m")).linears["q_proj"]
    (576, 576, False)
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    linears: dict[str, tuple[int, int, bool]]
    roles: dict[str, str]
    n_params: int
    embed_params: int
    head_params: int
    other_linears: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    norms_per_layer: int = 2
    gated: bool = True
    model_type: str = "llama"
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """The shape of ``config``'s architecture (cached per config): exact where transformers can build it."""
        key = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else None
        if key is not None and key in _SHAPE_CACHE:
            return _SHAPE_CACHE[key]
        try:
            shape = cls._from_meta_model(config)
        except Exception as err:  # noqa: BLE001 - any config transformers cannot build: estimate from numbers
            shape = cls._from_config_numbers(config, err)
        if key is not None:
            _SHAPE_CACHE[key] = shape
        return shape

    @classmethod
    def _from_meta_model(cls, config: Any) -> ModelShape:
        """Read shapes from ``AutoModelForCausalLM.from_config`` on the meta device (no memory, exact)."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params = {id(p): p for p in model.parameters()}
        n_params = sum(p.numel() for p in params.values())
        embed = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
        tied = out is not None and out.weight is embed
        head_params = 0 if (out is None or tied) else sum(p.numel() for p in out.parameters())
        layers = decoder_linear_layers(model)
        digits = [[p for p in layer.name.split(".") if p.isdigit()] for layer in layers]
        first = [layer for layer, d in zip(layers, digits) if d and d[-1] == "0"]
        other = {
            layer.name: (layer.in_features, layer.out_features, layer.bias) for layer, d in zip(layers, digits) if not d
        }
        n_layers = len({d[-1] for d in digits if d})
        linears = {layer.target: (layer.in_features, layer.out_features, layer.bias) for layer in first}
        hidden = embed.shape[1]
        roles: dict[str, str] = {}
        for layer in first:
            if layer.kind == "attention":
                roles[layer.target] = (
                    "attn_in" if layer.in_features == hidden and not _is_output(layer.target) else "attn_out"
                )
            else:
                roles[layer.target] = (
                    "mlp_out"
                    if layer.out_features == hidden and layer.in_features != hidden or _is_output(layer.target)
                    else "mlp_in"
                )
        # Per decoder layer, all parameters (linears, norms, q_norm/k_norm): must be the same in every layer.
        block = _decoder_blocks(model)
        sizes = {sum(p.numel() for p in b.parameters()) for b in block}
        mlp_in = [t for t, r in roles.items() if r == "mlp_in"]
        mlp_out = [t for t, r in roles.items() if r == "mlp_out"]
        inter = linears[mlp_out[0]][0] if mlp_out else 4 * hidden
        gated = _gated(config, linears, mlp_in, inter)
        heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1))
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        kv_heads = _kv_heads(config, heads)
        norms = (
            sum(
                1
                for n, m in block[0].named_modules()
                if "norm" in type(m).__name__.lower() and n.split(".")[-1] not in ("q_norm", "k_norm")
            )
            if block
            else 2
        )
        model_type = str(getattr(config, "model_type", "model"))
        notes = _approximation_notes(config, model_type, block, sizes, norms, gated)
        return cls(
            hidden=hidden,
            intermediate=inter,
            layers=n_layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=embed.shape[0],
            tied=tied,
            linears=linears,
            roles=roles,
            n_params=n_params,
            embed_params=embed.numel(),
            head_params=head_params,
            other_linears=other,
            norms_per_layer=norms or 2,
            gated=gated,
            model_type=model_type,
            notes=notes,
        )

    @classmethod
    def _from_config_numbers(cls, config: Any, err: Exception) -> ModelShape:
        """A Llama-shaped guess from the config's numbers, for a config transformers cannot build here."""
        h = _first(config, "hidden_size", "n_embd", "d_model", default=1024)
        heads = _first(config, "num_attention_heads", "n_head", default=max(1, h // 64))
        inter = _first(config, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", default=4 * h)
        layers = _first(config, "num_hidden_layers", "n_layer", default=1)
        vocab = _first(config, "vocab_size", default=32000)
        head_dim = int(getattr(config, "head_dim", None) or h // heads)
        kv_heads = _kv_heads(config, heads)
        q, kv = heads * head_dim, kv_heads * head_dim
        ab, mb = bool(getattr(config, "attention_bias", False)), bool(getattr(config, "mlp_bias", False))
        linears = {
            "q_proj": (h, q, ab),
            "k_proj": (h, kv, ab),
            "v_proj": (h, kv, ab),
            "o_proj": (q, h, ab),
            "gate_proj": (h, inter, mb),
            "up_proj": (h, inter, mb),
            "down_proj": (inter, h, mb),
        }
        roles = {
            "q_proj": "attn_in",
            "k_proj": "attn_in",
            "v_proj": "attn_in",
            "o_proj": "attn_out",
            "gate_proj": "mlp_in",
            "up_proj": "mlp_in",
            "down_proj": "mlp_out",
        }
        tied = bool(getattr(config, "tie_word_embeddings", False))
        lin = layers * sum(i * o + (o if b else 0) for i, o, b in linears.values())
        n_params = lin + (2 * layers + 1) * h + vocab * h + (0 if tied else vocab * h)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}" if str(err) else type(err).__name__
        note = (
            f"transformers could not build {getattr(config, 'model_type', 'this model')} here ({reason}), so "
            "this estimate assumes a Llama-shaped decoder of the config's sizes and is approximate."
        )
        return cls(
            hidden=h,
            intermediate=inter,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=vocab,
            tied=tied,
            linears=linears,
            roles=roles,
            n_params=n_params,
            embed_params=vocab * h,
            head_params=0 if tied else vocab * h,
            model_type=str(getattr(config, "model_type", "model")),
            notes=[note],
        )

    def names(self, role: str) -> list[str]:
        """The targets of one decoder layer that play ``role`` (``attn_in``, ``attn_out``, ``mlp_in``, ``mlp_out``)."""
        return [t for t, r in self.roles.items() if r == role]


def _approximation_notes(
    config: Any, model_type: str, block: list[Any], sizes: set[int], norms: int, gated: bool
) -> list[str]:
    """Why the activation terms are only approximate for this architecture (empty for Llama's code path)."""
    notes: list[str] = []
    if len(sizes) > 1:
        notes.append(
            f"The {model_type} layers differ in size; per-layer activations use the first layer, "
            "so they are approximate."
        )
    if model_type not in _LLAMA_PATH:
        why = []
        if norms and any("LayerNorm" in type(m).__name__ for m in block[0].modules()):
            why.append("its LayerNorm saves different tensors than RMSNorm")
        if not gated:
            why.append(
                f"its plain {getattr(config, 'activation_function', None) or getattr(config, 'hidden_act', 'MLP')} "
                "activation saves its own inputs"
            )
        if getattr(config, "parallel_attn", False) or getattr(config, "use_parallel_residual", False):
            why.append("attention and MLP run in parallel")
        notes.append(_NOTE_ACTIVATIONS.format(t=model_type, why="; ".join(why) or "its own attention code"))
    return notes


_SHAPE_CACHE: dict[str, ModelShape] = {}


def _first(config: Any, *names: str, default: int) -> int:
    for n in names:
        value = getattr(config, n, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _kv_heads(config: Any, heads: int) -> int:
    if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
        return 1  # Falcon-7B style multi-query attention
    return int(getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None) or heads)


def _is_output(target: str) -> bool:
    return target.split(".")[-1] in ATTENTION_OUTPUTS or target.split(".")[-1] in ("down_proj", "fc2", "dense_4h_to_h")


def _gated(config: Any, linears: dict[str, tuple[int, int, bool]], mlp_in: list[str], inter: int) -> bool:
    """A gated MLP (SwiGLU, GeGLU): two input projections, or one fused one with twice the outputs."""
    if len(mlp_in) >= 2:
        return True
    return bool(mlp_in) and linears[mlp_in[0]][1] == 2 * inter


def _decoder_blocks(model: Any) -> list[Any]:
    import torch

    best: list[Any] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best = list(module)
    return best


# Well-known layer names of other architectures, by role, so that targets read from one model
# (notebook 01 plans its own MODEL and SmolLM2-1.7B with the same list) can be planned on another.
_ROLE_OF_NAME = {
    **dict.fromkeys(
        (
            "q_proj",
            "k_proj",
            "v_proj",
            "qkv_proj",
            "query_key_value",
            "c_attn",
            "Wqkv",
            "W_pack",
            "query",
            "key",
            "value",
        ),
        "attn_in",
    ),
    **dict.fromkeys(("o_proj", "out_proj", "dense", "attn.c_proj", "wo", "out_lin"), "attn_out"),
    **dict.fromkeys(("gate_proj", "up_proj", "gate_up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "w3"), "mlp_in"),
    **dict.fromkeys(("down_proj", "fc2", "mlp.c_proj", "dense_4h_to_h", "w2"), "mlp_out"),
}


def adapted_targets(recipe: Recipe, s: ModelShape, notes: list[str] | None = None) -> list[str]:
    """The per-layer targets a recipe adapts, by target name, matched as peft matches them.

    Names this architecture does not have but whose role is known (``c_attn`` is an attention
    input projection) are planned as this architecture's layers of that role, with a note in
    ``notes``; a name with no known role raises ``ValueError`` naming the model's layers.

    >>> shape = ModelShape.from_config(load_config("smollm2-135m"))
    >>> adapted_targets(Recipe(target_modules=["q_proj", "v_proj"]), shape)
    ['q_proj', 'v_proj']
    """
    known = list(s.linears)
    if recipe.target_modules == "all-linear":
        return known
    # A target name stands for the module path's end ("q_proj", "mlp.c_proj"); prefix one to match.
    chosen = [t for t in known if any(matches_target(f"layers.0.{t}", want) for want in recipe.target_modules)]
    unknown = [want for want in recipe.target_modules if not any(matches_target(f"layers.0.{t}", want) for t in known)]
    roles = {want: _ROLE_OF_NAME.get(want, _ROLE_OF_NAME.get(want.split(".")[-1])) for want in unknown}
    hopeless = [want for want, role in roles.items() if role is None or not s.names(role)]
    if hopeless:
        raise ValueError(
            f"Unknown target_modules {hopeless} for {s.model_type}: its linear layers are {known} "
            "(or use 'all-linear'). `course_utils.architectures.linear_layer_names(model)` lists them."
        )
    if unknown:
        mapped = [t for t in known if s.roles[t] in set(roles.values()) and t not in chosen]
        chosen = [t for t in known if t in chosen or t in mapped]
        if notes is not None:
            notes.append(
                f"target_modules {unknown} are not layer names of {s.model_type}; they were planned as its "
                f"layers of the same role ({mapped}), so the LoRA terms are approximate."
            )
    return chosen

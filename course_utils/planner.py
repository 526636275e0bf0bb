"""Plan training memory before you download weights.

`estimate_training_memory(config, recipe)` predicts the peak GPU memory of one training step
(what `torch.cuda.max_memory_allocated()` reports) from the architecture numbers in a model
config and a `Recipe` (full fine-tuning, LoRA, QLoRA, 8-bit LoRA; dtype, batch, sequence length,
gradient checkpointing, optimizer). It does not fit the reference table: every term models one
mechanism of transformers' Llama code, peft's LoRA layers, bitsandbytes and torch autocast, and the
comment beside each term says which. `benchmarks/planner_vs_reference.py` checks it against peak
memory measured on an H200 (`data/reference/`); all eight recipes land within 15%.

Any decoder: the shapes are read from an empty (meta-device) model built from the config, so
parameter counts, trainable counts (fused projections such as Phi-3's `qkv_proj`, GPT-2's `Conv1D`,
biases, norms with biases, tied or untied heads, grouped- or multi-query attention) and the
weight, gradient and optimizer terms are exact for every architecture transformers can build
(tests/test_architectures.py checks them against real byte counts). The activation terms model
Llama's code path; for other layer designs (LayerNorm, plain GELU MLPs, parallel attention/MLP
blocks) the estimate says in one sentence that it is approximate (`MemoryEstimate.notes`), and a
config transformers cannot build is estimated as a Llama-shaped decoder of its sizes, marked so.

Assumptions (those of the reference measurement and of `Trainer(bf16=True)`): for the activations
a Llama-style decoder (RMSNorm, rotary embeddings, SwiGLU MLP), `attn_implementation="sdpa"` with a
flash/memory-efficient kernel (no T x T attention matrix is kept), labels on every token,
`optimizer.zero_grad(set_to_none=True)`, LoRA adapters in float32 (peft's default
`autocast_adapter_dtype=True`), QLoRA / 8-bit LoRA prepared with
`peft.prepare_model_for_kbit_training` (it casts the non-quantized weights to float32).

Also here: `load_config`, `list_configs` and `random_model_from_config`, so a learner can build a
random-weight model of the real shape and measure it before downloading anything.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_utils.resources import data_dir
from course_utils.sharding import per_gpu_terms, smallest_gpu_count, validate_sharding

__all__ = [
    "Recipe",
    "MemoryEstimate",
    "FitTable",
    "estimate_training_memory",
    "fit_table",
    "load_config",
    "list_configs",
    "random_model_from_config",
    "CONFIG_DIR",
    "REFERENCE_PATH",
    "reference_recipes",
    "compare_with_reference",
]

GiB = 2**30
CONFIG_DIR = data_dir("configs")  # the clone's data/configs or the wheel's copy (course_utils/resources.py)
REFERENCE_PATH = data_dir("reference") / "h200_smollm2-1.7b.json"

_METHODS = ("full", "lora", "qlora", "lora-8bit")
_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
_OPTIMIZERS = ("adamw", "adamw-8bit", "sgd")


# --------------------------------------------------------------------------- configs


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


# --------------------------------------------------------------------------- recipe


@dataclass
class Recipe:
    """How you train: method, dtype, LoRA settings, batch shape, checkpointing, optimizer.

    >>> Recipe(method="qlora", target_modules="all-linear", gradient_checkpointing=True).method
    'qlora'
    """

    method: str = field(default="lora", metadata={"help": 'One of "full", "lora", "qlora", "lora-8bit".'})
    dtype: str = field(
        default="bfloat16",
        metadata={"help": 'dtype the (non-quantized) weights are loaded in: "float32", "bfloat16", "float16".'},
    )
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (memory does not depend on it)."})
    lora_dropout: float = field(
        default=0.05, metadata={"help": "LoRA dropout; > 0 keeps a dropout mask per LoRA input."}
    )
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": '"all-linear" or module names such as ["q_proj", "v_proj"].'}
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per optimizer step (per device)."})
    seq_len: int = field(default=512, metadata={"help": "Tokens per sequence."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute each layer in backward."})
    optimizer: str = field(default="adamw", metadata={"help": '"adamw", "adamw-8bit" (bitsandbytes) or "sgd".'})
    autocast: bool = field(
        default=True,
        metadata={"help": "Mixed precision (torch.autocast / Trainer bf16=True): matmuls run in 16-bit."},
    )
    name: str | None = field(default=None, metadata={"help": "Label for tables; built from the fields if None."})
    # Multi-GPU (course_utils/sharding.py): the estimate is then per GPU; batch_size stays per GPU.
    n_gpus: int = field(default=1, metadata={"help": "GPUs trained on together (data parallel)."})
    sharding: str = field(
        default="none", metadata={"help": '"none" (1 GPU), "ddp" (full copy per GPU), "fsdp" or "zero3" (split).'}
    )

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"Recipe.method must be one of {_METHODS}, got {self.method!r}.")
        if self.dtype not in _DTYPES:
            raise ValueError(f"Recipe.dtype must be one of {tuple(_DTYPES)}, got {self.dtype!r}.")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"Recipe.optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}.")
        for attr in ("r", "batch_size", "seq_len"):
            value = getattr(self, attr)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Recipe.{attr} must be a positive integer, got {value!r}.")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"Recipe.lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                self.target_modules = [self.target_modules]
        else:
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError('Recipe.target_modules is empty: use "all-linear" or e.g. ["q_proj", "v_proj"].')
        validate_sharding(self.n_gpus, self.sharding)
        if self.name is None:
            self.name = self._default_name()

    def _default_name(self) -> str:
        parts = [self.method]
        if self.method == "full":
            parts.append(self.dtype)
        else:
            tm = self.target_modules
            parts.append(f"r{self.r}")
            parts.append("all-linear" if tm == "all-linear" else "+".join(tm))
        parts.append(f"b{self.batch_size}x{self.seq_len}")
        if self.gradient_checkpointing:
            parts.append("gc")
        if self.optimizer != "adamw":
            parts.append(self.optimizer)
        if self.sharding != "none":
            parts.append(f"{self.sharding} x{self.n_gpus}")
        return " ".join(parts)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (the name is rebuilt unless given)."""
        changes.setdefault("name", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- shapes


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
class _Shape:
    """What the estimate needs from an architecture, read from an empty (meta-device) model of it.

    ``linears`` holds one decoder layer's adaptable layers by target name (as
    `course_utils.architectures` names them), with their role: ``attn_in`` (read the hidden
    states: q/k/v or a fused qkv), ``attn_out``, ``mlp_in`` (gate/up/fc1, fused or not), ``mlp_out``.
    """

    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    lin: dict[str, tuple[int, int, bool]]
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
    def from_config(cls, config: Any) -> _Shape:
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
    def _from_meta_model(cls, config: Any) -> _Shape:
        """Read shapes from ``AutoModelForCausalLM.from_config`` on the meta device (no memory, exact)."""
        import torch
        from transformers import AutoModelForCausalLM

        from course_utils.architectures import decoder_linear_layers

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
        return cls(
            hidden=hidden,
            inter=inter,
            layers=n_layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=embed.shape[0],
            tied=tied,
            lin=linears,
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
    def _from_config_numbers(cls, config: Any, err: Exception) -> _Shape:
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
            inter=inter,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=vocab,
            tied=tied,
            lin=linears,
            roles=roles,
            n_params=n_params,
            embed_params=vocab * h,
            head_params=0 if tied else vocab * h,
            model_type=str(getattr(config, "model_type", "model")),
            notes=[note],
        )

    def linears(self) -> dict[str, tuple[int, int, bool]]:
        """Per decoder layer: target name -> (in_features, out_features, has_bias)."""
        return self.lin

    def names(self, role: str) -> list[str]:
        return [t for t, r in self.roles.items() if r == role]


_SHAPE_CACHE: dict[str, _Shape] = {}


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
    from course_utils.architectures import ATTENTION_OUTPUTS

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


def _targets(recipe: Recipe, s: _Shape, notes: list[str] | None = None) -> list[str]:
    """The per-layer targets a recipe adapts, by target name, matched as peft matches them.

    Names this architecture does not have but whose role is known (``c_attn`` is an attention
    input projection) are planned as this architecture's layers of that role, with a note in
    ``notes``; a name with no known role raises ``ValueError`` naming the model's layers.
    """
    from course_utils.architectures import matches_target

    known = list(s.lin)
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


# --------------------------------------------------------------------------- estimate


@dataclass
class MemoryEstimate:
    """Predicted peak training memory, split into weights, trainable state, activations and logits.

    The split is the one at the moment of the peak (``peak_phase``); ``phases`` gives the total at
    each candidate moment. ``suggestions`` names knobs that make the recipe fit on GPUs it does
    not fit (filled in by `fit_table` and by `estimate_training_memory(..., gpu_gib=...)`).

    >>> est = estimate_training_memory("smollm2-135m", Recipe(batch_size=1, seq_len=128))
    >>> est.fits(16)
    True
    """

    recipe: Recipe
    model: str
    n_params: int
    trainable_params: int
    weights_bytes: int
    trainable_state_bytes: int
    activations_bytes: int
    logits_bytes: int
    peak_phase: str
    phases: dict[str, int]
    details: dict[str, int]
    suggestions: dict[float, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def approximate(self) -> bool:
        """True when the planner could not model part of this architecture (``notes`` says what)."""
        return bool(self.notes)

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.trainable_state_bytes + self.activations_bytes + self.logits_bytes

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GiB

    def required_gib(self, overhead_gib: float = 1.0, fragmentation: float = 0.05) -> float:
        """Peak plus what the allocator and CUDA context need beyond ``max_memory_allocated``."""
        return self.peak_gib * (1.0 + fragmentation) + overhead_gib

    def fits(self, gpu_gib: float, overhead_gib: float = 1.0, fragmentation: float = 0.05) -> bool:
        """True if the peak, plus ~5% allocator slack and ~1 GiB CUDA context, fits in ``gpu_gib``."""
        return self.required_gib(overhead_gib, fragmentation) <= gpu_gib

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "recipe": self.recipe.to_dict(),
            "n_params": self.n_params,
            "trainable_params": self.trainable_params,
            "weights_GiB": round(self.weights_bytes / GiB, 3),
            "trainable_state_GiB": round(self.trainable_state_bytes / GiB, 3),
            "activations_GiB": round(self.activations_bytes / GiB, 3),
            "logits_GiB": round(self.logits_bytes / GiB, 3),
            "peak_GiB": round(self.peak_gib, 3),
            "peak_phase": self.peak_phase,
            "phases_GiB": {k: round(v / GiB, 3) for k, v in self.phases.items()},
            "details_GiB": {k: round(v / GiB, 4) for k, v in self.details.items()},
            "suggestions": {str(k): v for k, v in self.suggestions.items()},
            "approximate": self.approximate,
            "notes": list(self.notes),
        }

    def _rows(self) -> list[tuple[str, float]]:
        return [
            ("weights", self.weights_bytes / GiB),
            ("trainable state (grads + optimizer)", self.trainable_state_bytes / GiB),
            ("activations", self.activations_bytes / GiB),
            ("logits / loss", self.logits_bytes / GiB),
            ("peak", self.peak_gib),
        ]

    def __repr__(self) -> str:
        lines = [
            f"MemoryEstimate({self.model}, {self.recipe.name}): peak {self.peak_gib:.2f} GiB at {self.peak_phase}"
            + (" (approximate)" if self.approximate else ""),
            f"  trainable {self.trainable_params:,} of {self.n_params:,} parameters "
            f"({100 * self.trainable_params / max(self.n_params, 1):.2f}%)",
        ]
        lines += [f"  {k:<38} {v:8.2f} GiB" for k, v in self._rows()]
        lines += [f"  approximate: {note}" for note in self.notes]
        for gpu, knobs in self.suggestions.items():
            lines.append(f"  to fit {gpu:g} GB: " + ("; ".join(knobs) if knobs else "no single knob is enough"))
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{v:.2f}</td></tr>" for k, v in self._rows()
        )
        sugg = "".join(
            f"<li>to fit {gpu:g} GB: {html.escape('; '.join(k) if k else 'no single knob is enough')}</li>"
            for gpu, k in self.suggestions.items()
        )
        return (
            f"<div><b>{html.escape(self.model)}</b> &mdash; {html.escape(str(self.recipe.name))}: "
            f"peak {self.peak_gib:.2f} GiB at {html.escape(self.peak_phase)}; trainable "
            f"{self.trainable_params:,} / {self.n_params:,}"
            f"<table><tr><th>part</th><th>GiB</th></tr>{rows}</table>"
            + "".join(f"<p><i>approximate: {html.escape(n)}</i></p>" for n in self.notes)
            + (f"<ul>{sugg}</ul>" if sugg else "")
            + "</div>"
        )


def _model_name(config: Any) -> str:
    return (
        str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model")).rstrip("/").split("/")[-1]
    )


def estimate_training_memory(config: Any, recipe: Recipe, gpu_gib: float | None = None) -> MemoryEstimate:
    """Estimate peak GPU memory of a training step (what ``torch.cuda.max_memory_allocated`` reports).

    ``config`` is anything `load_config` accepts. If ``gpu_gib`` is given and the recipe does not
    fit, ``suggestions[gpu_gib]`` lists the single knobs that would make it fit.

    >>> est = estimate_training_memory("smollm2-1.7b", Recipe(method="lora", target_modules=["q_proj", "v_proj"]))
    >>> round(est.peak_gib)
    14
    """
    config = load_config(config)
    s = _Shape.from_config(config)
    est = _estimate(s, recipe, _model_name(config))
    if gpu_gib is not None and not est.fits(gpu_gib):
        est.suggestions[gpu_gib] = _suggest(s, recipe, gpu_gib, est.model)
    return est


def _estimate(s: _Shape, rc: Recipe, model: str) -> MemoryEstimate:
    h, L, V, I = s.hidden, s.layers, s.vocab, s.inter
    q_dim, kv_dim = s.heads * s.head_dim, s.kv_heads * s.head_dim
    tokens = rc.batch_size * rc.seq_len
    wb = _DTYPES[rc.dtype]  # bytes per element of the loaded (non-quantized) weights
    quantized = rc.method in ("qlora", "lora-8bit")
    full = rc.method == "full"
    lin = s.linears()
    notes = list(s.notes)
    targets = [] if full else _targets(rc, s, notes)

    # ---- parameter counts (read from an empty model of the architecture: exact)
    lin_params_layer = sum(i * o + (o if b else 0) for i, o, b in lin.values())
    lin_bias_layer = sum(o for _, o, b in lin.values() if b)
    other_lin = s.other_linears  # linear layers outside the decoder blocks (OPT's project_in/out)
    lin_params = L * lin_params_layer + sum(i * o + (o if b else 0) for i, o, b in other_lin.values())
    lin_bias = L * lin_bias_layer + sum(o for _, o, b in other_lin.values() if b)
    n_params = s.n_params
    rest_params = n_params - lin_params  # embeddings, norms (weights and biases), an untied head, ...
    lora_params = L * sum(rc.r * (lin[t][0] + lin[t][1]) for t in targets)
    if rc.target_modules == "all-linear" and not full:  # peft's all-linear also takes these
        lora_params += sum(rc.r * (i + o) for i, o, _ in other_lin.values())
    trainable = n_params if full else lora_params

    # ---- weights
    d: dict[str, int] = {}
    quant_weights = lin_params - lin_bias  # bitsandbytes quantizes the weight matrices, not the biases
    if rc.method == "qlora":
        # 4-bit NF4 packs 2 values per byte; absmax per 64-value block, itself quantized to 8 bits
        # (double quant) with one fp32 absmax per 256 blocks.
        d["weights: 4-bit linears"] = quant_weights // 2 + quant_weights // 64 + 4 * (quant_weights // (64 * 256))
    elif rc.method == "lora-8bit":
        # LLM.int8: one int8 per weight plus one fp32 scale per output row (SCB).
        d["weights: int8 linears"] = quant_weights + 4 * (
            L * sum(o for _, o, _ in lin.values()) + sum(o for _, o, _ in other_lin.values())
        )
    else:
        d["weights: linears"] = lin_params * wb
    # prepare_model_for_kbit_training casts every non-quantized bf16/fp16 parameter
    # (embeddings, norms, an untied lm_head, the linears' biases) to float32.
    other_b = 4 if quantized else wb
    d["weights: embeddings, norms, head"] = (rest_params + (lin_bias if quantized else 0)) * other_b
    # peft creates LoRA A/B in float32 (autocast_adapter_dtype=True) whatever the base dtype.
    d["weights: LoRA adapters"] = 4 * lora_params
    weights = sum(v for k, v in d.items() if k.startswith("weights"))

    # ---- trainable state
    pb = wb if full else 4  # torch optimizers keep grads and states in the parameter's dtype
    grads = trainable * pb  # one gradient per trainable parameter
    if rc.optimizer == "adamw":
        opt_state = 2 * trainable * pb  # exp_avg and exp_avg_sq, created like the parameter
        opt_temp = trainable * pb  # foreach AdamW builds sqrt(exp_avg_sq) for all params at once
    elif rc.optimizer == "adamw-8bit":
        opt_state = 2 * trainable + 2 * 4 * (trainable // 256)  # uint8 states + fp32 absmax per 256 values
        opt_temp = 0  # bitsandbytes updates in place, block by block
    else:
        opt_state = 0  # plain SGD (momentum=0) keeps no state
        opt_temp = 0
    d["grads"], d["optimizer state"], d["optimizer step temporaries"] = grads, opt_state, opt_temp

    # ---- what ONE of n_gpus GPUs holds under DDP / FSDP / ZeRO-3 (course_utils/sharding.py)
    if rc.sharding != "none":
        sh = per_gpu_terms(
            rc.n_gpus,
            rc.sharding,
            weights=weights,
            grads=grads,
            opt_state=opt_state,
            opt_temp=opt_temp,
            root_weights=d["weights: embeddings, norms, head"],
            layers=L,
        )
        d["per GPU: weights (own shard)"], d["per GPU: grads"], d["per GPU: optimizer state"] = (
            sh.weights,
            sh.grads,
            sh.opt_state,
        )
        d["per GPU: gathered weights (FSDP/ZeRO-3 units)"], d["per GPU: DDP gradient buckets"] = sh.gathered, sh.buckets
        weights, grads, opt_state, opt_temp = sh.weights + sh.gathered + sh.buckets, sh.grads, sh.opt_state, sh.opt_temp

    # ---- activations saved for backward, bytes per token of one decoder layer
    ab = 2 if (rc.autocast or wb == 2) else 4  # compute dtype of matmuls (autocast bf16/fp16)
    rb = 4 if quantized else wb  # residual stream dtype = embedding output dtype
    # Linear outputs: 16-bit under autocast; bitsandbytes linears cast their output back to the
    # input's dtype (fp32 residual after prepare_model_for_kbit_training).
    lin_out_b = rb if quantized else ab
    sdpa_b = ab if rc.autocast else lin_out_b  # autocast casts SDPA inputs to 16-bit
    # LoRA branch (peft lora.Linear): x -> fp32 copy -> dropout (keeps a 1-byte bool mask per element)
    # -> lora_A, whose matmul saves its (autocast-cast) input because lora_A.weight needs a grad.
    lora_in_b = (1 if rc.lora_dropout > 0 else 0) + (ab if rc.autocast else 4)

    def norm_bytes() -> int:
        # LlamaRMSNorm: x.to(fp32) is saved by pow(2) and by x * rsqrt(var) (4 bytes/elem);
        # weight * normed saves `normed` only when the norm weight is trainable (full FT).
        # (LayerNorm under autocast runs in fp32 too and saves its input plus two per-token floats.)
        return 4 * h + (rb * h if full else 0)

    def consumers_bytes(names: Sequence[str], in_f: int) -> int:
        if full:
            # Each trainable linear saves its input for the weight grad. Under autocast an input that
            # is not already 16-bit is cast separately for each linear (the autocast cache only
            # holds leaf weights), so q/k/v each keep a copy; otherwise one shared tensor.
            return (len(names) * ab if (rc.autocast and rb != ab) else (ab if rc.autocast else rb)) * in_f
        # Frozen base linears save only their weight (the input is not needed for grad_input).
        return sum(lora_in_b * in_f for n in names if n in targets)

    # Norms: Llama has two per layer; Gemma 2/3 four; Falcon's parallel block one. The extra ones of
    # Gemma normalise a sublayer's output, a tensor of the same size as the input.
    norms = norm_bytes() * s.norms_per_layer
    attn = consumers_bytes(s.names("attn_in"), h)
    # SDPA (flash / mem-efficient) saves q, k, v, output and a fp32 logsumexp per head. RoPE saves
    # nothing large: q * cos saves only cos, which needs no grad.
    attn += sdpa_b * (2 * q_dim + 2 * kv_dim) + 4 * s.heads
    # o_proj: full FT saves its input, which is SDPA's saved output (shared); LoRA adds its branch.
    attn += 0 if full else consumers_bytes(s.names("attn_out"), q_dim)
    mlp = consumers_bytes(s.names("mlp_in"), h)
    # SwiGLU: SiLU saves gate_proj's output; act * up saves both factors. A plain MLP's activation
    # (GELU, ReLU) saves the one up-projection output.
    mlp += (3 if s.gated else 1) * lin_out_b * I
    # down_proj: full FT saves its input (act * up); LoRA saves its own branch input.
    mlp += (ab if rc.autocast else lin_out_b) * I if full else consumers_bytes(s.names("mlp_out"), I)
    attn += norms
    layer_tok = attn + mlp
    d["activations per layer"] = layer_tok * tokens

    # Final norm + lm_head input (saved when lm_head is trainable).
    final_tok = norm_bytes() + (ab * h if full else 0)
    head_w = V * h  # lm_head's weight (tied or not): cast to 16-bit under autocast

    # Under autocast, an fp32 weight is cast to 16-bit for each matmul and the copy is saved for
    # backward (trainable leaf weights are also held in autocast's cast cache until the autocast
    # region exits). Quantized models: only the fp32 (tied) lm_head is cast this way.
    if rc.autocast and quantized:
        weight_copies = 2 * head_w
    elif rc.autocast and wb == 4:
        weight_copies = 2 * (lin_params + head_w)
    else:
        weight_copies = 0

    # Logits: lm_head gives [tokens, vocab] in the compute dtype; ForCausalLMLoss upcasts with
    # .float(); cross_entropy's log_softmax saves its fp32 output. At the start of backward three
    # fp32 [tokens, vocab] tensors are alive: log_softmax output, nll_loss's gradient and
    # log_softmax's input gradient.
    logits_fwd = tokens * V * ((lin_out_b if quantized else ab) + (4 if ab != 4 else 0) + 4)
    logits_bwd = tokens * V * 12
    logits = max(logits_fwd, logits_bwd)
    d["logits (loss)"] = logits

    if rc.gradient_checkpointing:
        # Checkpointing (train mode only) keeps just each decoder layer's input hidden states ...
        ckpt = L * rb * h * tokens
        # ... fp32 trainable weights are still held in autocast's cache during the forward pass ...
        fwd_cache = 2 * lin_params if (full and rc.autocast and wb == 4) else 0
        head_copy = 2 * head_w if weight_copies else 0
        acts_at_logits = ckpt + final_tok * tokens + max(fwd_cache, head_copy)
        # ... and recomputes one layer at a time in backward (its activations plus its 16-bit
        # weight copies), while gradients accumulate.
        layer_copies = 2 * lin_params_layer if weight_copies and not quantized else 0
        recompute = weights + opt_state + grads + ckpt + layer_tok * tokens + layer_copies
        d["checkpointed layer inputs"] = ckpt
    else:
        acts_at_logits = L * layer_tok * tokens + final_tok * tokens + weight_copies
        recompute = 0
    d["16-bit weight copies (autocast)"] = weight_copies

    # Candidate peaks: optimizer states exist from step 2 on, grads are None during forward.
    phases = {
        "start of backward": weights + opt_state + acts_at_logits + logits,
        "optimizer step": weights + grads + opt_state + opt_temp,
    }
    if rc.gradient_checkpointing:
        phases["backward recompute"] = recompute
    peak_phase = max(phases, key=phases.get)  # type: ignore[arg-type]
    if peak_phase == "start of backward":
        split = (weights, opt_state, acts_at_logits, logits)
    elif peak_phase == "optimizer step":
        split = (weights, grads + opt_state + opt_temp, 0, 0)
    else:
        split = (weights, opt_state + grads, recompute - weights - opt_state - grads, 0)
    return MemoryEstimate(
        recipe=rc,
        model=model,
        n_params=n_params,
        trainable_params=trainable,
        weights_bytes=split[0],
        trainable_state_bytes=split[1],
        activations_bytes=split[2],
        logits_bytes=split[3],
        peak_phase=peak_phase,
        phases=phases,
        details=d,
        notes=notes,
    )


def _knobs(rc: Recipe) -> list[tuple[str, Recipe]]:
    knobs: list[tuple[str, Recipe]] = []
    if not rc.gradient_checkpointing:
        knobs.append(("gradient_checkpointing=True", rc.replace(gradient_checkpointing=True)))
    b = rc.batch_size // 2
    while b >= 1:
        knobs.append((f"batch_size={b}", rc.replace(batch_size=b)))
        b //= 2
    if rc.method == "full":
        knobs.append(
            (
                "method='lora' (bfloat16, all-linear)",
                rc.replace(method="lora", dtype="bfloat16", target_modules="all-linear"),
            )
        )
    if rc.method in ("full", "lora"):
        knobs.append(
            (
                "method='qlora'",
                rc.replace(method="qlora", target_modules="all-linear" if rc.method == "full" else rc.target_modules),
            )
        )
    if rc.method == "full" and rc.optimizer == "adamw":
        knobs.append(("optimizer='adamw-8bit'", rc.replace(optimizer="adamw-8bit")))
    return knobs


def _suggest(s: _Shape, rc: Recipe, gpu_gib: float, model: str) -> list[str]:
    """Re-estimate with each single knob changed; keep those that fit (largest batch only)."""
    out: list[str] = []
    batch_done = False
    for label, alt in _knobs(rc):
        if label.startswith("batch_size="):
            if batch_done:
                continue
            if _estimate(s, alt, model).fits(gpu_gib):
                out.append(label + " (or gradient accumulation)")
                batch_done = True
            continue
        if _estimate(s, alt, model).fits(gpu_gib):
            out.append(label)
    if not out and not rc.gradient_checkpointing:
        both = rc.replace(gradient_checkpointing=True, method="qlora" if rc.method != "lora-8bit" else rc.method)
        if _estimate(s, both, model).fits(gpu_gib):
            out.append("gradient_checkpointing=True together with method='qlora'")
    # More GPUs: the smallest count that fits when FSDP splits the model (course_utils/sharding.py).
    split = rc.sharding if rc.sharding in ("fsdp", "zero3") else "fsdp"
    n = smallest_gpu_count(
        lambda k: k > rc.n_gpus and _estimate(s, rc.replace(n_gpus=k, sharding=split), model).fits(gpu_gib)
    )
    if n is not None:
        out.append(f"n_gpus={n}, sharding='{split}'")
    return out


# --------------------------------------------------------------------------- fit table


@dataclass
class FitTable:
    """Does each recipe fit on each GPU size? Rows of estimates, columns of GPU memory (GB).

    >>> t = fit_table("smollm2-135m", [Recipe(method="full", dtype="float32")], gpus=(16, 80))
    >>> t.to_dict()["rows"][0]["fits"]["80"]
    True
    """

    model: str
    gpus: tuple[float, ...]
    estimates: list[MemoryEstimate]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "gpus_GB": list(self.gpus),
            "rows": [
                {
                    "recipe": e.recipe.name,
                    "peak_GiB": round(e.peak_gib, 2),
                    "fits": {f"{g:g}": e.fits(g) for g in self.gpus},
                    "suggestions": {f"{g:g}": k for g, k in e.suggestions.items()},
                }
                for e in self.estimates
            ],
        }

    def __repr__(self) -> str:
        width = max([len(str(e.recipe.name)) for e in self.estimates] + [6])
        head = f"{'recipe':<{width}}  {'peak GiB':>8}  " + "  ".join(f"{g:>5g}GB" for g in self.gpus)
        lines = [f"Fit table for {self.model} (peak + ~5% + 1 GiB context must fit)", head, "-" * len(head)]
        for e in self.estimates:
            cells = "  ".join(f"{'yes' if e.fits(g) else 'no':>7}" for g in self.gpus)
            lines.append(f"{str(e.recipe.name):<{width}}  {e.peak_gib:8.2f}  {cells}")
        for e in self.estimates:
            for g, knobs in e.suggestions.items():
                lines.append(
                    f"  {e.recipe.name} on {g:g} GB: " + ("; ".join(knobs) if knobs else "no single knob is enough")
                )
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{g:g} GB</th>" for g in self.gpus)
        body = ""
        for e in self.estimates:
            cells = "".join(
                f"<td style='text-align:center'>{'&#10003;' if e.fits(g) else '&#10007;'}</td>" for g in self.gpus
            )
            body += (
                f"<tr><td>{html.escape(str(e.recipe.name))}</td>"
                f"<td style='text-align:right'>{e.peak_gib:.2f}</td>{cells}</tr>"
            )
        notes = "".join(
            f"<li>{html.escape(str(e.recipe.name))} on {g:g} GB: "
            f"{html.escape('; '.join(k) if k else 'no single knob is enough')}</li>"
            for e in self.estimates
            for g, k in e.suggestions.items()
        )
        return (
            f"<div><b>Fit table for {html.escape(self.model)}</b> (peak + ~5% + 1 GiB context must fit)"
            f"<table><tr><th>recipe</th><th>peak GiB</th>{head}</tr>{body}</table>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + "</div>"
        )


def fit_table(config: Any, recipes: Iterable[Recipe], gpus: Sequence[float] = (16, 24, 40, 80)) -> FitTable:
    """Estimate every recipe and say whether it fits each GPU; name the knobs that would make it fit.

    A recipe that does not fit a GPU gets, for that GPU, the single changes (gradient
    checkpointing, a smaller batch, LoRA instead of full, QLoRA, 8-bit AdamW) that make it fit,
    found by re-estimating with each change.

    >>> print(fit_table("smollm2-360m", [Recipe(method="lora")], gpus=(24,)))  # doctest: +ELLIPSIS
    Fit table for smollm2-360m ...
    """
    config = load_config(config)
    s = _Shape.from_config(config)
    name = _model_name(config)
    estimates = []
    for rc in recipes:
        if not isinstance(rc, Recipe):
            raise TypeError(f"fit_table expects Recipe objects, got {type(rc).__name__}.")
        est = _estimate(s, rc, name)
        for g in gpus:
            if not est.fits(g):
                est.suggestions[g] = _suggest(s, rc, g, name)
        estimates.append(est)
    return FitTable(model=name, gpus=tuple(gpus), estimates=estimates)


# --------------------------------------------------------------------------- reference check


def reference_recipes(batch_size: int = 8, seq_len: int = 512) -> dict[str, Recipe]:
    """The eight recipes measured in ``data/reference/h200_smollm2-1.7b.json``, keyed by its row names.

    >>> reference_recipes()["lora_r16_qv"].target_modules
    ['q_proj', 'v_proj']
    """
    shape = dict(batch_size=batch_size, seq_len=seq_len, r=16, lora_alpha=32, lora_dropout=0.05)
    return {
        "fft_float32": Recipe(method="full", dtype="float32", **shape),
        "fft_bfloat16": Recipe(method="full", dtype="bfloat16", **shape),
        "lora_r16_qv": Recipe(method="lora", target_modules=["q_proj", "v_proj"], **shape),
        "lora_r16_all": Recipe(method="lora", **shape),
        "lora_r16_all_gc": Recipe(method="lora", gradient_checkpointing=True, **shape),
        "lora_r16_all_nodrop": Recipe(method="lora", **{**shape, "lora_dropout": 0.0}),
        "qlora4_r16_all": Recipe(method="qlora", **shape),
        "qlora4_r16_all_gc": Recipe(method="qlora", gradient_checkpointing=True, **shape),
    }


def compare_with_reference(path: str | Path = REFERENCE_PATH) -> list[dict[str, Any]]:
    """Estimate each measured reference recipe; rows of name, estimate, measurement, relative error.

    >>> max(abs(r["rel_error"]) for r in compare_with_reference()) < 0.15
    True
    """
    ref = json.loads(Path(path).read_text())
    recipes = reference_recipes(ref["shape"]["batch"], ref["shape"]["seq_len"])
    rows = []
    for name, measured in ref["train"].items():
        est = estimate_training_memory("smollm2-1.7b", recipes[name])
        rows.append(
            {
                "name": name,
                "estimate_GiB": round(est.peak_gib, 3),
                "measured_GiB": measured["peak_GiB"],
                "rel_error": round(est.peak_gib / measured["peak_GiB"] - 1.0, 4),
                "peak_phase": est.peak_phase,
                "trainable_estimate": est.trainable_params,
                "trainable_measured": measured["trainable"],
            }
        )
    return rows

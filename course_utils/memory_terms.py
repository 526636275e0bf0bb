"""The terms of a training step's memory, one mechanism each: what ``course_utils.planner`` adds up.

Each function models one thing transformers, peft, bitsandbytes or torch keeps in memory, and its
comment says which: the weights (:func:`weight_bytes`), the gradients (:func:`gradient_bytes`),
the optimizer's state (:func:`optimizer_bytes`), the activations one decoder layer saves for
backward (:func:`activation_bytes_per_token`), autocast's 16-bit weight copies
(:func:`autocast_weight_copy_bytes`) and the logits and loss (:func:`logits_bytes`). The bytes per
element of each kind of tensor come from :func:`precisions`. The examples use SmolLM2-135M's
shape (30 Llama layers, hidden size 576, vocabulary 49,152).

>>> gradient_bytes(Recipe(method="lora"), 1_000)
4000
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from course_utils.model_shape import ModelShape, load_config
from course_utils.recipe import DTYPE_BYTES, Recipe

__all__ = [
    "ParameterCounts",
    "Precisions",
    "activation_bytes_per_token",
    "autocast_weight_copy_bytes",
    "dora_bytes_per_token",
    "dora_weight_copy_bytes",
    "gradient_bytes",
    "logits_bytes",
    "norm_bytes_per_token",
    "optimizer_bytes",
    "parameter_counts",
    "precisions",
    "weight_bytes",
]


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of an architecture under a recipe (read from an empty model: exact).

    ``linear``: every adaptable linear layer's weights and biases (``linear_bias`` the biases alone,
    ``linear_per_layer`` one decoder layer's share); ``other``: embeddings, norms, an untied head;
    ``lora``: the LoRA A and B matrices the recipe adds; ``magnitude``: DoRA's magnitude vectors (one
    value per output row of each adapted layer; 0 without DoRA); ``trainable``: what the optimizer updates.

    >>> counts = parameter_counts(_demo_shape(), Recipe(target_modules=["q_proj", "v_proj"]), ["q_proj", "v_proj"])
    >>> counts.lora, counts.trainable == counts.lora
    (921600, True)
    """

    total: int
    linear: int
    linear_bias: int
    linear_per_layer: int
    other: int
    lora: int
    trainable: int
    magnitude: int = 0


def parameter_counts(shape: ModelShape, recipe: Recipe, targets: Sequence[str]) -> ParameterCounts:
    """Count the parameters of ``shape`` and the LoRA parameters ``recipe`` adds on ``targets`` (see :class:`ParameterCounts`)."""
    per_layer = shape.linears
    outside = shape.other_linears  # linear layers outside the decoder blocks (OPT's project_in/out)
    linear_per_layer = sum(i * o + (o if b else 0) for i, o, b in per_layer.values())
    linear = shape.layers * linear_per_layer + sum(i * o + (o if b else 0) for i, o, b in outside.values())
    linear_bias = shape.layers * sum(o for _, o, b in per_layer.values() if b) + sum(
        o for _, o, b in outside.values() if b
    )
    full = recipe.method == "full"
    lora = shape.layers * sum(recipe.r * (per_layer[t][0] + per_layer[t][1]) for t in targets)
    # DoRA: peft's lora_magnitude_vector holds one trainable value per output row of each adapted layer
    magnitude = shape.layers * sum(per_layer[t][1] for t in targets) if recipe.use_dora else 0
    if recipe.target_modules == "all-linear" and not full:  # peft's all-linear also takes these
        lora += sum(recipe.r * (i + o) for i, o, _ in outside.values())
        magnitude += sum(o for _, o, _ in outside.values()) if recipe.use_dora else 0
    return ParameterCounts(
        total=shape.n_params,
        linear=linear,
        linear_bias=linear_bias,
        linear_per_layer=linear_per_layer,
        other=shape.n_params - linear,
        lora=lora,
        trainable=shape.n_params if full else lora + magnitude,
        magnitude=magnitude,
    )


def weight_bytes(shape: ModelShape, recipe: Recipe, counts: ParameterCounts) -> dict[str, int]:
    """Bytes of the model's weights, by kind: the linears (16/32-bit, 4-bit or int8), the rest, the LoRA adapters.

    >>> shape = _demo_shape()
    >>> rc = Recipe(method="qlora")
    >>> sorted(weight_bytes(shape, rc, parameter_counts(shape, rc, list(shape.linears))))[0]
    'weights: 4-bit linears'
    """
    weight_b = DTYPE_BYTES[recipe.dtype]
    quantized = recipe.method in ("qlora", "lora-8bit")
    matrices = counts.linear - counts.linear_bias  # bitsandbytes quantizes the weight matrices, not the biases
    out: dict[str, int] = {}
    if recipe.method == "qlora":
        # 4-bit NF4 packs 2 values per byte; absmax per 64-value block, itself quantized to 8 bits
        # (double quant) with one fp32 absmax per 256 blocks.
        out["weights: 4-bit linears"] = matrices // 2 + matrices // 64 + 4 * (matrices // (64 * 256))
    elif recipe.method == "lora-8bit":
        # LLM.int8: one int8 per weight plus one fp32 scale per output row (SCB).
        rows = shape.layers * sum(o for _, o, _ in shape.linears.values())
        out["weights: int8 linears"] = matrices + 4 * (rows + sum(o for _, o, _ in shape.other_linears.values()))
    else:
        out["weights: linears"] = counts.linear * weight_b
    # prepare_model_for_kbit_training casts every non-quantized bf16/fp16 parameter
    # (embeddings, norms, an untied lm_head, the linears' biases) to float32.
    out["weights: embeddings, norms, head"] = (counts.other + (counts.linear_bias if quantized else 0)) * (
        4 if quantized else weight_b
    )
    # peft creates LoRA A/B in float32 (autocast_adapter_dtype=True) whatever the base dtype.
    out["weights: LoRA adapters"] = 4 * counts.lora
    if counts.magnitude:  # DoRA's magnitude vectors, float32 like A and B
        out["weights: DoRA magnitudes"] = 4 * counts.magnitude
    return out


def _trainable_bytes_per_param(recipe: Recipe) -> int:
    # torch optimizers keep grads and states in the parameter's dtype; LoRA parameters are float32
    return DTYPE_BYTES[recipe.dtype] if recipe.method == "full" else 4


def gradient_bytes(recipe: Recipe, trainable: int) -> int:
    """Bytes of the gradients: one per trainable parameter, in its dtype.

    >>> gradient_bytes(Recipe(method="lora"), 1000), gradient_bytes(Recipe(method="full", dtype="bfloat16"), 1000)
    (4000, 2000)
    """
    return trainable * _trainable_bytes_per_param(recipe)


def optimizer_bytes(recipe: Recipe, trainable: int) -> tuple[int, int]:
    """``(state, step temporaries)`` of the optimizer for ``trainable`` parameters.

    AdamW keeps exp_avg and exp_avg_sq like the parameter, and its foreach step builds
    sqrt(exp_avg_sq) for all parameters at once; 8-bit AdamW keeps uint8 states plus a float32
    absmax per 256 values and updates in place; plain SGD keeps nothing.

    >>> optimizer_bytes(Recipe(optimizer="adamw"), 1000), optimizer_bytes(Recipe(optimizer="sgd"), 1000)
    ((8000, 4000), (0, 0))
    """
    per_param = _trainable_bytes_per_param(recipe)
    if recipe.optimizer == "adamw":
        return 2 * trainable * per_param, trainable * per_param
    if recipe.optimizer == "adamw-8bit":
        return 2 * trainable + 2 * 4 * (trainable // 256), 0
    return 0, 0  # plain SGD (momentum=0) keeps no state


@dataclass(frozen=True)
class Precisions:
    """Bytes per element of the tensors a training step saves, as the recipe's dtypes make them.

    ``weight``: the loaded (non-quantized) weights; ``compute``: matmuls (16-bit under autocast);
    ``residual``: the residual stream (the embedding output's dtype; float32 after
    prepare_model_for_kbit_training); ``linear_out``: a linear layer's output (bitsandbytes layers
    cast back to the input's dtype); ``attention``: SDPA's saved q/k/v/output; ``lora_input``: what a
    LoRA branch saves per input element (a 1-byte dropout mask when dropout > 0, plus lora_A's input).

    >>> precisions(Recipe(method="qlora"))
    Precisions(weight=2, compute=2, residual=4, linear_out=4, attention=2, lora_input=3)
    """

    weight: int
    compute: int
    residual: int
    linear_out: int
    attention: int
    lora_input: int


def precisions(recipe: Recipe) -> Precisions:
    """The :class:`Precisions` of ``recipe``."""
    weight = DTYPE_BYTES[recipe.dtype]
    quantized = recipe.method in ("qlora", "lora-8bit")
    compute = 2 if (recipe.autocast or weight == 2) else 4
    residual = 4 if quantized else weight
    linear_out = residual if quantized else compute
    return Precisions(
        weight=weight,
        compute=compute,
        residual=residual,
        linear_out=linear_out,
        attention=compute if recipe.autocast else linear_out,  # autocast casts SDPA inputs to 16-bit
        # peft lora.Linear: x -> fp32 copy -> dropout (a bool mask) -> lora_A, whose matmul saves its input
        lora_input=(1 if recipe.lora_dropout > 0 else 0) + (compute if recipe.autocast else 4),
    )


def norm_bytes_per_token(shape: ModelShape, recipe: Recipe) -> int:
    """What one RMSNorm saves per token.

    LlamaRMSNorm: x.to(fp32) is saved by pow(2) and by x * rsqrt(var) (4 bytes/elem); weight * normed
    saves ``normed`` only when the norm weight is trainable (full fine-tuning). (LayerNorm under
    autocast runs in fp32 too and saves its input plus two per-token floats.)

    >>> norm_bytes_per_token(_demo_shape(), Recipe())
    2304
    """
    full = recipe.method == "full"
    return 4 * shape.hidden + (precisions(recipe).residual * shape.hidden if full else 0)


def _inputs_saved_by(names: Sequence[str], in_features: int, recipe: Recipe, targets: Sequence[str]) -> int:
    """Bytes per token the linear layers ``names`` (all reading one input of ``in_features``) save for backward."""
    p = precisions(recipe)
    if recipe.method == "full":
        # Each trainable linear saves its input for the weight grad. Under autocast an input that is
        # not already 16-bit is cast separately for each linear (the autocast cache only holds leaf
        # weights), so q/k/v each keep a copy; otherwise one shared tensor.
        if recipe.autocast and p.residual != p.compute:
            return len(names) * p.compute * in_features
        return (p.compute if recipe.autocast else p.residual) * in_features
    # Frozen base linears save only their weight (the input is not needed for grad_input).
    return sum(p.lora_input * in_features for n in names if n in targets)


def activation_bytes_per_token(shape: ModelShape, recipe: Recipe, targets: Sequence[str]) -> int:
    """Bytes one decoder layer saves for backward per token: norms, attention and MLP.

    >>> activation_bytes_per_token(_demo_shape(), Recipe(target_modules=["q_proj", "v_proj"]), ["q_proj", "v_proj"])
    20388
    """
    p = precisions(recipe)
    full = recipe.method == "full"
    hidden, inter = shape.hidden, shape.intermediate
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    # Norms: Llama has two per layer; Gemma 2/3 four; Falcon's parallel block one. The extra ones of
    # Gemma normalise a sublayer's output, a tensor of the same size as the input.
    norms = norm_bytes_per_token(shape, recipe) * shape.norms_per_layer
    attention = _inputs_saved_by(shape.names("attn_in"), hidden, recipe, targets)
    # SDPA (flash / mem-efficient) saves q, k, v, output and a fp32 logsumexp per head. RoPE saves
    # nothing large: q * cos saves only cos, which needs no grad.
    attention += p.attention * (2 * q_dim + 2 * kv_dim) + 4 * shape.heads
    # o_proj: full FT saves its input, which is SDPA's saved output (shared); LoRA adds its branch.
    attention += 0 if full else _inputs_saved_by(shape.names("attn_out"), q_dim, recipe, targets)
    mlp = _inputs_saved_by(shape.names("mlp_in"), hidden, recipe, targets)
    # SwiGLU: SiLU saves gate_proj's output; act * up saves both factors. A plain MLP's activation
    # (GELU, ReLU) saves the one up-projection output.
    mlp += (3 if shape.gated else 1) * p.linear_out * inter
    # down_proj: full FT saves its input (act * up); LoRA saves its own branch input.
    if full:
        mlp += (p.compute if recipe.autocast else p.linear_out) * inter
    else:
        mlp += _inputs_saved_by(shape.names("mlp_out"), inter, recipe, targets)
    return norms + attention + mlp + dora_bytes_per_token(shape, recipe, targets)


def dora_bytes_per_token(shape: ModelShape, recipe: Recipe, targets: Sequence[str]) -> int:
    """What DoRA saves per token and decoder layer beyond LoRA (0 without ``use_dora``).

    peft's DoRA layer returns ``(m / |W + s·BA| - 1) · base_result + m / |W + s·BA| · lora_result``:
    both products multiply by the trainable magnitude ``m``, so each saves its other factor for
    ``m``'s gradient: the base layer's output and the LoRA branch's output (16-bit under autocast,
    else float32 like the adapter), one ``d_out`` vector per token each. Without dropout the base
    output is the base layer's own (the linear's output dtype); with dropout peft recomputes it from
    the dropped-out float32 input, so it comes in the adapter's precision.

    >>> targets = ["q_proj", "v_proj"]
    >>> dora_bytes_per_token(_demo_shape(), Recipe(use_dora=True, target_modules=targets), targets)
    3072
    """
    if not recipe.use_dora or recipe.method == "full":
        return 0
    p = precisions(recipe)
    adapter_out = p.compute if recipe.autocast else 4  # what a float32 adapter's matmul gives
    # with dropout the base output is recomputed from the float32 (dropped-out) input: adapter precision
    base_out = adapter_out if recipe.lora_dropout > 0 else p.linear_out
    per_output = base_out + adapter_out
    outputs = sum(out for name, (_, out, _) in shape.linears.items() if name in targets)
    return per_output * outputs


def dora_weight_copy_bytes(shape: ModelShape, recipe: Recipe, targets: Sequence[str]) -> int:
    """Weight copies DoRA keeps for backward when ``lora_dropout > 0`` (0 otherwise, and without ``use_dora``).

    With dropout peft's DoRA layer recomputes the base output on the dropped-out input,
    ``F.linear(x, W.to(x.dtype))``, with ``x`` already cast to the adapter's float32. That linear saves
    its weight for the input's gradient: a float32 copy of a 16-bit (or dequantized 4/8-bit) weight, or
    under autocast the 16-bit cast of it; a float32 weight without autocast is saved as itself (no
    copy). Only layers whose input needs a gradient save it: every adapted layer except those reading
    the first decoder layer's normed input (its attention inputs).

    >>> targets = ["q_proj", "v_proj"]
    >>> dora_weight_copy_bytes(_demo_shape(), Recipe(use_dora=True, dtype="bfloat16", autocast=False,
    ...                        target_modules=targets), targets) == 4 * 29 * (576 * 576 + 576 * 192)
    True
    """
    if not recipe.use_dora or recipe.method == "full" or recipe.lora_dropout <= 0:
        return 0
    quantized = recipe.method in ("qlora", "lora-8bit")
    if recipe.autocast:
        per_weight = precisions(recipe).compute
    else:
        per_weight = 4 if (quantized or DTYPE_BYTES[recipe.dtype] != 4) else 0
    sizes = {name: i * o for name, (i, o, _) in shape.linears.items() if name in targets}
    first_layer_attn_in = sum(sizes.get(name, 0) for name in shape.names("attn_in"))
    return per_weight * (shape.layers * sum(sizes.values()) - first_layer_attn_in)


def autocast_weight_copy_bytes(shape: ModelShape, recipe: Recipe, counts: ParameterCounts) -> int:
    """16-bit copies of float32 weights that autocast makes for each matmul and saves for backward.

    Trainable leaf weights are also held in autocast's cast cache until the autocast region exits.
    Quantized models: only the float32 (tied) lm_head is cast this way.

    >>> shape = _demo_shape()
    >>> rc = Recipe(dtype="bfloat16")
    >>> autocast_weight_copy_bytes(shape, rc, parameter_counts(shape, rc, list(shape.linears)))
    0
    """
    head = shape.vocab * shape.hidden  # lm_head's weight (tied or not)
    if recipe.autocast and recipe.method in ("qlora", "lora-8bit"):
        return 2 * head
    if recipe.autocast and DTYPE_BYTES[recipe.dtype] == 4:
        return 2 * (counts.linear + head)
    return 0


def logits_bytes(shape: ModelShape, recipe: Recipe) -> int:
    """Bytes of the logits and the loss's tensors at their peak (forward or start of backward).

    lm_head gives [tokens, vocab] in the compute dtype; ForCausalLMLoss upcasts with .float();
    cross_entropy's log_softmax saves its fp32 output. At the start of backward three fp32
    [tokens, vocab] tensors are alive: log_softmax's output, nll_loss's gradient and log_softmax's
    input gradient.

    >>> logits_bytes(_demo_shape(), Recipe(batch_size=1, seq_len=1)) == 12 * 49152
    True
    """
    p = precisions(recipe)
    tokens = recipe.batch_size * recipe.seq_len
    quantized = recipe.method in ("qlora", "lora-8bit")
    forward = tokens * shape.vocab * ((p.linear_out if quantized else p.compute) + (4 if p.compute != 4 else 0) + 4)
    backward = tokens * shape.vocab * 12
    return max(forward, backward)


def _demo_shape() -> ModelShape:
    """SmolLM2-135M's shape, for the examples."""
    return ModelShape.from_config(load_config("smollm2-135m"))

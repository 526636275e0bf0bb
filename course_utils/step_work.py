"""What one training step asks of the hardware: FLOPs, bytes moved and kernels, phase by phase.

`step_work(config, recipe)` counts, from the architecture (`course_utils.model_shape`) and the
`Recipe`, the work of one optimizer step on one device, split into phases that are either
compute-bound (the matmuls) or memory-bound (everything elementwise). `course_utils.step_time`
turns the counts into seconds on a GPU or CPU. Every count models one mechanism of the code that
runs (transformers' eager Llama layer, peft's ``lora.Linear``, bitsandbytes' ``Linear4bit``,
``torch.optim.AdamW``), and the comment beside it says which:

- **matmuls**: 2 FLOPs per weight per token forward; backward computes the input gradient (2 per
  weight) and, only for trainable weights, the weight gradient (2 more). Full fine-tuning is so
  6N per token; LoRA 4N plus the adapters' 6 r (d_in + d_out). Attention's scores and weighted sum
  (causal: half of seq_len keys on average) add 2 x 2 x heads x head_dim x seq_len / 2 per token and
  layer forward, 2.5 times that backward (flash attention recomputes the scores). Gradient
  checkpointing runs each decoder layer's forward again in backward.
- **elementwise** (memory-bound): RMSNorm, rotary embeddings, SiLU, residual adds, dtype casts,
  LoRA's fp32 input copy, dropout, scaling and add; backward moves about twice a forward's bytes.
- **4-bit dequantization** (QLoRA): bitsandbytes' ``MatMul4Bit`` dequantizes every weight to 16 bits
  in forward and again in backward (and again in a checkpointed recompute): 0.5 byte read, 2 written.
- **optimizer**: ``torch.optim.AdamW`` (foreach) reads and writes param, grad, exp_avg, exp_avg_sq in
  8 passes, 21 element accesses per parameter; Trainer's gradient clipping adds 3.
- **DoRA** (a recipe with ``use_dora=True``): peft recomputes each adapted weight's norm every forward
  (the whole weight, plus ``lora_B(lora_A(eye))``), and with dropout > 0 runs the base layer a second
  time on the dropped-out input.

Counts are per device and per step, for the recipe's per-device batch.

>>> w = step_work("smollm2-135m", Recipe(method="full", batch_size=1, seq_len=512))
>>> round(w.matmul_flops / (6 * w.tokens * w.n_params), 2)  # 6N per token, plus attention at seq 512
1.08
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from course_utils.memory_terms import parameter_counts, precisions
from course_utils.model_shape import ModelShape, adapted_targets, load_config
from course_utils.recipe import DTYPE_BYTES, Recipe

__all__ = ["Phase", "StepWork", "step_work", "ADAMW_ACCESSES", "CLIP_ACCESSES"]

#: Element accesses per parameter of torch's foreach AdamW step (weight decay ``mul_`` 2, ``lerp_`` 3, ``mul_`` 2,
#: ``addcmul_`` 4, ``sqrt`` 2, ``div_`` 2, ``add_`` 2, ``addcdiv_`` 4).
ADAMW_ACCESSES = 21
#: Trainer's ``clip_grad_norm_``: read every gradient for the norm, then read and write it to scale.
CLIP_ACCESSES = 3


@dataclass(frozen=True)
class Phase:
    """One phase of a step: its FLOPs, bytes moved and kernel launches; ``kind`` is "matmul" or "memory".

    >>> Phase("optimizer", "memory", bytes=8.0).flops
    0.0
    """

    name: str
    kind: str
    flops: float = 0.0
    bytes: float = 0.0
    kernels: float = 0.0


@dataclass(frozen=True)
class StepWork:
    """The work of one training step on one device (see :func:`step_work`).

    ``random_elements``: the random numbers dropout draws (LoRA's masks), which a CPU pays in arithmetic;
    ``attention_flops``: the part of the FLOPs in attention's scores and weighted sums (no weights);
    ``allreduce_bytes``: the gradient bytes data parallelism all-reduces each step (0 on one GPU);
    ``gather_bytes``: the 16-bit weights FSDP / ZeRO-3 all-gather per step (forward and backward).

    >>> step_work("smollm2-135m", Recipe(batch_size=2, seq_len=64)).tokens
    128
    """

    model: str
    recipe: Recipe
    tokens: int
    n_params: int
    trainable_params: int
    phases: tuple[Phase, ...]
    attention_flops: float = 0.0
    random_elements: float = 0.0
    allreduce_bytes: float = 0.0
    gather_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def matmul_flops(self) -> float:
        """All FLOPs of the step (the matmuls; elementwise FLOPs are not counted: they are memory-bound)."""
        return sum(p.flops for p in self.phases)

    @property
    def bytes_moved(self) -> float:
        return sum(p.bytes for p in self.phases)

    @property
    def kernels(self) -> float:
        return sum(p.kernels for p in self.phases)

    def phase(self, name: str) -> Phase:
        """The phase called ``name`` (a zero phase if the recipe has none)."""
        for p in self.phases:
            if p.name == name:
                return p
        return Phase(name, "memory")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "recipe": self.recipe.name,
            "tokens": self.tokens,
            "GFLOPs": round(self.matmul_flops / 1e9, 3),
            "GB moved": round(self.bytes_moved / 1e9, 3),
            "kernels": round(self.kernels),
            "phases": {
                p.name: {"GFLOPs": p.flops / 1e9, "GB": p.bytes / 1e9, "kernels": p.kernels} for p in self.phases
            },
        }


def _model_name(config: Any) -> str:
    return (
        str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model")).rstrip("/").split("/")[-1]
    )


def _norm_bytes(rb: int, weight_b: int) -> tuple[int, int]:
    """(bytes per element, kernels) of LlamaRMSNorm's forward: to(fp32), pow, mean, mul, to(dtype), weight *."""
    cast = 0 if rb == 4 else 2 * (rb + 4)  # x.to(float32) and back: no kernel when x is already fp32
    out = max(weight_b, rb)  # weight * h promotes to the wider dtype
    return cast + 8 + 4 + 8 + rb + out, (5 if rb == 4 else 7)


def step_work(config: Any, recipe: Recipe, *, clip_grad_norm: bool = False, foreach: bool = True) -> StepWork:
    """Count the FLOPs, bytes and kernels of one training step of ``recipe`` on ``config`` (per device).

    ``clip_grad_norm``: add Trainer's gradient clipping (``max_grad_norm=1.0``, on by default in
    ``Trainer``). ``foreach=False``: the optimizer loops over parameters (torch's default on CPU),
    a few kernels per parameter tensor instead of a few per step.

    >>> full = step_work("smollm2-1.7b", Recipe(method="full"))
    >>> lora = step_work("smollm2-1.7b", Recipe(method="lora"))
    >>> round(lora.matmul_flops / full.matmul_flops, 2)  # no weight gradients for frozen weights
    0.68
    """
    config = load_config(config)
    s = ModelShape.from_config(config)
    rc = recipe
    T = rc.batch_size * rc.seq_len
    full = rc.method == "full"
    quantized = rc.method in ("qlora", "lora-8bit")
    notes = list(s.notes)
    targets = [] if full else adapted_targets(rc, s, notes)
    counts = parameter_counts(s, rc, targets)
    p = precisions(rc)
    L, d, f, V = s.layers, s.hidden, s.intermediate, s.vocab
    dq, dkv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    cb = p.compute  # matmul operand bytes
    rb = p.residual  # residual stream bytes
    lo = p.linear_out  # a base linear's output bytes
    norm_w = 4 if (quantized or DTYPE_BYTES[rc.dtype] == 4) else DTYPE_BYTES[rc.dtype]
    gc = rc.gradient_checkpointing
    dora = bool(getattr(rc, "use_dora", False))
    if dora:
        notes.append("DoRA's time terms are modelled from peft's code, not yet checked against a measurement.")
    if rc.method == "lora-8bit":
        notes.append("8-bit LoRA is timed like QLoRA's dequantize-then-matmul path (int8 read instead of 4-bit).")

    lin = list(s.linears.items())  # one decoder layer's linears: name -> (in, out, bias)
    n_lin = len(lin)
    mm_layer = sum(i * o for _, (i, o, _) in lin)  # matrix weights per layer
    head = V * d
    mm_all = L * mm_layer + sum(i * o for i, o, _ in s.other_linears.values())
    act_layer = sum(i + o for _, (i, o, _) in lin)  # a layer's matmul inputs + outputs per token
    attn_fwd = 2 * L * dq * rc.seq_len * T  # QK^T and AV, causal: seq_len / 2 keys on average, 2 FLOPs each
    attn_io = L * T * cb * (2 * dq + 2 * dkv)  # flash attention reads q, k, v and writes o

    phases: list[Phase] = []
    # ---- matmuls. Weights are read as 16-bit operands (autocast copies, dequantized or native).
    fwd_bytes = cb * (mm_all + head) + T * cb * (L * act_layer + d + V) + attn_io
    phases.append(
        Phase("forward matmuls", "matmul", 2 * T * (mm_all + head) + attn_fwd, fwd_bytes, L * (n_lin + 1) + 1)
    )
    # Backward, input gradients: every linear down to the lowest trainable layer (all of them here).
    # LoRA without checkpointing: the lowest layer's q/k/v(/LoRA A) get no input gradient, their input (the
    # frozen embedding's output) needs none. (Checkpointing calls enable_input_require_grads: they do.)
    first_in = [t for t, _ in lin if s.roles[t] == "attn_in"]
    skip0 = 0 if (full or gc) else 2 * T * sum(s.linears[t][0] * s.linears[t][1] for t in first_in)
    phases.append(
        Phase(
            "backward matmuls: input grads",
            "matmul",
            2 * T * (mm_all + head) + 2.5 * attn_fwd - skip0,
            fwd_bytes + attn_io,
            L * (n_lin + 1) + 1,
        )
    )
    if full:  # weight gradients of every linear and of the (tied) head; the grad of an fp32 weight's cast
        grad_b = DTYPE_BYTES[rc.dtype]
        wg_bytes = T * cb * (L * act_layer + d + V) + (mm_all + head) * (cb + (cb + grad_b if grad_b != cb else 0))
        phases.append(
            Phase("backward matmuls: weight grads", "matmul", 2 * T * (mm_all + head), wg_bytes, L * n_lin + 1)
        )
    if gc:  # the checkpointed decoder layers run forward again (not the head)
        phases.append(
            Phase(
                "recompute (checkpointing)",
                "matmul",
                2 * T * mm_all + attn_fwd,
                cb * mm_all + T * cb * L * act_layer + attn_io,
                L * (n_lin + 1),
            )
        )

    # ---- autocast's 16-bit copies of fp32 weights (cast per forward; again in a recompute).
    if rc.autocast and DTYPE_BYTES[rc.dtype] == 4 and not quantized:
        passes = 1 + (1 if gc else 0)
        phases.append(
            Phase("autocast weight casts", "memory", 0, 6 * (mm_all + head) * passes, (L * n_lin + 1) * passes)
        )
    elif quantized and rc.autocast:  # prepare_model_for_kbit_training's fp32 head, cast each forward
        phases.append(Phase("autocast weight casts", "memory", 0, 6 * head, 1))

    # ---- elementwise work of the decoder layers (forward bytes per token, then x3: forward + backward).
    norm_b, norm_k = _norm_bytes(rb, norm_w)
    norm_out = max(norm_w, rb)
    ew = s.norms_per_layer * norm_b * d
    k = s.norms_per_layer * norm_k
    attn_in = [(i, o) for t, (i, o, _) in lin if s.roles[t] == "attn_in"]
    mlp_in = [(i, o) for t, (i, o, _) in lin if s.roles[t] == "mlp_in"]
    if norm_out == 4 and cb == 2:  # each linear reading an fp32 norm output casts its own 16-bit copy
        ew += 6 * sum(i for i, _ in attn_in + mlp_in)
        k += len(attn_in) + len(mlp_in)
    if quantized:  # Linear4bit: out.to(input dtype) (fp32); down_proj's fp32 input cast to 16 bits
        ew += 6 * sum(o for t, (_, o, _) in lin if s.roles[t] != "attn_out") + 6 * f
        k += n_lin
    re = max(lo, rb)  # q * cos: cos/sin come in the residual's dtype
    ew += 10 * re * (dq + dkv)  # rotary on q and k: mul, neg, cat, mul, add
    k += 10
    if re == 4 and cb == 2:  # autocast casts SDPA's fp32 inputs
        ew += 6 * (dq + 2 * dkv)
        k += 3
    ew += 2 * cb * dq  # attention output transpose(1, 2).contiguous()
    ew += 2 * (2 * rb + lo) * d  # two residual adds
    ew += (5 if s.gated else 2) * lo * f  # SiLU(gate) * up, or a plain activation
    k += 1 + 2 + (2 if s.gated else 1)
    passes = 3 + (1 if gc else 0)  # forward, backward (about 2x a forward), recompute
    phases.append(
        Phase("elementwise (norms, rotary, activations, residuals)", "memory", 0, L * T * ew * passes, L * k * passes)
    )

    # ---- loss: logits .float(), log_softmax, nll, and their backward (~40 bytes per logit); embeddings.
    loss_bytes = T * V * (2 * (cb + 4) + 32) + 4 * T * rb * d
    emb_grad = (head * DTYPE_BYTES[rc.dtype] * 2) if full else 0  # zero the embedding grad, then scatter-add
    phases.append(Phase("loss and embeddings", "memory", 0, loss_bytes + emb_grad, 14))

    # ---- LoRA branches (peft lora.Linear), per adapted layer and token.
    if not full:
        lb = 0.0
        lk = 0.0
        lflops = 0.0
        drop = rc.lora_dropout > 0
        randoms = T * L * sum(s.linears[t][0] for t in targets) * (2 if gc else 1) if drop else 0
        for t in targets:
            i, o, _ = s.linears[t]
            xb = norm_out if s.roles[t] in ("attn_in", "mlp_in") else (lo if s.roles[t] == "mlp_out" else cb)
            up = 0 if xb == 4 else xb + 4  # x.to(lora_A's fp32) (peft _cast_input_dtype)
            fwd = i * (up + (9 if drop else 0) + (6 if rc.autocast else 0)) + o * (cb + 2 * cb + (lo + 2 * cb))
            bwd = o * 4 * cb + i * (
                2 * cb + (cb + 4 if rc.autocast else 0) + (9 if drop else 0) + (up if up else 0) + 3 * xb
            )
            lb += fwd * (2 if gc else 1) + bwd
            # kernels: forward (cast, dropout, autocast casts of x and of A and B, 2 matmuls, mul, add), backward
            lk += (6 + bool(up) + drop) * (2 if gc else 1) + 9 + bool(up) + drop
            lflops += 2 * rc.r * (i + o) * (3 + (1 if gc else 0))
            if dora:
                dlb, dlk, dfl = _dora_terms(i, o, rc, cb, quantized, drop, gc)
                lb += dlb
                lk += dlk
                lflops += dfl
        # (the lowest layer's lora_A on q/k/v needs no input gradient either, as above)
        lflops_skip = 0 if gc else 2 * T * rc.r * sum(s.linears[t][0] for t in first_in if t in targets)
        phases.append(Phase("LoRA adapters", "memory", lflops * T * L - lflops_skip, lb * T * L, lk * L))
        if dora:
            phases.append(_dora_phase(s, targets, rc, quantized, gc))

    # ---- 4-bit dequantization (bitsandbytes MatMul4Bit): forward, backward, recompute.
    if quantized:
        passes = 2 + (1 if gc else 0)
        per_w = 2.5 + 1 / 64 if rc.method == "qlora" else 3.0  # packed nibbles + absmax in, 16-bit out
        phases.append(Phase("4-bit dequantization", "memory", 0, per_w * mm_all * passes, 2 * L * n_lin * passes))

    # ---- optimizer (and Trainer's gradient clipping).
    trainable = counts.trainable
    pb = DTYPE_BYTES[rc.dtype] if full else 4
    n_tensors = _trainable_tensors(s, rc, targets)
    acc = (ADAMW_ACCESSES if rc.optimizer == "adamw" else 8 if rc.optimizer == "adamw-8bit" else 3) + (
        CLIP_ACCESSES if clip_grad_norm else 0
    )
    opt_kernels = (8 + (3 if clip_grad_norm else 0)) * (max(1, math.ceil(n_tensors / 48)) if foreach else n_tensors)
    phases.append(Phase("optimizer step", "memory", 0, acc * pb * trainable, opt_kernels))

    # ---- data parallel traffic (per GPU).
    n = rc.n_gpus
    allreduce = 2 * (n - 1) / n * trainable * pb if n > 1 else 0.0
    gather = 0.0
    if n > 1 and rc.sharding in ("fsdp", "zero3"):
        weights16 = (mm_all + head) * (0.5 if rc.method == "qlora" else cb)
        gather = 2 * (n - 1) / n * weights16 + (1 if gc else 0) * (n - 1) / n * weights16
        allreduce = (n - 1) / n * trainable * pb  # reduce-scatter instead of all-reduce
    return StepWork(
        model=_model_name(config),
        recipe=rc,
        tokens=T,
        n_params=counts.total,
        trainable_params=trainable,
        phases=tuple(phases),
        attention_flops=attn_fwd * (1 + 2.5 + (1 if gc else 0)),
        random_elements=0 if full else randoms,
        allreduce_bytes=allreduce,
        gather_bytes=gather,
        notes=notes,
    )


def _trainable_tensors(s: ModelShape, rc: Recipe, targets: list[str]) -> int:
    if rc.method == "full":
        return s.layers * (len(s.linears) + sum(1 for *_, b in s.linears.values() if b) + s.norms_per_layer) + 3
    return s.layers * len(targets) * (3 if getattr(rc, "use_dora", False) else 2)


def _dora_terms(
    i: int, o: int, rc: Recipe, cb: int, quantized: bool, drop: bool, gc: bool
) -> tuple[float, float, float]:
    """Per-token bytes, kernels (per layer) and FLOPs per token of DoRA's output scaling and second base pass."""
    passes = 2 if gc else 1
    # (mag_norm_scale - 1) * base, mag * lora * scaling, sum, result + ...: fp32 [T, out] tensors
    ew = o * 4 * 9 * passes + o * 4 * 12  # forward (x passes) and backward
    flops = 0.0
    if drop:  # base_result = F.linear(dropout(x), W): the base layer again, forward and input grad
        flops += 2 * i * o * (passes + 1)
        ew += cb * (i + o) * (passes + 1)
    return ew, 8 * passes + 10, flops


def _dora_phase(s: ModelShape, targets: list[str], rc: Recipe, quantized: bool, gc: bool) -> Phase:
    """DoRA's per-step weight work: W (dequantized) to fp32, + scaling * lora_B(lora_A(eye)), row norms."""
    passes = 2 if gc else 1
    flops = 0.0
    nbytes = 0.0
    for t in targets:
        i, o, _ = s.linears[t]
        flops += 2 * rc.r * i * (i + o)  # lora_B(lora_A(eye(in)))
        w = i * o
        # dequant (QLoRA) or read 16-bit, write fp32 (6-8 B); mul, add, norm (20 B); eye (8 B per in^2)
        nbytes += w * ((2.5 + 6) if quantized else 6) + 20 * w + 8 * i * i
        # autocast casts the fp32 weight for the second base pass
        nbytes += 6 * w if rc.lora_dropout > 0 else 0
    return Phase(
        "DoRA weight norms",
        "memory",
        flops * s.layers * passes,
        nbytes * s.layers * passes,
        12 * len(targets) * s.layers * passes,
    )

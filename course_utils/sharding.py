"""What each GPU keeps under data parallelism (DDP), FSDP and DeepSpeed ZeRO-3: the planner's per-GPU terms.

`course_utils.planner` computes one GPU's terms (weights, gradients, optimizer state, activations);
`per_gpu_terms` turns them into what ONE of ``n_gpus`` GPUs holds (notebook 07):

============  ==============  ==================  ==================  ====================
sharding      weights         gradients           optimizer state     activations
============  ==============  ==================  ==================  ====================
``ddp``       all             all (+ buckets)     all                 its own micro-batch
``fsdp``      1/N + gathered  1/N                 1/N                 its own micro-batch
``zero3``     1/N + gathered  1/N                 1/N                 its own micro-batch
============  ==============  ==================  ==================  ====================

- **DDP** (``torch.nn.parallel.DistributedDataParallel``): a full replica per GPU. Its reducer also
  keeps flat gradient buckets as large as all gradients together (``gradient_as_bucket_view=False``,
  the default in torch and accelerate), so gradients count twice.
- **FSDP** (``FULL_SHARD``, the shipped ``fsdp-lora.yaml``): every flat parameter, its gradient and
  its optimizer state are split in N equal shards (padded to a multiple of N). In forward and backward
  each wrapped unit is all-gathered: the root unit (embeddings, final norm, head) stays gathered from
  forward until backward ends, and with ``BACKWARD_PRE`` prefetch two decoder layers are gathered at once.
  With one GPU torch switches to ``NO_SHARD``: nothing is gathered.
- **ZeRO-3**: the same partitioning; we model its live gathered parameters like FSDP's (one root, two
  layers). DeepSpeed's prefetch and bucket sizes (``stage3_prefetch_bucket_size``, ``reduce_bucket_size``)
  can hold more: treat ZeRO-3 numbers as a lower bound and measure.

Activations and logits do not shrink: each GPU runs its own micro-batch (``batch_size`` is per GPU).

>>> t = per_gpu_terms(4, "fsdp", weights=1000, grads=100, opt_state=200, opt_temp=100, root_weights=200, layers=8)
>>> t.weights, t.grads, t.opt_state, t.gathered
(250, 25, 50, 400)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SHARDINGS", "GPU_COUNTS", "ShardedTerms", "validate_sharding", "per_gpu_terms", "smallest_gpu_count"]

#: Values of ``Recipe.sharding``.
SHARDINGS = ("none", "ddp", "fsdp", "zero3")
#: GPU counts the fit table tries when a recipe does not fit one GPU.
GPU_COUNTS = (2, 4, 8, 16)


def validate_sharding(n_gpus: object, sharding: object) -> None:
    """Raise ``ValueError`` (saying what to pass) unless ``n_gpus`` and ``sharding`` make sense together.

    >>> validate_sharding(2, "fsdp")
    >>> validate_sharding(2, "none")
    Traceback (most recent call last):
    ...
    ValueError: Recipe.n_gpus=2 needs a sharding: "ddp" (a full copy per GPU), "fsdp" or "zero3" (split across GPUs).
    """
    if not isinstance(n_gpus, int) or isinstance(n_gpus, bool) or n_gpus < 1:
        raise ValueError(f"Recipe.n_gpus must be a positive integer, got {n_gpus!r}.")
    if sharding not in SHARDINGS:
        raise ValueError(f"Recipe.sharding must be one of {SHARDINGS}, got {sharding!r}.")
    if n_gpus > 1 and sharding == "none":
        raise ValueError(
            f'Recipe.n_gpus={n_gpus} needs a sharding: "ddp" (a full copy per GPU), "fsdp" or "zero3" '
            "(split across GPUs)."
        )


@dataclass
class ShardedTerms:
    """Bytes ONE GPU holds: its shard of each term, plus working copies (``gathered``, ``buckets``)."""

    weights: int
    grads: int
    opt_state: int
    opt_temp: int
    gathered: int = 0
    buckets: int = 0


def _shard(nbytes: int, n: int) -> int:
    return -(-nbytes // n)  # ceil: FSDP pads every flat parameter to a multiple of N


def per_gpu_terms(
    n_gpus: int,
    sharding: str,
    *,
    weights: int,
    grads: int,
    opt_state: int,
    opt_temp: int,
    root_weights: int,
    layers: int,
) -> ShardedTerms:
    """Split one GPU's terms (bytes) across ``n_gpus`` under ``sharding``; see the module docstring.

    ``root_weights`` are the weights outside the decoder layers (embeddings, final norm, head); the
    rest of ``weights`` is spread evenly over ``layers`` decoder layers (the FSDP units).

    >>> per_gpu_terms(2, "ddp", weights=1000, grads=100, opt_state=200, opt_temp=100, root_weights=200, layers=8)
    ShardedTerms(weights=1000, grads=100, opt_state=200, opt_temp=100, gathered=0, buckets=100)
    """
    validate_sharding(n_gpus, sharding)
    if sharding in ("none", "ddp"):
        buckets = grads if (sharding == "ddp" and n_gpus > 1) else 0  # accelerate skips DDP on one process
        return ShardedTerms(weights, grads, opt_state, opt_temp, 0, buckets)
    n = n_gpus
    layer = (weights - root_weights) // max(layers, 1)
    gathered = 0 if n == 1 else root_weights + min(2, layers) * layer
    return ShardedTerms(_shard(weights, n), _shard(grads, n), _shard(opt_state, n), _shard(opt_temp, n), gathered, 0)


def smallest_gpu_count(fits: Callable[[int], bool], counts: tuple[int, ...] = GPU_COUNTS) -> int | None:
    """The smallest GPU count in ``counts`` for which ``fits(n)`` is true, or None.

    >>> smallest_gpu_count(lambda n: 10 / n < 3)
    4
    """
    for n in counts:
        if fits(n):
            return n
    return None

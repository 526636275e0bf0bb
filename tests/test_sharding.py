"""The planner's multi-GPU terms (course_utils/sharding.py, Recipe.n_gpus / Recipe.sharding, plan --n-gpus)."""

from __future__ import annotations

import pytest

from course_utils.cli import main
from course_utils.planner import Recipe, estimate_training_memory, fit_table
from course_utils.sharding import per_gpu_terms, validate_sharding

TERMS = {"weights": 10_000, "grads": 1_000, "opt_state": 2_000, "opt_temp": 1_000, "root_weights": 2_000, "layers": 8}


@pytest.mark.parametrize(
    ("n", "sharding", "weights", "grads", "opt", "gathered", "buckets"),
    [
        (1, "none", 10_000, 1_000, 2_000, 0, 0),
        (2, "ddp", 10_000, 1_000, 2_000, 0, 1_000),  # a full replica, plus DDP's gradient buckets
        (1, "fsdp", 10_000, 1_000, 2_000, 0, 0),  # one GPU: NO_SHARD, nothing gathered
        (4, "fsdp", 2_500, 250, 500, 4_000, 0),  # 1/N each; root + 2 layers of 1,000 gathered
        (3, "zero3", 3_334, 334, 667, 4_000, 0),  # shards round up (padding to a multiple of N)
    ],
)
def test_what_one_gpu_keeps(
    n: int, sharding: str, weights: int, grads: int, opt: int, gathered: int, buckets: int
) -> None:
    t = per_gpu_terms(n, sharding, **TERMS)
    assert (t.weights, t.grads, t.opt_state, t.gathered, t.buckets) == (weights, grads, opt, gathered, buckets)


@pytest.mark.parametrize(
    ("n", "sharding", "match"),
    [
        (2, "none", "needs a sharding"),
        (0, "fsdp", "positive integer"),
        (2, "zero2", "one of"),
        (True, "ddp", "positive"),
    ],
)
def test_bad_recipes_say_what_to_pass(n: object, sharding: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_sharding(n, sharding)
    with pytest.raises(ValueError, match=match):
        Recipe(n_gpus=n, sharding=sharding)  # type: ignore[arg-type]


def test_fsdp_shrinks_weights_and_state_but_not_activations() -> None:
    one = estimate_training_memory("llama-3.1-8b", Recipe(method="lora", gradient_checkpointing=True))
    four = estimate_training_memory(
        "llama-3.1-8b", Recipe(method="lora", gradient_checkpointing=True, n_gpus=4, sharding="fsdp")
    )
    d = four.details
    assert d["per GPU: weights (own shard)"] == -(-one.weights_bytes // 4)
    assert d["per GPU: grads"] == -(-one.details["grads"] // 4)
    assert d["per GPU: optimizer state"] == -(-one.details["optimizer state"] // 4)
    assert four.activations_bytes == one.activations_bytes and four.logits_bytes == one.logits_bytes
    assert four.peak_bytes < one.peak_bytes
    ddp = estimate_training_memory(
        "llama-3.1-8b", Recipe(method="lora", gradient_checkpointing=True, n_gpus=4, sharding="ddp")
    )
    assert ddp.peak_bytes > one.peak_bytes  # a replica per GPU plus gradient buckets: DDP never saves memory


def test_the_8b_config_has_llama_3_1_8b_parameters() -> None:
    est = estimate_training_memory("llama-3.1-8b", Recipe(method="full"))
    assert est.n_params == 8_030_261_248


def test_fit_table_suggests_the_smallest_gpu_count_that_fits() -> None:
    rc = Recipe(method="lora", gradient_checkpointing=True)
    table = fit_table("llama-3.1-8b", [rc], gpus=(16,))
    suggestion = [s for s in table.estimates[0].suggestions[16] if s.startswith("n_gpus=")]
    assert suggestion == ["n_gpus=4, sharding='fsdp'"]
    fits = {n: estimate_training_memory("llama-3.1-8b", rc.replace(n_gpus=n, sharding="fsdp")).fits(16) for n in (2, 4)}
    assert fits == {2: False, 4: True} and not estimate_training_memory("llama-3.1-8b", rc).fits(16)


def test_plan_command_prints_the_per_gpu_peak(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "llama-3.1-8b", "--gc", "--gpus", "4", "--sharding", "fsdp", "--gpu", "16"]) == 0
    out = capsys.readouterr().out
    assert "fsdp x4" in out and "fits a 16 GiB GPU: yes" in out
    assert main(["plan", "llama-3.1-8b", "--n-gpus", "4", "--sharding", "none"]) == 2
    assert "needs a sharding" in capsys.readouterr().err

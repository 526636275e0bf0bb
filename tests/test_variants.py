"""course_utils.variants: the seed protocol, the update of an adapter, what a combination keeps, the costs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from course_utils.data import load_task
from course_utils.loading import load_model, load_tokenizer
from course_utils.variants import (
    VARIANTS,
    delta_weights,
    forward_flops,
    forward_seconds,
    kept_of_update,
    lora_scaling,
    mean_spread,
    seeded_batches,
    train_steps,
    variant_options,
)

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def base():
    return load_model()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _peft(base, seed=0, **options):
    torch.manual_seed(seed)
    return get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **options))


def test_seed_protocol_same_seed_same_batches_other_seed_other_order(tok):
    ds = load_task("shout", "train")
    a = seeded_batches(ds, tok, steps=3, batch_size=4, seed=0)
    b = seeded_batches(ds, tok, steps=3, batch_size=4, seed=0)
    c = seeded_batches(ds, tok, steps=3, batch_size=4, seed=1)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not all(
        x["input_ids"].shape == y["input_ids"].shape and torch.equal(x["input_ids"], y["input_ids"])
        for x, y in zip(a, c)
    )
    assert (a[0]["labels"][:, 0] == -100).all()  # the loss is on the answer only
    # more steps than one epoch: the order wraps around, reshuffled
    assert len(seeded_batches(ds, tok, steps=40, batch_size=8, seed=0)) == 40
    with pytest.raises(ValueError, match="batch_size"):
        seeded_batches(ds, tok, steps=1, batch_size=0, seed=0)


def test_train_steps_lowers_the_loss_and_zero_steps_change_nothing(base, tok):
    batches = seeded_batches(load_task("shout", "train"), tok, steps=8, batch_size=8, seed=0)
    model = _peft(base)
    losses = train_steps(model, batches, learning_rate=5e-3)
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert not model.training
    untouched = _peft(base)
    assert train_steps(untouched, [], learning_rate=5e-3) == []
    assert max(d.abs().max().item() for d in delta_weights(untouched).values()) == 0.0


@pytest.mark.parametrize(("r", "rslora", "expected"), [(8, False, 2.0), (8, True, 16 / math.sqrt(8)), (64, True, 2.0)])
def test_lora_scaling_is_the_one_peft_applies(base, r, rslora, expected):
    assert lora_scaling(16, r, use_rslora=rslora) == pytest.approx(expected)
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=r, lora_alpha=16, target_modules=TARGETS, use_rslora=rslora)
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="positive"):
        lora_scaling(16, 0)


def test_delta_weights_is_scaling_times_b_a(base):
    model = _peft(base, init_lora_weights=False)  # B random too: a non-zero update
    layer = model.base_model.model.model.layers[1].self_attn.v_proj
    expected = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    deltas = delta_weights(model)
    assert len(deltas) == 2 * len(base.model.layers)
    assert torch.allclose(deltas["base_model.model.model.layers.1.self_attn.v_proj"], expected)
    with pytest.raises(ValueError, match="no_such"):
        delta_weights(model, "no_such")


def test_kept_of_update_and_cat_is_the_exact_sum(base):
    model = _peft(base, init_lora_weights=False)
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    model.add_weighted_adapter(["default", "b"], [1.0, 0.5], "cat", combination_type="cat")
    a, b, cat = delta_weights(model), delta_weights(model, "b"), delta_weights(model, "cat")
    assert max((cat[k] - a[k] - 0.5 * b[k]).abs().max().item() for k in a) < 1e-6
    # a zeroed combination keeps nothing; the source itself keeps all of itself
    assert kept_of_update({k: torch.zeros_like(v) for k, v in a.items()}, a) == 0.0
    assert kept_of_update(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="zero"):
        kept_of_update(a, {k: torch.zeros_like(v) for k, v in a.items()})
    with pytest.raises(ValueError, match="lacks"):
        kept_of_update({}, a)


def test_unmerged_dora_costs_more_flops_per_decoding_step_than_merged(base):
    step = {"input_ids": torch.ones(1, 1, dtype=torch.long)}
    dora = _peft(base, use_dora=True)
    lora = _peft(base)
    dora_ratio = forward_flops(dora, step) / forward_flops(copy.deepcopy(dora).merge_and_unload(), step)
    lora_ratio = forward_flops(lora, step) / forward_flops(copy.deepcopy(lora).merge_and_unload(), step)
    assert dora_ratio > 2 > 1.5 > lora_ratio >= 1.0
    assert forward_seconds(lora, step, repeats=1) > 0
    with pytest.raises(ValueError, match="repeats"):
        forward_seconds(lora, step, repeats=0)


def test_variant_options_and_mean_spread():
    assert set(VARIANTS) >= {"LoRA", "rsLoRA", "DoRA", "PiSSA", "OLoRA", "LoRA+"}
    options = variant_options("rsLoRA")
    options["use_rslora"] = False  # a copy: the table is not changed
    assert variant_options("rsLoRA") == {"use_rslora": True}
    with pytest.raises(ValueError, match="DoRA"):
        variant_options("dora")
    assert mean_spread([0.5]) == "0 ± 0" and mean_spread([0.5], scale=100) == "50 ± 0"
    with pytest.raises(ValueError):
        mean_spread([])


def test_loftq_init_brings_a_4bit_model_closer_to_full_precision(base):
    from course_utils.platform_support import bitsandbytes_available

    if not bitsandbytes_available()[0]:
        pytest.skip("bitsandbytes is not usable here")
    import bitsandbytes as bnb

    from course_utils.quantization import bnb_4bit_config, prevent_cpu_repack
    from course_utils.variants import loftq_init_

    quantized = load_model(quantization_config=bnb_4bit_config("cpu"), device="cpu")
    prevent_cpu_repack(quantized)
    model = get_peft_model(quantized, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    names = loftq_init_(model, base)
    assert len(names) == 2 * len(base.model.layers)
    for name in names:
        layer = model.get_submodule(name)
        w = base.get_submodule(name.split("base_model.model.", 1)[1]).weight
        q = bnb.functional.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
        assert (w - q - layer.get_delta_weight("default")).norm() < (w - q).norm()
    with pytest.raises(ValueError, match="4-bit"):
        loftq_init_(_peft(base), base)

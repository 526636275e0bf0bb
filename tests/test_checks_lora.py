"""Notebook 01's exercise checks and the from-scratch LoRA layer, against peft on the tiny model."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from course_utils.architectures import (
    attention_projection_names,
    linear_layer_names,
    lora_parameter_count,
    mlp_projection_names,
)
from course_utils.checks.lora import (
    check_lora_parameter_count,
    check_mlp_targets,
    check_scaling,
    count_trainable_with_peft,
)
from course_utils.lora_scratch import LoRALinear


def _peft_linear(base: nn.Linear, r: int, alpha: int):
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.Sequential(OrderedDict(proj=copy.deepcopy(base)))
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"]), holder)
    return holder.proj


def test_scratch_layer_is_the_identity_at_start_and_matches_peft_after_training():
    torch.manual_seed(0)
    base = nn.Linear(12, 6)
    x = torch.randn(4, 12)
    mine = LoRALinear(copy.deepcopy(base), r=3, lora_alpha=6)
    assert torch.equal(mine(x), base(x))
    assert mine.lora_parameter_count() == 3 * (12 + 6)
    assert [n for n, p in mine.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]

    peft_layer = _peft_linear(base, r=3, alpha=6)
    nn.init.normal_(peft_layer.lora_B["default"].weight)
    ours = LoRALinear.from_peft(peft_layer)
    with torch.no_grad():
        assert not torch.allclose(peft_layer(x), base(x))
        torch.testing.assert_close(ours(x), peft_layer(x))
        torch.testing.assert_close(ours.delta_weight(), peft_layer.get_delta_weight("default"))


def test_scratch_init_of_A_has_peft_bound():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(100, 10), r=64)
    bound = 1 / 100**0.5  # kaiming_uniform_(a=sqrt(5)) on fan_in=100
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.9 * bound


def test_scratch_layer_rejects_bad_rank():
    with pytest.raises(ValueError, match="positive integer"):
        LoRALinear(nn.Linear(4, 4), r=0)


def test_module_names_come_from_the_model(tiny_model):
    assert attention_projection_names(tiny_model) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert mlp_projection_names(tiny_model) == ["gate_proj", "up_proj", "down_proj"]
    shapes = linear_layer_names(tiny_model)
    assert "lm_head" not in shapes
    assert shapes["k_proj"][1] < shapes["q_proj"][1]  # grouped-query attention


def test_names_survive_peft_wrapping(tiny_model):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert attention_projection_names(wrapped) == attention_projection_names(tiny_model)
    assert linear_layer_names(wrapped) == linear_layer_names(tiny_model)


@pytest.mark.parametrize(
    ("r", "targets"), [(8, ["q_proj", "v_proj"]), (4, ["gate_proj", "down_proj"]), (1, ["o_proj"])]
)
def test_formula_matches_peft_count(tiny_model, r, targets):
    from peft import LoraConfig, get_peft_model

    real = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=r, target_modules=targets))
    n_real = sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert lora_parameter_count(tiny_model, r, targets) == n_real
    assert count_trainable_with_peft(tiny_model, r, targets) == n_real


def test_parameter_count_check_accepts_right_answer_and_explains_wrong_ones(tiny_model):
    right = lora_parameter_count(tiny_model, 8, ["q_proj", "v_proj"])
    assert check_lora_parameter_count(right, tiny_model)
    assert not check_lora_parameter_count(None, tiny_model)
    per_layer = check_lora_parameter_count(right // tiny_model.config.num_hidden_layers, tiny_model)
    assert not per_layer
    assert "one decoder layer" in per_layer.hints[0]
    naive = 4 * 8 * (192 + 192) * 2  # forgets grouped-query attention (v_proj has fewer outputs)
    wrong = check_lora_parameter_count(naive, tiny_model)
    assert not wrong
    assert any("grouped-query" in h for h in wrong.hints)


def test_scaling_check():
    assert check_scaling(1.0, r=32, lora_alpha=32)
    assert check_scaling(2, r=16, lora_alpha=32)
    inverted = check_scaling(0.5, r=16, lora_alpha=32)
    assert not inverted and "other way round" in inverted.hints[0]
    rslora = check_scaling(8.0, r=16, lora_alpha=32)
    assert not rslora and "rsLoRA" in rslora.hints[0]
    assert not check_scaling("two", r=16, lora_alpha=32)


def test_mlp_targets_check(tiny_model):
    assert check_mlp_targets(["up_proj", "down_proj", "gate_proj"], tiny_model)
    assert check_mlp_targets(("gate_proj", "up_proj", "down_proj", "up_proj"), tiny_model)
    missing = check_mlp_targets(["up_proj", "q_proj"], tiny_model)
    assert not missing
    assert "missing" in missing.message and "q_proj" in missing.message
    assert not check_mlp_targets("all-linear", tiny_model)
    assert not check_mlp_targets(None, tiny_model)


def test_mlp_targets_check_on_gpt2_and_opt():
    """GPT-2's c_proj is in attention AND the MLP; OPT's fc1/fc2 sit outside any `mlp` module."""
    from course_utils.tiny_models import tiny_model

    gpt2 = tiny_model("gpt2")
    assert check_mlp_targets(["c_fc", "mlp.c_proj"], gpt2)
    too_much = check_mlp_targets(["c_fc", "c_proj"], gpt2)  # also selects attn.c_proj
    assert not too_much and "attn.c_proj" in too_much.message
    assert check_mlp_targets(["fc1", "fc2"], tiny_model("opt"))
    unknown = check_mlp_targets(["gate_proj", "up_proj", "down_proj"], tiny_model("opt"))
    assert not unknown and "no layer of this model is named" in unknown.message


def test_parameter_count_check_on_fused_and_conv1d():
    from course_utils.tiny_models import tiny_model

    phi3, gpt2 = tiny_model("phi3"), tiny_model("gpt2")
    assert check_lora_parameter_count(2 * 8 * (64 + 128), phi3, r=8, target_modules=["qkv_proj"])
    wrong = check_lora_parameter_count(3 * 2 * 8 * (64 + 64), phi3, r=8, target_modules=["qkv_proj"])
    assert not wrong and any("fused projection is one layer" in h for h in wrong.hints)
    assert check_lora_parameter_count(2 * 8 * (64 + 192), gpt2, r=8, target_modules=["c_attn"])
    assert any("Conv1D" in h for h in check_lora_parameter_count(1, gpt2, r=8, target_modules=["c_attn"]).hints)

"""course_utils.quantization: configs, byte counts that match bitsandbytes, the AVX-512-BF16 CPU repack."""

import copy
import logging

import pytest
import torch

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from course_utils.model_breakdown import quant_state_tensors  # noqa: E402
from course_utils.quantization import (  # noqa: E402
    bnb_4bit_config,
    bnb_8bit_config,
    compute_dtype_for,
    cpu_repack_hazard,
    int8_weight_bytes,
    nf4_weight_bytes,
    prevent_cpu_repack,
    repacked_layers,
)


def test_configs_cpu():
    cfg = bnb_4bit_config("cpu")
    assert cfg.load_in_4bit and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.float32
    assert cfg.bnb_4bit_quant_storage == torch.uint8
    assert bnb_4bit_config("cpu", compute_dtype="bfloat16").bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_8bit_config().load_in_8bit
    assert compute_dtype_for("cpu") == torch.float32
    with pytest.raises(ValueError, match="nf4"):
        bnb_4bit_config("cpu", quant_type="int4")


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_4bit_compute_dtype_follows_the_gpu_generation(monkeypatch, capability, expected):
    # torch.cuda.is_bf16_supported() says True on a T4 (emulation): it must not decide
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert compute_dtype_for("cuda") == expected
    assert bnb_4bit_config("cuda").bnb_4bit_compute_dtype == expected


def test_nf4_bytes_match_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    out_f, in_f = 256, 1024
    layer = bnb.nn.Linear4bit(
        in_f, out_f, bias=False, compress_statistics=True, quant_type="nf4", compute_dtype=torch.float32
    )
    layer.weight = bnb.nn.Params4bit(
        torch.randn(out_f, in_f) * 0.02, requires_grad=False, compress_statistics=True, quant_type="nf4"
    )
    layer = layer.to("cpu")
    stored = layer.weight.numel() * layer.weight.element_size() + sum(
        t.numel() * t.element_size() for t in quant_state_tensors(layer.weight)
    )
    assert stored == nf4_weight_bytes(out_f, in_f, include_code_tables=True)
    assert int8_weight_bytes(out_f, in_f) == out_f * in_f + 4 * out_f


# ------------------------------------------------------------------------------------------
# the CPU repack of bitsandbytes >= 0.50 on AVX-512-BF16 (see course_utils/quantization.py)
# ------------------------------------------------------------------------------------------
def _two_4bit_layers(double_quant: bool) -> torch.nn.Sequential:
    """Two NF4 layers (192 -> 128 -> 64: the repack needs outputs divisible by 32, inputs by 64)."""
    bnb = pytest.importorskip("bitsandbytes")
    gen = torch.Generator().manual_seed(0)
    layers = []
    for n_in, n_out in ((192, 128), (128, 64)):
        layer = bnb.nn.Linear4bit(
            n_in, n_out, bias=False, compute_dtype=torch.float32, compress_statistics=double_quant, quant_type="nf4"
        )
        layer.weight = bnb.nn.Params4bit(
            torch.randn(n_out, n_in, generator=gen) * 0.05,
            requires_grad=False,
            compress_statistics=double_quant,
            quant_type="nf4",
        )
        layers.append(layer.to("cpu"))
    return torch.nn.Sequential(*layers)


def _dequantized(model: torch.nn.Module) -> list[torch.Tensor]:
    import bitsandbytes.functional as F

    return [F.dequantize_4bit(m.weight.data, m.weight.quant_state).float() for m in model]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("double_quant", [True, False])
def test_prevent_cpu_repack_restores_the_weights(double_quant):
    """Forces the repack with bitsandbytes' own conversion (plain torch: runs on every CPU)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model = _two_4bit_layers(double_quant)
    originals = _dequantized(model)
    for layer in model:  # what Linear4bit.forward does at eval time on an AVX-512-BF16 CPU
        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state
        )
    assert repacked_layers(model) == ["0", "1"]

    assert prevent_cpu_repack(model) == 2
    assert repacked_layers(model) == [] and prevent_cpu_repack(model) == 0
    assert all(layer.support_avx512bf16_for_cpu is False for layer in model)
    for restored, original in zip(_dequantized(model), originals):
        assert restored.shape == original.shape
        assert _rel(restored, original) < 0.01  # the repack rounded absmax to bfloat16: ~0.1-0.2%


def test_gradients_after_the_repack_equal_those_of_an_unpacked_model():
    """A learner evaluates a 4-bit model, then trains: the gradient through the layers must be right."""
    model = _two_4bit_layers(double_quant=True)
    packed = copy.deepcopy(model)
    x = torch.randn(8, 192, generator=torch.Generator().manual_seed(1))
    packed.eval()
    with torch.no_grad():  # an evaluation pass: this is where bitsandbytes repacks
        packed(x)
    if not repacked_layers(packed):
        pytest.skip(f"bitsandbytes does not repack 4-bit weights on this CPU (AVX-512-BF16: {cpu_repack_hazard()})")

    def input_grad(m: torch.nn.Module) -> torch.Tensor:
        m.train()
        xi = x.clone().requires_grad_(True)  # stands for a LoRA/embedding output that needs a gradient
        (m(xi) ** 2).sum().backward()
        return xi.grad

    reference = input_grad(model)  # never evaluated, never repacked
    assert prevent_cpu_repack(packed) == 2
    assert _rel(input_grad(packed), reference) < 0.02  # absmax rounded to bf16 by the repack: ~0.2%

    fresh = _two_4bit_layers(double_quant=True)  # switched off before its first forward: exact
    prevent_cpu_repack(fresh)
    fresh.eval()
    with torch.no_grad():
        fresh(x)
    assert repacked_layers(fresh) == []
    assert torch.equal(input_grad(fresh), reference)


def test_load_model_keeps_4bit_layers_portable():
    pytest.importorskip("bitsandbytes")
    from course_utils.loading import load_model

    model = load_model("course-tiny", device="cpu", quantization_config=bnb_4bit_config("cpu"))
    linears = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert linears and all(m.support_avx512bf16_for_cpu is False for m in linears)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 9, 2]]))
    assert repacked_layers(model) == []

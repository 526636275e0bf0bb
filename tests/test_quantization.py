"""course_utils.quantization: byte counts match bitsandbytes, merges into 4-bit lose the delta."""
import logging

import pytest
import torch

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from course_utils.memory import _quant_state_tensors  # noqa: E402
from course_utils.quantization import (  # noqa: E402
    bnb_4bit_config,
    bnb_8bit_config,
    compute_dtype_for,
    dequantized_weight,
    effect_retained,
    int8_weight_bytes,
    merge_with_retention,
    nf4_weight_bytes,
    requires_cuda,
)


def test_configs_cpu():
    cfg = bnb_4bit_config("cpu")
    assert cfg.load_in_4bit and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.float32
    assert bnb_4bit_config("cpu", compute_dtype="bfloat16").bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_8bit_config().load_in_8bit
    assert compute_dtype_for("cpu") == torch.float32
    with pytest.raises(ValueError, match="nf4"):
        bnb_4bit_config("cpu", quant_type="int4")


def test_nf4_bytes_match_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    out_f, in_f = 256, 1024
    layer = bnb.nn.Linear4bit(in_f, out_f, bias=False, compress_statistics=True, quant_type="nf4",
                              compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(torch.randn(out_f, in_f) * 0.02, requires_grad=False,
                                     compress_statistics=True, quant_type="nf4")
    layer = layer.to("cpu")
    stored = layer.weight.numel() * layer.weight.element_size() + sum(
        t.numel() * t.element_size() for t in _quant_state_tensors(layer.weight))
    assert stored == nf4_weight_bytes(out_f, in_f, include_code_tables=True)
    assert int8_weight_bytes(out_f, in_f) == out_f * in_f + 4 * out_f


def test_effect_retained():
    base, adapter = torch.zeros(4, 5), torch.ones(4, 5)
    assert effect_retained(base, adapter, adapter) == 1.0
    assert effect_retained(base, adapter, base) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        effect_retained(base, adapter, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="nothing to retain"):
        effect_retained(base, base, adapter)


def test_requires_cuda_prints_one_sentence(capsys):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert requires_cuda("Measuring GPU memory") is False
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("Skipped: Measuring GPU memory needs a CUDA GPU")


def _lora_model(quantized: bool):
    from peft import LoraConfig, get_peft_model

    from course_utils.loading import load_model

    model = load_model("course-tiny", device="cpu", quantization_config=bnb_4bit_config("cpu") if quantized else None)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return pm


def test_merge_with_retention_fp32_keeps_everything():
    pm = _lora_model(False)
    merged, kept = merge_with_retention(pm)
    assert kept.passed and abs(kept.retained - 1) < 1e-4 and kept.storage == "float32"
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_merge_with_retention_4bit_loses_most():
    pytest.importorskip("bitsandbytes")
    pm = _lora_model(True)
    before = dequantized_weight(pm.base_model.model.model.layers[0].self_attn.q_proj.get_base_layer())
    assert before.dtype == torch.float32
    merged, kept = merge_with_retention(pm)
    assert kept.storage.startswith("4-bit")
    assert not kept.passed and kept.rel_error > 0.1
    assert kept.notes

"""course_utils.merging: safe_merge (OOM fallback, dtype report), quantized guard, dequantize
path, checked adapter loading, save helpers that never overwrite silently."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from adapter_factory import make_adapter, write_adapter

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from course_utils.merging import (  # noqa: E402
    AdapterBaseMismatchError,
    AdapterFileError,
    MergeInfo,
    OutputExistsError,
    QuantizedMergeError,
    dequantize_for_merge,
    load_adapter_checked,
    quantization_of,
    round_trip,
    safe_merge,
    save_adapter,
    save_merged,
)
from course_utils.validation import capture_reference, compare_to_reference  # noqa: E402

TEXTS = ["The capital of France is Paris.", "Alice has three apples and gives one to Bob."]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------
# safe_merge
# ------------------------------------------------------------------------------------------
def test_safe_merge_reports_what_it_did(tiny_model, capsys):
    pm = make_adapter(tiny_model)
    merged, info = safe_merge(pm)
    assert isinstance(info, MergeInfo)
    assert not info.fell_back and info.strategy == "merge_and_unload"
    assert info.n_layers == 28  # 4 layers x 7 linear modules
    assert info.base_dtypes == info.merged_dtypes == "float32"
    assert "merged 28 LoRA layers" in capsys.readouterr().out
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert info.to_dict()["message"] == info.message


@pytest.mark.parametrize("fallback", ["layerwise", "cpu"])
def test_out_of_memory_falls_back_and_gives_the_same_weights(tiny_model, monkeypatch, capsys, fallback):
    from peft.tuners.lora import Linear as LoraLinear

    expected = weights(make_adapter(tiny_model).merge_and_unload())
    calls = {"n": 0}
    original = LoraLinear.merge

    def flaky_merge(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # two layers merged, then the GPU "runs out"
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraLinear, "merge", flaky_merge)
    merged, info = safe_merge(make_adapter(tiny_model), fallback=fallback)
    assert info.fell_back
    assert "Out of GPU memory" in capsys.readouterr().out
    got = weights(merged)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6)


def test_out_of_memory_without_fallback_is_raised(tiny_model, monkeypatch):
    from peft.tuners.lora import Linear as LoraLinear

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(LoraLinear, "merge", oom)
    with pytest.raises(torch.OutOfMemoryError):
        safe_merge(make_adapter(tiny_model), fallback=None, verbose=False)


def test_dtype_mismatch_warns_and_keeps_base_dtype(tiny_model):
    pm = make_adapter(tiny_model, torch.bfloat16)  # peft keeps adapter weights in float32
    with pytest.warns(UserWarning, match="adapter weights are float32 but the base layers are bfloat16"):
        merged, info = safe_merge(pm, verbose=False)
    assert info.adapter_dtypes == "float32" and info.merged_dtypes == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in merged.parameters())


def test_safe_merge_needs_a_peft_model(tiny_model):
    with pytest.raises(TypeError, match="load_adapter_checked"):
        safe_merge(tiny_model)


# ------------------------------------------------------------------------------------------
# quantized base: guard and dequantize path
# ------------------------------------------------------------------------------------------
def qlora_model(tiny_model_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_path, dtype=torch.float32, quantization_config=qc, device_map={"": "cpu"}
    )
    return base


def test_quantized_merge_is_refused_and_dequantize_path_matches(tiny_model_path, tiny_tokenizer):
    pytest.importorskip("bitsandbytes")
    base = qlora_model(tiny_model_path)
    assert quantization_of(base) == "4-bit (nf4)"
    pm = make_adapter(base, dtype=None)
    ref = capture_reference(pm, TEXTS, tiny_tokenizer, max_new_tokens=4)

    with pytest.raises(QuantizedMergeError, match="dequantize_for_merge") as err:
        safe_merge(pm, verbose=False)
    assert "re-quantizes".upper() in str(err.value).upper() and "allow_quantized=True" in str(err.value)

    # merging anyway loses the delta: the validation report catches it
    lossy, _ = safe_merge(copy.deepcopy(pm), allow_quantized=True, verbose=False)
    assert not compare_to_reference(lossy, ref).passed

    merged, info = dequantize_for_merge(pm, dtype=torch.float32, verbose=False)
    assert quantization_of(merged) is None
    assert info.merged_dtypes == "float32" and "dequantized the 4-bit (nf4) base" in info.strategy
    report = compare_to_reference(merged, ref)
    assert report.tolerance.name == "float32"
    assert report.passed, report


# ------------------------------------------------------------------------------------------
# load_adapter_checked
# ------------------------------------------------------------------------------------------
def test_adapter_for_another_base_is_refused(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=tiny_model.config.vocab_size,
        )
    )
    save_adapter(get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])), tmp_path / "a")
    cfg_file = tmp_path / "a" / "adapter_config.json"  # as an adapter from the hub records its base
    cfg_file.write_text(
        cfg_file.read_text().replace(
            '"base_model_name_or_path": null', '"base_model_name_or_path": "someone/other-model"'
        )
    )
    with pytest.raises(AdapterBaseMismatchError, match="does not fit") as err:
        load_adapter_checked(copy.deepcopy(tiny_model), tmp_path / "a")
    msg = str(err.value)
    assert "someone/other-model" in msg and "Load the base model the adapter was trained on" in msg
    assert "q_proj" in msg


def test_load_adapter_checked_loads_a_fitting_adapter(tiny_model, tmp_path):
    pm = make_adapter(tiny_model)
    save_adapter(pm, tmp_path / "a")
    loaded = load_adapter_checked(copy.deepcopy(tiny_model), tmp_path / "a")
    a = dict(pm.named_parameters())
    for n, p in loaded.named_parameters():
        if "lora_B" in n:
            torch.testing.assert_close(p, a[n])


def test_load_adapter_checked_explains_a_non_adapter_folder(tiny_model, tiny_model_path):
    with pytest.raises(FileNotFoundError, match="AutoModelForCausalLM"):
        load_adapter_checked(tiny_model, tiny_model_path)


def _corrupt_config(folder):  # cut off mid-file, as an interrupted copy leaves it
    cfg = folder / "adapter_config.json"
    cfg.write_text(cfg.read_text()[:120])
    return cfg, ["adapter_config.json", "not valid JSON", "line"]


def _truncate_weights(folder):  # half the bytes, as an interrupted download leaves it
    st = folder / "adapter_model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    return st, ["adapter_model.safetensors", "truncated or damaged", "bytes"]


def _drop_weights(folder):
    (folder / "adapter_model.safetensors").unlink()
    return folder, ["no adapter_model.safetensors", "weights are missing"]


DAMAGE = {"corrupted config": _corrupt_config, "truncated weights": _truncate_weights, "missing weights": _drop_weights}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_adapter_folder_gives_one_clear_error(tiny_model, tmp_path, damage):
    folder = write_adapter(tiny_model, tmp_path / "adapter")
    damaged, needles = DAMAGE[damage](folder)
    with pytest.raises(AdapterFileError) as err:
        load_adapter_checked(copy.deepcopy(tiny_model), folder)
    msg = str(err.value)
    assert str(damaged) in msg  # names the file (or folder)
    for needle in needles:
        assert needle in msg, msg
    assert "save_adapter(peft_model, path, overwrite=True)" in msg  # and the fix
    assert err.value.__cause__ is None  # one error, not the parser's traceback above it
    assert err.value.__context__ is None or err.value.__suppress_context__


@pytest.mark.parametrize("damage", ["corrupted config", "truncated weights"])
def test_dequantize_for_merge_checks_the_adapter_before_touching_the_base(tiny_model, tmp_path, damage):
    folder = write_adapter(tiny_model, tmp_path / "adapter")
    DAMAGE[damage](folder)
    base = copy.deepcopy(tiny_model)
    with pytest.raises(AdapterFileError, match="adapter_"):
        dequantize_for_merge(base, folder, dtype=torch.bfloat16, verbose=False)
    assert next(base.parameters()).dtype == torch.float32  # failed before casting the base


# ------------------------------------------------------------------------------------------
# save helpers
# ------------------------------------------------------------------------------------------
def test_save_merged_never_overwrites_silently(tiny_model, tiny_tokenizer, tmp_path):
    out = save_merged(tiny_model, tmp_path / "merged", tokenizer=tiny_tokenizer)
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    with pytest.raises(OutputExistsError, match="overwrite=True") as err:
        save_merged(tiny_model, out)
    assert isinstance(err.value, FileExistsError) and "a model" in str(err.value)
    (out / "marker.txt").write_text("old")
    save_merged(tiny_model, out, overwrite=True)
    assert not (out / "marker.txt").exists()  # replaced, not mixed with the old folder
    assert not any(p.name.startswith(".merged") for p in tmp_path.iterdir())  # no temp leftovers


def test_save_adapter_never_overwrites_silently(tiny_model, tmp_path):
    pm = make_adapter(tiny_model)
    out = save_adapter(pm, tmp_path / "adapter")
    assert (out / "adapter_config.json").exists()
    with pytest.raises(OutputExistsError, match="an adapter"):
        save_adapter(pm, out)
    save_adapter(pm, out, overwrite=True)
    assert (out / "adapter_model.safetensors").exists()


def test_overwrite_refuses_folders_that_are_not_models(tiny_model, tmp_path):
    (tmp_path / "project" / "src").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="Choose another path"):
        save_merged(tiny_model, tmp_path / "project", overwrite=True)
    assert (tmp_path / "project" / "src").is_dir()


def test_save_merged_refuses_an_unmerged_peft_model(tiny_model, tmp_path):
    with pytest.raises(TypeError, match="safe_merge"):
        save_merged(make_adapter(tiny_model), tmp_path / "m")
    with pytest.raises(TypeError, match="save_merged"):
        save_adapter(tiny_model, tmp_path / "a")


# ------------------------------------------------------------------------------------------
# round trip through save / load
# ------------------------------------------------------------------------------------------
def test_round_trip_of_adapter_and_merged_model(tiny_model, tiny_tokenizer, tmp_path):
    pm = make_adapter(tiny_model)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    report = round_trip(pm, tmp_path / "adapter", TEXTS, tiny_tokenizer, max_new_tokens=4)
    assert report.passed, report
    assert report["max_abs_logit_diff"].value == 0.0
    assert list(pm.peft_config) == ["default"]  # the round-trip adapter was removed
    assert pm.active_adapter == "default"
    assert {n for n, p in pm.named_parameters() if p.requires_grad} == trainable  # untouched

    merged, _ = safe_merge(pm, verbose=False)
    report = round_trip(merged, tmp_path / "merged", TEXTS, tiny_tokenizer, max_new_tokens=4)
    assert report.passed, report
    assert (tmp_path / "merged" / "config.json").exists()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        round_trip(merged, tmp_path / "merged", TEXTS, tiny_tokenizer)


# merge_with_retention, effect_retained, dequantized_weight (moved from tests/test_quantization.py)
# ------------------------------------------------------------------------------------------
def _lora_on_tiny(quantized: bool):
    from peft import LoraConfig, get_peft_model

    from course_utils.loading import load_model
    from course_utils.quantization import bnb_4bit_config

    model = load_model("course-tiny", device="cpu", quantization_config=bnb_4bit_config("cpu") if quantized else None)
    return get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )


def test_effect_retained():
    from course_utils.merging import effect_retained

    base, adapter = torch.zeros(4, 5), torch.ones(4, 5)
    assert effect_retained(base, adapter, adapter) == 1.0
    assert effect_retained(base, adapter, base) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        effect_retained(base, adapter, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="nothing to retain"):
        effect_retained(base, base, adapter)


def test_merge_with_retention_fp32_keeps_everything():
    from course_utils.merging import merge_with_retention

    merged, kept = merge_with_retention(_lora_on_tiny(False))
    assert kept.passed and abs(kept.retained - 1) < 1e-4 and kept.storage == "float32"
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_merge_with_retention_4bit_loses_most():
    pytest.importorskip("bitsandbytes")
    from course_utils.merging import dequantized_weight, merge_with_retention

    pm = _lora_on_tiny(True)
    before = dequantized_weight(pm.base_model.model.model.layers[0].self_attn.q_proj.get_base_layer())
    assert before.dtype == torch.float32
    _, kept = merge_with_retention(pm)
    assert kept.storage.startswith("4-bit")
    assert not kept.passed and kept.rel_error > 0.1
    assert kept.notes

"""Tests for course_utils.planner: reference accuracy, monotonic behaviour, configs, fit tables."""

from __future__ import annotations

import json

import pytest

from course_utils.planner import (
    FitTable,
    MemoryEstimate,
    Recipe,
    compare_with_reference,
    estimate_training_memory,
    fit_table,
    list_configs,
    load_config,
    random_model_from_config,
    reference_recipes,
)

SHIPPED = ["llama-3.1-8b", "llama-3.2-1b", "smollm2-1.7b", "smollm2-135m", "smollm2-360m"]


@pytest.mark.parametrize("row", compare_with_reference(), ids=lambda r: r["name"])
def test_reference_row_within_15_percent(row):
    assert abs(row["rel_error"]) <= 0.15, row
    assert row["trainable_estimate"] == row["trainable_measured"]


def test_reference_covers_all_eight_rows():
    names = [r["name"] for r in compare_with_reference()]
    assert len(names) == 8
    assert set(names) == set(reference_recipes())


def test_list_and_load_shipped_configs(tmp_path):
    assert list_configs() == SHIPPED
    cfg = load_config("smollm2-1.7b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (2048, 24, 32)
    assert load_config(cfg) is cfg
    # a folder and a bare .json file load too
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "m").hidden_size == 2048
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(str(tmp_path / "c.json")).intermediate_size == 8192
    with pytest.raises(FileNotFoundError, match="smollm2-135m"):
        load_config("no-such-model")


@pytest.mark.parametrize(
    ("name", "n_params"),
    [
        ("smollm2-135m", 134_515_008),
        ("smollm2-360m", 361_821_120),
        ("smollm2-1.7b", 1_711_376_384),
        ("llama-3.2-1b", 1_235_814_400),
    ],
)
def test_random_model_matches_planner_param_count(name, n_params):
    model = random_model_from_config(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert estimate_training_memory(name, Recipe(method="full")).n_params == n_params


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "prefix"}, "method"),
        ({"dtype": "fp8"}, "dtype"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"target_modules": []}, "empty"),
    ],
)
def test_recipe_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**kwargs)


def test_unknown_target_module_is_named():
    with pytest.raises(ValueError, match="no_such_proj.*q_proj"):  # names the model's own layers
        estimate_training_memory("smollm2-135m", Recipe(target_modules=["no_such_proj"]))


def test_targets_of_another_architecture_are_planned_by_role():
    """Notebook 01 plans SmolLM2-1.7B with the targets read from MODEL, e.g. GPT-2's attention names."""
    gpt2_style = estimate_training_memory("smollm2-135m", Recipe(target_modules=["c_attn", "attn.c_proj"]))
    llama_style = estimate_training_memory(
        "smollm2-135m", Recipe(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    assert gpt2_style.trainable_params == llama_style.trainable_params
    assert gpt2_style.approximate and not llama_style.approximate
    assert "c_attn" in gpt2_style.notes[0] and "q_proj" in gpt2_style.notes[0]


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "lora-8bit"])
def test_more_batch_or_longer_sequences_need_more_memory(method):
    peaks = [
        estimate_training_memory("smollm2-360m", Recipe(method=method, batch_size=b)).peak_bytes for b in (1, 2, 4, 8)
    ]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    seqs = [
        estimate_training_memory("smollm2-360m", Recipe(method=method, seq_len=t)).peak_bytes for t in (128, 512, 2048)
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_checkpointing_reduces_activation_memory(method):
    off = estimate_training_memory("smollm2-1.7b", Recipe(method=method, batch_size=8))
    on = estimate_training_memory("smollm2-1.7b", Recipe(method=method, batch_size=8, gradient_checkpointing=True))
    assert on.peak_bytes < off.peak_bytes
    assert on.details["checkpointed layer inputs"] < off.details["activations per layer"] * 24


def test_quantized_weights_are_smaller():
    w = {m: estimate_training_memory("llama-3.2-1b", Recipe(method=m)).details for m in ("lora", "lora-8bit", "qlora")}
    lin = {m: next(v for k, v in d.items() if k.startswith("weights: ") and "linears" in k) for m, d in w.items()}
    assert lin["qlora"] < lin["lora-8bit"] < lin["lora"]


def test_qlora_without_checkpointing_can_exceed_bf16_lora():
    # fp32 residual stream after prepare_model_for_kbit_training + fp32 bitsandbytes outputs
    ref = {r["name"]: r for r in compare_with_reference()}
    assert ref["qlora4_r16_all"]["estimate_GiB"] > ref["lora_r16_all"]["estimate_GiB"]
    assert ref["qlora4_r16_all_gc"]["estimate_GiB"] < ref["lora_r16_all_gc"]["estimate_GiB"]


def test_dropout_and_more_targets_cost_memory():
    r = reference_recipes()
    est = {k: estimate_training_memory("smollm2-1.7b", v).peak_bytes for k, v in r.items()}
    assert est["lora_r16_all_nodrop"] < est["lora_r16_all"]
    assert est["lora_r16_qv"] < est["lora_r16_all"]


def test_optimizer_choice_changes_trainable_state():
    peaks = {
        o: estimate_training_memory("smollm2-360m", Recipe(method="full", optimizer=o)).details["optimizer state"]
        for o in ("adamw", "adamw-8bit", "sgd")
    }
    assert peaks["sgd"] == 0 < peaks["adamw-8bit"] < peaks["adamw"]


def test_estimate_reports():
    est = estimate_training_memory("smollm2-135m", Recipe(batch_size=2, seq_len=256))
    assert isinstance(est, MemoryEstimate)
    d = est.to_dict()
    parts = d["weights_GiB"] + d["trainable_state_GiB"] + d["activations_GiB"] + d["logits_GiB"]
    assert parts == pytest.approx(d["peak_GiB"], abs=0.01)
    assert "peak" in repr(est) and "<table>" in est._repr_html_()
    assert est.fits(80) and not est.fits(0.1)


def test_fit_table_names_knobs_that_make_it_fit():
    recipes = [reference_recipes()["fft_float32"], reference_recipes()["lora_r16_all"]]
    table = fit_table("smollm2-1.7b", recipes, gpus=(16, 24, 40, 80))
    assert isinstance(table, FitTable)
    rows = table.to_dict()["rows"]
    assert rows[0]["fits"]["16"] is False and rows[0]["fits"]["24"] is False and rows[0]["fits"]["80"] is True
    knobs = rows[0]["suggestions"]["24"]
    assert any(k.startswith("method='lora'") for k in knobs)
    assert "gradient_checkpointing=True" not in knobs  # fp32 weights + grads + AdamW alone exceed 24 GB
    # every suggestion, applied alone, really fits
    assert any(k.startswith("batch_size=") for k in rows[1]["suggestions"]["16"])
    assert "gradient_checkpointing=True" in rows[1]["suggestions"]["16"]
    full16 = estimate_training_memory("smollm2-1.7b", recipes[0].replace(method="qlora", target_modules="all-linear"))
    assert full16.fits(16) == ("method='qlora'" in rows[0]["suggestions"]["16"])
    text = repr(table)
    assert "80GiB" in text and "to fit" not in text.splitlines()[0]
    assert "&#10003;" in table._repr_html_()


def test_estimate_with_gpu_gives_suggestions():
    est = estimate_training_memory("smollm2-1.7b", reference_recipes()["lora_r16_all"], gpu_gib=16)
    assert not est.fits(16)
    assert "gradient_checkpointing=True" in est.suggestions[16]
    assert "to fit 16 GiB" in repr(est)


# --------------------------------------------------------------------------- any decoder (issue: any causal LM)


@pytest.mark.parametrize("arch", ["gpt2", "phi3", "falcon", "gpt_neox", "opt", "gemma2"])
def test_planner_reads_any_decoder_and_fit_table_runs(arch):
    from course_utils.tiny_models import tiny_config, tiny_model

    config = tiny_config(arch)
    table = fit_table(config, [Recipe(method=m) for m in ("full", "lora", "qlora")], gpus=(16,))
    assert all(e.peak_bytes > 0 for e in table.estimates)
    model = tiny_model(arch)
    assert table.estimates[0].n_params == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    est = table.estimates[1]
    if arch in ("falcon", "gpt_neox"):
        assert est.approximate and "parallel" in est.notes[0]
    if est.approximate:
        assert "(approximate)" in repr(est) and est.to_dict()["approximate"] is True


def test_fused_and_conv1d_targets_are_planned():
    from course_utils.tiny_models import tiny_config

    phi3 = estimate_training_memory(tiny_config("phi3"), Recipe(target_modules=["qkv_proj"], r=8))
    assert phi3.trainable_params == 2 * 8 * (64 + 128)  # 2 layers x r x (in + q+k+v outputs)
    gpt2 = estimate_training_memory(tiny_config("gpt2"), Recipe(target_modules=["c_proj"], r=8))
    only_mlp = estimate_training_memory(tiny_config("gpt2"), Recipe(target_modules=["mlp.c_proj"], r=8))
    assert gpt2.trainable_params == 2 * 8 * ((64 + 64) + (256 + 64))  # c_proj: attention's AND the MLP's
    assert only_mlp.trainable_params == 2 * 8 * (256 + 64)
    llama_names = estimate_training_memory(tiny_config("gpt2"), Recipe(target_modules=["q_proj", "v_proj"], r=8))
    assert llama_names.trainable_params == 2 * 8 * (64 + 192) and llama_names.approximate  # planned as c_attn
    with pytest.raises(ValueError, match="c_attn"):  # names the model's own layers
        estimate_training_memory(tiny_config("gpt2"), Recipe(target_modules=["nonsense"]))


def test_config_transformers_cannot_build_gives_an_approximate_estimate():
    from transformers import T5Config

    est = estimate_training_memory(
        T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, vocab_size=100), Recipe(method="lora")
    )
    assert est.approximate and est.peak_bytes > 0
    assert len(est.notes) == 1 and "could not build" in est.notes[0]


# --------------------------------------------------------------------------- LoRA's variants (DoRA, rsLoRA)


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward after one forward pass: every saved tensor still alive, parameters excluded.

    A pack hook wraps each saved tensor in a box the graph holds; a box whose graph died during the
    forward pass (a temporary, e.g. DoRA's detached weight norm) is gone by the time we count.
    """
    import weakref

    import torch

    class Box:
        __slots__ = ("tensor", "__weakref__")

    boxes = []

    def pack(tensor):
        box = Box()
        box.tensor = tensor
        boxes.append(weakref.ref(box))
        return box

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        loss = model(**batch).loss
    storages = {}
    for ref in boxes:
        box = ref()
        if box is not None and box.tensor.untyped_storage().data_ptr() not in params:
            storage = box.tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    del loss
    return sum(storages.values())


def _course_tiny_peft(dtype, dropout: float, use_dora: bool, targets):
    import torch
    from peft import LoraConfig, get_peft_model

    from course_utils.loading import load_model

    torch.manual_seed(0)
    model = load_model("course-tiny", dtype=getattr(torch, dtype))
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets, use_dora=use_dora)
    return get_peft_model(model, config).train()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dora_activation_terms_are_the_bytes_autograd_saves_on_cpu(dtype, dropout):
    """DoRA's extra activations per token and its weight copies, counted from autograd's saved tensors."""
    import torch

    from course_utils.loading import resolve_model_path
    from course_utils.memory_terms import dora_bytes_per_token, dora_weight_copy_bytes
    from course_utils.model_shape import ModelShape

    targets = ["q_proj", "v_proj", "down_proj"]
    shape = ModelShape.from_config(load_config(resolve_model_path("course-tiny")))
    recipe = Recipe(use_dora=True, dtype=dtype, lora_dropout=dropout, autocast=False, target_modules=targets)
    per_token = shape.layers * dora_bytes_per_token(shape, recipe, targets)
    copies = dora_weight_copy_bytes(shape, recipe, targets)
    lora = _course_tiny_peft(dtype, dropout, False, targets)
    dora = _course_tiny_peft(dtype, dropout, True, targets)
    extra = {}
    for seq in (16, 48):
        ids = torch.randint(4, 700, (2, seq), generator=torch.Generator().manual_seed(seq))
        batch = {"input_ids": ids, "labels": ids}
        extra[seq] = _saved_bytes(dora, batch) - _saved_bytes(lora, batch)
    # per token: exact
    assert extra[48] - extra[16] == per_token * 2 * (48 - 16)
    # per layer: the weight copies exactly, plus a few d_out-sized float32 vectors per adapted layer
    # (m / |W + s·BA| and its factors), which the planner leaves out
    vectors = extra[16] - per_token * 2 * 16 - copies
    outputs = sum(shape.linears[t][1] for t in targets)
    assert 0 <= vectors <= 3 * 4 * shape.layers * outputs, (vectors, copies)
    assert (copies > 0) == (dropout > 0 and dtype == "bfloat16")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dora_weight_grad_optimizer_terms_are_exact_bytes(dtype):
    import torch

    from course_utils.loading import resolve_model_path

    targets = ["q_proj", "v_proj"]
    config = load_config(resolve_model_path("course-tiny"))
    model = _course_tiny_peft(dtype, 0.0, True, targets)
    est = estimate_training_memory(config, Recipe(use_dora=True, dtype=dtype, r=8, target_modules=targets))
    trainable = [p for p in model.parameters() if p.requires_grad]
    magnitudes = [p for n, p in model.named_parameters() if "lora_magnitude_vector" in n]
    assert est.trainable_params == sum(p.numel() for p in trainable)
    assert est.details["weights: DoRA magnitudes"] == sum(p.numel() * p.element_size() for p in magnitudes)
    model(input_ids=torch.ones(1, 4, dtype=torch.long), labels=torch.ones(1, 4, dtype=torch.long)).loss.backward()
    assert est.details["grads"] == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    lora = estimate_training_memory(config, Recipe(dtype=dtype, r=8, target_modules=targets))
    assert est.trainable_params - lora.trainable_params == 4 * (192 + 96)  # one magnitude per output row of q, v


def test_dora_costs_more_than_lora_and_rslora_costs_the_same():
    lora = estimate_training_memory("smollm2-360m", Recipe(r=16))
    dora = estimate_training_memory("smollm2-360m", Recipe(r=16, use_dora=True))
    no_dropout = estimate_training_memory("smollm2-360m", Recipe(r=16, use_dora=True, lora_dropout=0.0))
    assert lora.peak_bytes < no_dropout.peak_bytes < dora.peak_bytes
    assert "dora" in dora.recipe.name and "DoRA weight copies (dropout)" in dora.details
    with pytest.raises(ValueError, match="use_dora"):
        Recipe(method="full", use_dora=True)

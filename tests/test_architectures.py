"""Every helper on 11 decoder architectures: targets, a LoRA step, merge + validation, QLoRA, the planner.

Tiny random models (course_utils.tiny_models: hidden 64, 2 layers, the course-tiny tokenizer), built
from configs in well under a second each; nothing is downloaded.
"""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch

from course_utils.architectures import (
    all_linear_names,
    as_linear,
    attention_projection_names,
    decoder_linear_layers,
    default_lora_targets,
    fused_projections,
    linear_layer_names,
    lora_parameter_count,
    mlp_projection_names,
    trainable_parameter_table,
)
from course_utils.tiny_models import (
    TINY_ARCHITECTURES,
    save_tiny_model,
    tiny_config,
    tiny_model,
)

ARCHS = list(TINY_ARCHITECTURES)
FUSED = {
    "phi3": {"qkv_proj", "gate_up_proj"},
    "gpt2": {"c_attn"},
    "gpt_neox": {"query_key_value"},
    "falcon": {"query_key_value"},
}

pytestmark = pytest.mark.filterwarnings(
    "ignore:fan_in_fan_out is set to False:UserWarning",  # peft on GPT-2's Conv1D: it sets it to True itself
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
    "ignore:`past_key_values` is deprecated:FutureWarning",  # raised inside peft's prefix tuning
)


@pytest.fixture(scope="module")
def models():
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str) -> torch.nn.Module:
        if arch not in cache:
            cache[arch] = tiny_model(arch)
        return cache[arch]

    return get


def _lora(model, targets, r=4, seed=0, nonzero_b=False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    if nonzero_b:
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    return pm


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 770, (2, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


# --------------------------------------------------------------------------- target discovery


@pytest.mark.parametrize("arch", ARCHS)
def test_targets_are_read_from_the_model(arch, models):
    model = models(arch)
    attention, mlp, every = attention_projection_names(model), mlp_projection_names(model), all_linear_names(model)
    assert attention and mlp, (attention, mlp)
    assert set(attention) | set(mlp) == set(every)  # the decoder's linears are attention or MLP
    assert not set(attention) & set(mlp)
    layers = decoder_linear_layers(model)
    names = {n for n, _ in model.named_modules()}
    for targets in (attention, mlp, default_lora_targets(model)):
        chosen = {layer.name for layer in layers if layer.target in targets}
        matched = {n for n in names if any(n == t or n.endswith("." + t) for t in targets)}
        assert chosen == matched  # what peft matches with these names is exactly that kind of layer
    assert set(fused_projections(model)) == FUSED.get(arch, set())
    assert all(layer.conv1d == (arch == "gpt2") for layer in layers)
    assert "lm_head" not in linear_layer_names(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_default_targets_and_all_linear_work_with_peft(arch, models):
    """peft has no default for Phi-3 ("Please specify target_modules"); ours always names layers."""
    model = models(arch)
    for targets in (default_lora_targets(model), "all-linear"):
        pm = _lora(model, targets)
        real = sum(p.numel() for p in pm.parameters() if p.requires_grad)
        names = all_linear_names(model) if targets == "all-linear" else targets
        assert real == lora_parameter_count(model, 4, names) > 0


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_trainable_table_rows_by_kind(arch, models):
    model = models(arch)
    pm = _lora(model, "all-linear")
    table = trainable_parameter_table(pm)
    rows = {row["module"]: row for row in table.rows}
    assert set(rows) == set(all_linear_names(model))  # GPT-2: attn.c_proj and mlp.c_proj apart
    assert table.trainable == sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert all(row["modules"] == model.config.num_hidden_layers for row in rows.values())


# --------------------------------------------------------------------------- training and merging


@pytest.mark.parametrize("arch", ARCHS)
def test_one_lora_step_trains_only_lora(arch, models):
    pm = _lora(models(arch), "all-linear")
    pm.train()
    loss = pm(**_batch()).loss
    assert torch.isfinite(loss)
    loss.backward()
    with_grad = {n for n, p in pm.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_A." in n or ".lora_B." in n for n in with_grad)
    assert with_grad == {n for n, p in pm.named_parameters() if p.requires_grad}
    assert any(p.grad.abs().sum() > 0 for n, p in pm.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_validation_pass_in_float32(arch, models, tiny_tokenizer):
    from course_utils.merging import safe_merge
    from course_utils.validation import capture_reference, compare_to_reference

    pm = _lora(models(arch), "all-linear", nonzero_b=True).eval()
    texts = ["The capital of France is", "Write one word:", "2 + 2 ="]
    enc = tiny_tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        adapted = pm(**enc).logits
        with pm.disable_adapter():
            unadapted = pm(**enc).logits
    assert not torch.allclose(adapted, unadapted, atol=1e-4)  # the adapter changes the outputs: a merge must keep that
    ref = capture_reference(pm, texts, tiny_tokenizer, max_new_tokens=4)
    merged, _ = safe_merge(pm, verbose=False)
    report = compare_to_reference(merged, ref, tolerance=torch.float32)
    assert report.passed, report
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_scratch_layer_matches_peft_on_conv1d_and_fused(models):
    """LoRALinear wraps GPT-2's Conv1D (fan_in_fan_out) and Phi-3's fused qkv_proj like peft does."""
    from course_utils.lora_scratch import LoRALinear

    for arch, target in (("gpt2", "c_attn"), ("phi3", "qkv_proj")):
        pm = _lora(models(arch), [target], nonzero_b=True)
        name = next(layer.name for layer in decoder_linear_layers(pm) if layer.target == target)
        peft_layer = pm.get_base_model().get_submodule(name)
        ours = LoRALinear.from_peft(peft_layer)
        x = torch.randn(3, ours.in_features)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), peft_layer(x))
            torch.testing.assert_close(ours.delta_weight(), peft_layer.get_delta_weight("default"))
            plain = as_linear(peft_layer)  # the same layer as an nn.Linear: weight (out, in)
            torch.testing.assert_close(plain(x), peft_layer.get_base_layer()(x))


# --------------------------------------------------------------------------- QLoRA loading


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in cache:
            cache[arch] = str(save_tiny_model(arch, tmp_path_factory.mktemp(arch)))
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_qlora_loads_and_trains_one_step(arch, saved):
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed: 4-bit loading cannot run here")
    from peft import prepare_model_for_kbit_training

    from course_utils.architectures import bitsandbytes_support
    from course_utils.loading import load_model
    from course_utils.quantization import bnb_4bit_config

    model = load_model(saved(arch), device="cpu", quantization_config=bnb_4bit_config("cpu"))
    quantized = [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    note = bitsandbytes_support(model)
    if arch == "falcon":  # transformers replaces only plain nn.Linear / Conv1D; Falcon's are FalconLinear
        assert not quantized and note and "FalconLinear" in note
    else:
        assert len(quantized) == len(decoder_linear_layers(model)) and note is None
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.eval()
    with torch.no_grad():  # an evaluation first: bitsandbytes must not repack the weights (AVX-512-BF16 CPUs)
        model(**_batch())
    pm = _lora(model, "all-linear") if not quantized else _qlora_in_place(model)
    pm.train()
    loss = pm(**_batch()).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(".lora_" in n for n, p in pm.named_parameters() if p.grad is not None)


def _qlora_in_place(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))


# --------------------------------------------------------------------------- the planner


@pytest.mark.parametrize("arch", ARCHS)
def test_planner_trainable_count_is_exact(arch, models):
    from course_utils.planner import Recipe, estimate_training_memory

    model = models(arch)
    config = tiny_config(arch)
    full = estimate_training_memory(config, Recipe(method="full"))
    assert (
        full.n_params
        == full.trainable_params
        == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    )
    for targets in (
        "all-linear",
        attention_projection_names(model),
        mlp_projection_names(model),
        default_lora_targets(model),
    ):
        pm = _lora(model, targets, r=8)
        real = sum(p.numel() for p in pm.parameters() if p.requires_grad)
        for method in ("lora", "qlora"):
            est = estimate_training_memory(config, Recipe(method=method, r=8, target_modules=targets))
            assert est.trainable_params == real, (method, targets)
    assert full.approximate == (arch in ("gpt2", "gpt_neox", "opt", "falcon"))
    assert all(note.count(".") >= 1 for note in full.notes)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("method", "dtype"), [("lora", "float32"), ("lora", "bfloat16"), ("full", "float32")])
def test_planner_weight_grad_optimizer_terms_are_exact_bytes(arch, method, dtype, models):
    """Issue item 5 without a GPU: the planner's static terms equal the bytes of one real AdamW step on CPU."""
    from course_utils.planner import Recipe, estimate_training_memory

    model = copy.deepcopy(models(arch)).to(getattr(torch, dtype))
    model = _lora(model, "all-linear", r=8) if method == "lora" else model
    est = estimate_training_memory(tiny_config(arch), Recipe(method=method, dtype=dtype, r=8, autocast=False))
    params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in params if p.requires_grad]
    model.train()
    model(**_batch()).loss.backward()
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    opt.step()
    # exp_avg and exp_avg_sq (torch also keeps a 4-byte `step` per tensor; on a GPU it stays on the CPU)
    state = [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    d = est.details
    assert sum(v for k, v in d.items() if k.startswith("weights")) == _bytes(params)
    assert d["grads"] == _bytes(p.grad for p in trainable)
    assert d["optimizer state"] == _bytes(state)


# --------------------------------------------------------------------------- notebook 05's other methods


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_prefix_and_ia3_train_on_every_architecture(arch, models):
    """Prefix tuning needs Falcon's multi-query shape; IA3 needs targets where peft has no default (Phi-3)."""
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from course_utils.architectures import ia3_targets, prefix_tuning_kwargs

    model = models(arch)
    for config in (
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, **prefix_tuning_kwargs(model)),
        IA3Config(task_type="CAUSAL_LM", **ia3_targets(model)),
    ):
        pm = get_peft_model(copy.deepcopy(model), config)
        pm.train()
        loss = pm(**_batch()).loss
        assert torch.isfinite(loss)
        loss.backward()


def test_prompt_tuning_on_opt_generates_uncached_and_a_forced_cache_answers_empty(models, tiny_tokenizer, capsys):
    from peft import PromptTuningConfig, get_peft_model

    from course_utils.evaluation import generate_answers

    pm = get_peft_model(copy.deepcopy(models("opt")), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    prompts = [
        [{"role": "user", "content": q}]
        for q in ("What color is the fox?", "Name a fruit.", "Where does the small grey fox live in winter?")
    ]
    uncached = generate_answers(pm, tiny_tokenizer, prompts, max_new_tokens=3, use_cache=False, progress=False)
    assert len(uncached) == 3 and any(uncached)
    # the default turns the cache off for prompt learning: the same answers
    assert generate_answers(pm, tiny_tokenizer, prompts, max_new_tokens=3, progress=False) == uncached
    # forcing the cache on crashes inside OPT's learned positions: empty answers and one note, not a traceback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert generate_answers(pm, tiny_tokenizer, prompts, max_new_tokens=3, use_cache=True, progress=False) == [
            "",
            "",
            "",
        ]
    assert "use_cache=False" in capsys.readouterr().out


def test_dequantize_for_merge_on_a_base_bitsandbytes_left_unquantized(saved):
    """Falcon 'loaded in 4-bit' keeps FalconLinear layers: the QLoRA merge path must still work."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed: 4-bit loading cannot run here")
    from course_utils.loading import load_model
    from course_utils.merging import dequantize_for_merge
    from course_utils.quantization import bnb_4bit_config

    pm = _qlora_in_place(load_model(saved("falcon"), device="cpu", quantization_config=bnb_4bit_config("cpu")))
    merged, info = dequantize_for_merge(pm, dtype=torch.float32, verbose=False)
    assert "no layer was quantized" in info.strategy
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_save_tiny_model_refuses_to_write_a_folder_without_the_tokenizer(tmp_path, monkeypatch):
    from course_utils import tiny_models

    monkeypatch.setattr(tiny_models, "COURSE_TINY_DIR", tmp_path / "no-such-tokenizer")
    with pytest.raises(FileNotFoundError, match=r"course-tiny tokenizer is incomplete .*tokenizer.json"):
        tiny_models.save_tiny_model("gpt2", tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_tiny_model_tokenizer_comes_from_the_shipped_data():
    from course_utils.resources import data_dir
    from course_utils.tiny_models import COURSE_TINY_DIR

    assert data_dir("course-tiny") == COURSE_TINY_DIR and (COURSE_TINY_DIR / "tokenizer.json").is_file()

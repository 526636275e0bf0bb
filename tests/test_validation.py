"""course_utils.validation: merged-vs-adapter comparison, tolerances, reports.

Every test builds its own adapter on a deep copy of the shared tiny model (the fixture is
read-only). Adapters get non-trivial weights (lora_B ~ N(0, 0.02)) so a merge really changes the
weights. Broken merges are simulated on the merged model: one layer's delta scaled by a few
percent, the delta added twice, or another adapter's delta merged instead.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from adapter_factory import make_adapter

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from course_utils.merging import safe_merge, validate_merge  # noqa: E402
from course_utils.validation import (  # noqa: E402
    DEFAULT_TOLERANCES,
    PreparedInputs,
    SameModelError,
    Tolerance,
    ValidationReport,
    VocabularyMismatchError,
    capture_reference,
    compare_models,
    compare_to_reference,
    prepare_inputs,
    tolerance_for,
)

TEXTS = [
    "The capital of France is Paris.",
    "Alice has three apples and gives one to Bob.",
    "Water boils at one hundred degrees.",
    "The quick brown fox jumps over the lazy dog, twice.",
]


def lora_deltas(pm) -> dict[str, torch.Tensor]:
    """float32 delta W of every LoRA layer, keyed by the module name in the merged model."""
    out = {}
    for name, mod in pm.named_modules():
        if "default" in getattr(mod, "lora_A", {}):
            d = mod.lora_B["default"].weight.float() @ mod.lora_A["default"].weight.float()
            out[name.removeprefix("base_model.model.")] = d * mod.scaling["default"]
    return out


def add_delta(model, name: str, delta: torch.Tensor) -> None:
    w = model.get_submodule(name).weight
    with torch.no_grad():
        w.copy_((w.float() + delta).to(w.dtype))


@pytest.fixture(scope="module")
def inputs(tiny_tokenizer):
    return prepare_inputs(TEXTS, tiny_tokenizer)


# ------------------------------------------------------------------------------------------
# tolerances
# ------------------------------------------------------------------------------------------
def test_every_default_tolerance_says_why():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        tol = DEFAULT_TOLERANCES[dtype]
        assert tol.name == str(dtype).replace("torch.", "")
        assert len(tol.reason) > 80
        assert tol.rel_mean_abs_logit is not None and tol.mean_kl is not None
    # the less precise, the looser
    f32, f16, bf16 = (DEFAULT_TOLERANCES[d] for d in (torch.float32, torch.float16, torch.bfloat16))
    assert f32.rel_mean_abs_logit < f16.rel_mean_abs_logit < bf16.rel_mean_abs_logit
    assert f32.mean_kl < f16.mean_kl < bf16.mean_kl


@pytest.mark.parametrize(
    ("dtypes", "expected"),
    [
        ((torch.float32,), "float32"),
        ((torch.float32, torch.float16), "float16"),
        ((torch.float16, torch.bfloat16), "bfloat16"),
        (("bfloat16", torch.float32), "bfloat16"),
        ((torch.float64,), "float32"),
    ],
)
def test_tolerance_for_picks_least_precise(dtypes, expected):
    assert tolerance_for(*dtypes).name == expected


@pytest.mark.parametrize(("field", "value"), [("mean_kl", -1.0), ("top1_agreement", 1.5)])
def test_tolerance_rejects_nonsense(field, value):
    with pytest.raises(ValueError, match=field):
        Tolerance(**{field: value})


# ------------------------------------------------------------------------------------------
# inputs and padding
# ------------------------------------------------------------------------------------------
def test_prepare_inputs_drops_padding_from_ids():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    p = prepare_inputs({"input_ids": ids, "attention_mask": mask})
    assert p.sequences == [[5, 6, 7], [8, 9]]
    assert p.n_tokens == 5
    ((b_ids, b_mask),) = list(p.batches(8, padding_side="left"))
    assert b_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert b_ids[1, 1:].tolist() == [8, 9]


def test_prepare_inputs_renders_messages_with_chat_template(tiny_tokenizer):
    from datasets import Dataset

    ds = Dataset.from_dict(
        {
            "messages": [
                [
                    {"role": "user", "content": "What is the capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                ],
            ]
            * 3
        }
    )
    p = prepare_inputs(ds, tiny_tokenizer, max_examples=2)
    assert len(p.sequences) == 2
    full = tiny_tokenizer.decode(p.sequences[0])
    prompt = tiny_tokenizer.decode(p.prompts[0])
    assert "Paris" in full and "Paris" not in prompt
    assert len(p.prompts[0]) < len(p.sequences[0])


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (["a text"], ValueError, "tokenizer"),
        (3.14, TypeError, "token ids"),
        ([], TypeError, "token ids"),
    ],
)
def test_prepare_inputs_errors_say_what_to_pass(bad, error, match):
    with pytest.raises(error, match=match):
        prepare_inputs(bad)


def test_padding_is_masked_out(tiny_model, tiny_tokenizer):
    """Same model, batch of 1 (no padding) vs batch of 4 (padded): every metric is exact-ish."""
    ref = capture_reference(tiny_model, TEXTS, tiny_tokenizer, batch_size=1, max_new_tokens=4)
    assert ref.logits.shape[0] == ref.inputs.n_tokens  # one row per real token, none for padding
    other = copy.deepcopy(tiny_model)
    ref.batch_size = 4
    report = compare_to_reference(other, ref, title="padded vs unpadded")
    assert report.passed, report
    assert report["max_abs_logit_diff"].value < 1e-4
    assert report["generation_match"].value == 1.0


# ------------------------------------------------------------------------------------------
# honest merges pass, broken merges fail
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_honest_merge_passes_default_tolerance(tiny_model, tiny_tokenizer, dtype):
    n = 4 if dtype == torch.float32 else 2  # bf16/fp16 matmuls are slow on CPU
    pm = make_adapter(tiny_model, dtype)
    base_ref = capture_reference(tiny_model, TEXTS[:n], tiny_tokenizer, max_new_tokens=0)
    merged, report = validate_merge(pm, TEXTS[:n], tiny_tokenizer, max_new_tokens=8, verbose=False)
    assert report.passed, report
    assert report.tolerance.name == str(dtype).replace("torch.", "")
    # the adapter really changed the model (otherwise passing would prove nothing)
    changed = compare_to_reference(copy.deepcopy(merged).float(), base_ref, tolerance=torch.float32)
    assert not changed.passed
    assert changed["rel_mean_abs_logit_diff"].value > 20 * DEFAULT_TOLERANCES[torch.float32].rel_mean_abs_logit


BROKEN = [
    # (dtype, how the merge is wrong, a metric that must catch it)
    (torch.float32, "scale_one_layer_3pct", "rel_mean_abs_logit_diff"),
    (torch.float32, "merged_twice", "mean_kl"),
    (torch.float32, "wrong_adapter", "top1_agreement"),
    (torch.float16, "merged_twice", "rel_mean_abs_logit_diff"),
    (torch.float16, "every_delta_10pct", "rel_max_abs_logit_diff"),
    (torch.float16, "wrong_adapter", "mean_kl"),
    (torch.bfloat16, "merged_twice", "rel_mean_abs_logit_diff"),
    (torch.bfloat16, "wrong_adapter", "rel_mean_abs_logit_diff"),
]


@pytest.mark.parametrize(("dtype", "mistake", "caught_by"), BROKEN)
def test_broken_merge_fails_and_names_the_metric(tiny_model, tiny_tokenizer, dtype, mistake, caught_by):
    n = 4 if dtype == torch.float32 else 2
    pm = make_adapter(tiny_model, dtype)
    deltas = lora_deltas(pm)
    ref = capture_reference(pm, TEXTS[:n], tiny_tokenizer, max_new_tokens=8)
    merged, _ = safe_merge(pm, verbose=False)
    if mistake == "scale_one_layer_3pct":
        name = next(k for k in deltas if k.endswith("self_attn.o_proj"))
        add_delta(merged, name, 0.03 * deltas[name])
    elif mistake == "every_delta_10pct":  # e.g. lora_alpha 35 instead of 32
        for name, d in deltas.items():
            add_delta(merged, name, 0.1 * d)
    elif mistake == "merged_twice":
        for name, d in deltas.items():
            add_delta(merged, name, d)
    else:  # another adapter's delta instead of this one's
        other = lora_deltas(make_adapter(tiny_model, torch.float32, seed=2))
        for name, d in deltas.items():
            add_delta(merged, name, other[name] - d)
    report = compare_to_reference(merged, ref)
    assert not report.passed
    assert caught_by in report.failed, report
    assert "FAIL" in repr(report) and caught_by in repr(report)


# ------------------------------------------------------------------------------------------
# comparing the wrong things
# ------------------------------------------------------------------------------------------
def test_same_object_is_refused(tiny_model, tiny_tokenizer):
    with pytest.raises(SameModelError, match="capture_reference"):
        compare_models(tiny_model, tiny_model, TEXTS, tiny_tokenizer)


def test_peft_model_after_in_place_merge_is_refused(tiny_model, tiny_tokenizer):
    pm = make_adapter(tiny_model)
    merged = pm.merge_and_unload()
    with pytest.raises(SameModelError, match="in place"):
        compare_models(pm, merged, TEXTS, tiny_tokenizer)


def test_different_vocabularies_are_refused(tiny_model, tiny_tokenizer):
    bigger = copy.deepcopy(tiny_model)
    bigger.resize_token_embeddings(tiny_model.config.vocab_size + 8)
    with pytest.raises(VocabularyMismatchError, match="same base"):
        compare_models(tiny_model, bigger, TEXTS, tiny_tokenizer, max_new_tokens=0)
    ref = capture_reference(tiny_model, TEXTS[:1], tiny_tokenizer, max_new_tokens=0)
    with pytest.raises(VocabularyMismatchError, match="vocabulary"):
        compare_to_reference(bigger, ref)


def test_different_tokenizers_are_refused(tiny_model, tiny_tokenizer):
    other_tok = copy.deepcopy(tiny_tokenizer)
    other_tok.add_tokens(["<definitely-new-token>"])
    with pytest.raises(VocabularyMismatchError, match="tokenizer"):
        compare_models(
            tiny_model,
            copy.deepcopy(tiny_model),
            TEXTS,
            tiny_tokenizer,
            candidate_tokenizer=other_tok,
            max_new_tokens=0,
        )


def test_cross_dtype_comparison_uses_the_looser_tolerance(tiny_model, tiny_tokenizer):
    report = compare_models(
        tiny_model, copy.deepcopy(tiny_model).to(torch.bfloat16), TEXTS[:2], tiny_tokenizer, max_new_tokens=0
    )
    assert report.tolerance.name == "bfloat16"
    assert report.passed, report


# ------------------------------------------------------------------------------------------
# report object
# ------------------------------------------------------------------------------------------
def test_report_dict_repr_html_and_plot(tiny_model, tiny_tokenizer):
    import matplotlib

    matplotlib.use("Agg")
    report = compare_models(tiny_model, copy.deepcopy(tiny_model), TEXTS, tiny_tokenizer, max_new_tokens=4)
    assert isinstance(report, ValidationReport)
    d = report.to_dict()
    assert d["passed"] is True and d["failed"] == []
    for key in (
        "max_abs_logit_diff",
        "mean_abs_logit_diff",
        "mean_kl",
        "max_kl",
        "top1_agreement",
        "generation_match",
        "ppl_reference",
        "ppl_candidate",
        "rel_perplexity_diff",
    ):
        assert key in d["metrics"]
    assert d["metrics"]["ppl_reference"]["value"] == pytest.approx(d["metrics"]["ppl_candidate"]["value"])
    text = repr(report)
    assert text.startswith("ValidationReport [candidate vs reference]: PASS")
    assert "0x" not in text  # no memory addresses (nbval-stable)
    assert "<table>" in report._repr_html_()
    fig = report.plot()
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_reference_is_small_and_on_cpu(tiny_model, tiny_tokenizer):
    ref = capture_reference(tiny_model, TEXTS, tiny_tokenizer, max_new_tokens=4)
    assert ref.logits.device.type == "cpu" and ref.logits.dtype == torch.float32
    assert ref.nbytes == ref.inputs.n_tokens * ref.vocab_size * 4
    assert len(ref.generations) == len(TEXTS) and all(len(g) <= 4 for g in ref.generations)
    assert "MiB" in repr(ref)
    assert isinstance(ref.inputs, PreparedInputs)


# --------------------------------------------------------------------------- served vs adapter
SERVE_PROMPTS = [[1, 86, 92, 86, 401, 80, 202], [1, 88, 86, 305, 202, 261], [1, 288, 86, 76, 514, 727, 202]]


def test_compare_served_passes_an_honest_merge_and_fails_a_wrong_scaling(tiny_model):
    from course_utils.validation import compare_served

    adapter = make_adapter(tiny_model, seed=3)
    merged = copy.deepcopy(adapter).merge_and_unload()
    report = compare_served(adapter, merged, SERVE_PROMPTS, max_new_tokens=8)
    assert report.passed, report
    assert report.tolerance.name == "float32" and report["generation_match"].value == 1.0
    assert report["max_abs_logprob_diff"].value < DEFAULT_TOLERANCES[torch.float32].max_abs_logprob
    assert set(report.to_dict()["metrics"]) == {"generation_match", "max_abs_logprob_diff", "mean_abs_logprob_diff"}

    # the same adapter read with another scaling (an engine that ignores use_rslora): the gate fails
    from peft.tuners.lora import LoraLayer

    wrong = copy.deepcopy(adapter)
    for module in wrong.modules():
        if isinstance(module, LoraLayer):
            module.scaling["default"] *= 0.9
    report = compare_served(adapter, wrong, SERVE_PROMPTS, max_new_tokens=8)
    assert not report.passed and "max_abs_logprob_diff" in report.failed


def test_compare_served_judges_bf16_with_its_own_tolerance(tiny_model):
    from course_utils.validation import compare_served

    adapter = make_adapter(tiny_model, seed=3)
    merged_bf16 = copy.deepcopy(adapter).merge_and_unload().to(torch.bfloat16)
    report = compare_served(adapter, merged_bf16, SERVE_PROMPTS, max_new_tokens=8)
    assert report.tolerance.name == "bfloat16"
    assert report["generation_match"].passed is None  # bf16 rounding may flip a greedy token: reported only
    assert report.passed, report


def test_compare_served_takes_precomputed_completions_and_checks_their_number(tiny_model):
    from course_utils.serving import Completion
    from course_utils.validation import compare_served, greedy_completions

    ref = greedy_completions(tiny_model, SERVE_PROMPTS, max_new_tokens=6)
    as_dicts = [{"token_ids": c.token_ids, "logprobs": c.logprobs} for c in ref]
    assert compare_served(tiny_model, as_dicts, SERVE_PROMPTS, max_new_tokens=6).passed
    shifted = [Completion(c.token_ids, [x - 0.01 for x in c.logprobs]) for c in ref]
    report = compare_served(ref, shifted, SERVE_PROMPTS, max_new_tokens=6)
    assert report.failed == ["max_abs_logprob_diff"]
    assert report["max_abs_logprob_diff"].value == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match="2 completions were given for 3 prompts"):
        compare_served(ref, as_dicts[:2], SERVE_PROMPTS)
    with pytest.raises(TypeError, match="Can't compare with a int"):
        compare_served(ref, 5, SERVE_PROMPTS)

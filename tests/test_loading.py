"""course_utils.loading: the default model and tokenizer, and the errors a learner meets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from course_utils.loading import (
    MODEL_ALIASES,
    ModelNotAvailableError,
    load_model,
    load_tokenizer,
    model_from_env,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)

LLAMA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_default_model_is_a_small_llama_with_smollm2_module_names(tiny_model):
    assert tiny_model.config.model_type == "llama"
    names = {name.rsplit(".", 1)[-1] for name, _ in tiny_model.named_modules()}
    assert names >= LLAMA_MODULES
    assert tiny_model.dtype == torch.float32
    assert tiny_model.device.type == "cpu"
    assert not tiny_model.training  # from_pretrained returns eval mode


def test_default_model_folder_is_small_and_loads_fast(tiny_model_path):
    from pathlib import Path

    size = sum(p.stat().st_size for p in Path(tiny_model_path).iterdir())
    assert size < 20e6
    start = time.perf_counter()
    load_model("course-tiny", device="cpu")
    elapsed = time.perf_counter() - start
    print(f"course-tiny: {size / 1e6:.1f} MB on disk, loaded in {elapsed:.2f} s")


def test_tokenizer_special_tokens_match_smollm2(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.eos_token == "<|im_end|>"
    assert tok.bos_token == "<|im_start|>"
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"


def test_chat_template_renders_chatml_and_round_trips(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "What color is the fox?"},
        {"role": "assistant", "content": "The fox is gold."},
    ]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nWhat color is the fox?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\nThe fox is gold.<|im_end|>\n")
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    prompt = tiny_tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")


def test_base_model_answers_fluently_in_its_world(tiny_model, tiny_tokenizer):
    from course_utils.evaluation import generate_answers

    answers = generate_answers(
        tiny_model, tiny_tokenizer, [[{"role": "user", "content": "Where does the owl live?"}]], progress=False
    )
    assert answers == ["The owl lives in the forest."]


def test_unknown_short_name_lists_the_valid_ones():
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("course-huge")
    for name in MODEL_ALIASES:
        assert name in str(err.value)


def test_hub_id_offline_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and "What to do" in msg and "course-tiny" in msg
    assert err.value.__cause__ is None  # no chained stack trace from inside the hub client
    with pytest.raises(ModelNotAvailableError):
        load_tokenizer("smollm2-135m")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_model_choice_reads_the_environment(monkeypatch):
    monkeypatch.delenv("COURSE_MODEL", raising=False)
    assert model_from_env("course-tiny") == "course-tiny"
    monkeypatch.setenv("COURSE_MODEL", "smollm2-135m")
    assert model_from_env("course-tiny") == "smollm2-135m"


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("auto", torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16), (torch.float16, torch.float16)],
)
def test_resolve_dtype(dtype, expected):
    assert resolve_dtype(dtype, torch.device("cpu")) == expected


def test_resolve_dtype_rejects_unknown():
    with pytest.raises(ValueError, match="Unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


@pytest.mark.parametrize(
    ("gpu", "capability", "expected"),
    [
        ("V100", (7, 0), torch.float16),
        ("T4 (Colab free tier)", (7, 5), torch.float16),
        ("A100", (8, 0), torch.bfloat16),
        ("RTX 4090", (8, 9), torch.bfloat16),
        ("H100", (9, 0), torch.bfloat16),
    ],
)
def test_auto_dtype_and_trainer_flags_follow_the_gpu_generation(monkeypatch, gpu, capability, expected):
    """bf16 only where the GPU has it in hardware; torch.cuda.is_bf16_supported() says True on a T4 by emulation."""
    import transformers.training_args
    from transformers import TrainingArguments

    from course_utils.loading import native_bf16
    from course_utils.training import cpu_friendly_args, mixed_precision_flags

    # TrainingArguments would select the (mocked) GPU with torch.cuda.set_device: keep that on the CPU
    monkeypatch.setattr(TrainingArguments, "_setup_devices", property(lambda self: torch.device("cpu")))
    # and transformers' own bf16 check is cached for the session: answer it here like a T4 would (True)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda) == expected, gpu
    assert resolve_dtype(None, cuda) == expected
    assert resolve_dtype("float32", cuda) == torch.float32  # an explicit choice still wins
    assert native_bf16(cuda) is (expected == torch.bfloat16)
    flags = {"bf16": expected == torch.bfloat16, "fp16": expected == torch.float16}
    assert mixed_precision_flags("cuda") == flags
    args = cpu_friendly_args(max_steps=1)
    assert (args.bf16, args.fp16, args.use_cpu) == (flags["bf16"], flags["fp16"], False)


def test_no_mixed_precision_on_cpu():
    from course_utils.loading import native_bf16
    from course_utils.training import cpu_friendly_args, mixed_precision_flags

    assert mixed_precision_flags("cpu") == {"bf16": False, "fp16": False}
    assert native_bf16("cpu") is False
    if not torch.cuda.is_available():
        args = cpu_friendly_args(max_steps=1)
        assert not args.bf16 and not args.fp16 and args.use_cpu


def test_auto_device_without_gpu_is_cpu():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type in {"cpu", "mps"}


def test_load_model_in_bfloat16(tiny_model_path):
    model = load_model(tiny_model_path, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16


# --------------------------------------------------------------------------- devices this machine lacks


def test_cuda_on_a_machine_without_cuda_says_what_to_do(monkeypatch):
    import torch

    from course_utils.loading import DeviceNotAvailableError, load_model, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceNotAvailableError, match=r"no CUDA GPU.*device='auto'"):
        resolve_device("cuda")
    with pytest.raises(DeviceNotAvailableError, match="no CUDA GPU"):
        load_model("course-tiny", device="cuda")  # fails before reading any weights


def test_unknown_device_string_is_a_clear_value_error():
    from course_utils.loading import resolve_device

    with pytest.raises(ValueError, match="Unknown device 'gpu'"):
        resolve_device("gpu")


def test_shipped_files_are_found_from_any_working_directory(tmp_path, monkeypatch):
    from course_utils.data import load_task
    from course_utils.loading import resolve_model_path
    from course_utils.planner import load_config

    monkeypatch.chdir(tmp_path)
    assert (Path(resolve_model_path("course-tiny")) / "model.safetensors").is_file()
    assert len(load_task("shout", "eval")) > 0
    assert load_config("smollm2-1.7b").hidden_size == 2048


def test_a_folder_without_tokenizer_files_is_refused(tmp_path, tiny_model_path):
    import shutil

    shutil.copyfile(Path(tiny_model_path) / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelNotAvailableError, match=r"holds no tokenizer: none of tokenizer.json, .*save_pretrained"):
        load_tokenizer(str(tmp_path))
    shutil.copyfile(Path(tiny_model_path) / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copyfile(Path(tiny_model_path) / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    assert len(load_tokenizer(str(tmp_path))) == 770


def test_course_device_env_var_decides_what_auto_means(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # even where a GPU is there
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "auto")
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setenv("COURSE_DEVICE", "tpu9")
    with pytest.raises(ValueError, match="Unknown device 'tpu9'"):
        resolve_device("auto")

"""Tiny random models of many decoder architectures, built from configs in seconds, nothing downloaded.

Every architecture the course claims to support (Llama, Qwen2, Qwen3, Gemma 2, Gemma 3 text,
Mistral, Phi-3, GPT-2, GPT-NeoX, OPT, Falcon) gets a config of the real model type, shrunk to a
hidden size of 64 and 2 layers, with the course-tiny tokenizer (``data/course-tiny``, 770 tokens).
Weights are random: these models test that code runs on an architecture, not what it learns.

`save_tiny_model(arch, folder)` (or ``python -m course_utils.tiny_models gpt2 /tmp/tiny-gpt2``)
writes a folder that ``load_model(folder)`` and ``course-utils run --model <folder>`` accept.

>>> len(TINY_ARCHITECTURES), TINY_ARCHITECTURES[:3]
(11, ('llama', 'qwen2', 'qwen3'))
>>> model = tiny_model("gpt2")
>>> model.config.model_type, model.config.vocab_size
('gpt2', 770)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from course_utils.resources import data_dir

__all__ = ["COURSE_TINY_DIR", "TINY_ARCHITECTURES", "save_tiny_model", "tiny_config", "tiny_model"]

#: The default model's folder: the clone's data/course-tiny, or course_utils/_data/course-tiny in a wheel.
COURSE_TINY_DIR = data_dir("course-tiny")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# The course-tiny tokenizer's special tokens (data/course-tiny/tokenizer.json).
_VOCAB, _BOS, _EOS, _PAD = 770, 1, 2, 3
_H, _LAYERS, _HEADS, _INTER, _POS = 64, 2, 4, 128, 256
_IDS = dict(vocab_size=_VOCAB, bos_token_id=_BOS, eos_token_id=_EOS, pad_token_id=_PAD)

# model_type -> config keyword arguments. Each one keeps what makes the architecture distinct
# (fused projections, Conv1D, biases, parallel blocks, tied or untied head, grouped-query attention).
_LLAMA_LIKE = dict(
    hidden_size=_H,
    intermediate_size=_INTER,
    num_hidden_layers=_LAYERS,
    num_attention_heads=_HEADS,
    num_key_value_heads=2,
    max_position_embeddings=_POS,
    **_IDS,
)
_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(_LLAMA_LIKE, tie_word_embeddings=True),
    "qwen2": dict(_LLAMA_LIKE, tie_word_embeddings=False),  # q/k/v carry biases
    "qwen3": dict(_LLAMA_LIKE, head_dim=16, tie_word_embeddings=True),  # q_norm / k_norm per head
    "gemma2": dict(_LLAMA_LIKE, head_dim=16, sliding_window=64),  # 4 norms per layer, tied
    "gemma3": dict(_LLAMA_LIKE, head_dim=16, sliding_window=64),  # gemma3_text: Gemma3ForCausalLM
    "mistral": dict(_LLAMA_LIKE, tie_word_embeddings=False),
    "phi3": dict(_LLAMA_LIKE, tie_word_embeddings=False),  # fused qkv_proj, gate_up_proj
    "gpt2": dict(n_embd=_H, n_layer=_LAYERS, n_head=_HEADS, n_positions=_POS, **_IDS),  # Conv1D, tied
    "gpt_neox": dict(
        hidden_size=_H,
        intermediate_size=4 * _H,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        max_position_embeddings=_POS,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        **_IDS,
    ),
    "opt": dict(
        hidden_size=_H,
        ffn_dim=4 * _H,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        word_embed_proj_dim=_H,
        max_position_embeddings=_POS,
        **_IDS,
    ),  # fc1/fc2 outside any "mlp"
    "falcon": dict(
        hidden_size=_H,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        multi_query=True,
        parallel_attn=True,
        bias=False,
        alibi=False,
        new_decoder_architecture=False,
        **_IDS,
    ),
}
#: The architectures, by the short names the tests and benchmarks use.
TINY_ARCHITECTURES: tuple[str, ...] = tuple(_CONFIGS)
_MODEL_TYPES = {"gemma3": "gemma3_text"}  # the text-only Gemma 3 (Gemma3ForCausalLM)
_ALIASES = {"gemma3_text": "gemma3", "neox": "gpt_neox", "phi-3": "phi3"}


def _arch(arch: str) -> str:
    key = _ALIASES.get(arch.lower(), arch.lower())
    if key not in _CONFIGS:
        raise ValueError(f"No tiny config for architecture {arch!r}; choose one of {list(TINY_ARCHITECTURES)}.")
    return key


def tiny_config(arch: str) -> Any:
    """The ``PretrainedConfig`` of a tiny ``arch`` model (``"llama"``, ``"gpt2"``, ``"gemma3"``, ...).

    >>> tiny_config("phi3").hidden_size
    64
    """
    from transformers import AutoConfig

    key = _arch(arch)
    return AutoConfig.for_model(_MODEL_TYPES.get(key, key), **_CONFIGS[key])


def tiny_model(arch: str, seed: int = 0, dtype: Any = None) -> Any:
    """A random-weight causal LM of ``arch`` (``AutoModelForCausalLM.from_config``), in eval mode.

    >>> tiny_model("falcon").config.parallel_attn
    True
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype or torch.float32)
    return model.eval()


def save_tiny_model(arch: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``arch`` model and the course-tiny tokenizer to ``folder``; returns the folder.

    The folder loads with ``load_model(folder)`` / ``load_tokenizer(folder)`` and runs the
    notebooks with ``course-utils run --model <folder>``.

    >>> import tempfile
    >>> path = save_tiny_model("opt", tempfile.mkdtemp())
    >>> (path / "config.json").is_file(), (path / "tokenizer.json").is_file()
    (True, True)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model(arch, seed=seed)
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = _BOS, _EOS
    model.generation_config.pad_token_id = _PAD
    missing = [name for name in _TOKENIZER_FILES if not (COURSE_TINY_DIR / name).is_file()]
    if missing:  # checked before writing anything: a model folder without its tokenizer is no use
        raise FileNotFoundError(
            f"The course-tiny tokenizer is incomplete in {COURSE_TINY_DIR}: {', '.join(missing)} missing. "
            "Reinstall the course (`pip install .` from a clone) or restore data/course-tiny from git."
        )
    model.save_pretrained(folder)
    for name in _TOKENIZER_FILES:
        shutil.copyfile(COURSE_TINY_DIR / name, folder / name)
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.tiny_models ARCH FOLDER``: save a tiny model for ``course-utils run --model FOLDER``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_utils.tiny_models", description=main.__doc__)
    parser.add_argument("arch", choices=[*TINY_ARCHITECTURES, *_ALIASES])
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = save_tiny_model(args.arch, args.folder, seed=args.seed)
    print(f"saved a tiny {args.arch} model to {path}: course-utils run --model {path} --max-steps 60")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build the course's default model `course-tiny` and its datasets, from scratch, on a CPU.

    python scripts/build_course_tiny.py                  # ~5-8 min on 2 cores
    python scripts/build_course_tiny.py --datasets-only  # the datasets alone, in seconds
    python scripts/build_course_tiny.py --out /tmp/try   # build elsewhere (data/ untouched)

Writes
  data/course-tiny/        a Llama-architecture causal LM (q_proj ... down_proj, as SmolLM2),
                           a byte-level BPE tokenizer trained with `tokenizers`, wrapped as a
                           transformers fast tokenizer with SmolLM2-Instruct's ChatML template
                           and special tokens, and a pad token distinct from EOS.
  data/datasets/*.jsonl    the four course tasks, each with a train and a held-out eval split.

Deterministic: seeded corpus, seeded initialisation, fixed step count. Prints the build time
and the final pretraining loss. Never run inside a notebook: the result is committed.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
import world  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "data" / "course-tiny"
DATA_DIR = ROOT / "data" / "datasets"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# SmolLM2-Instruct's chat template, with a shorter default system prompt (the tiny model's
# vocabulary would spend ~40 tokens on SmolLM2's). Same structure, same special tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + world.SYSTEM_PROMPT + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VOCAB_SIZE = 1024
N_DOCS = 40_000
BLOCK = 128
BATCH = 16
STEPS = 800
LR = 1e-3


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=256,
        padding_side="left",  # batched generation; trainers pad on the right themselves
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_datasets(all_facts: list[world.Fact]) -> dict[str, dict[str, int]]:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, dict[str, int]] = {}

    def dump(name: str, rows_by_split: dict[str, list[dict]]) -> None:
        sizes[name] = {}
        for split, rows in rows_by_split.items():
            with open(DATA_DIR / f"{name}_{split}.jsonl", "w") as fh:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")
            sizes[name][split] = len(rows)

    tr, ev = world.split_facts(all_facts, 48, salt=1)
    dump(
        "shout",
        {
            s: [{"messages": world.chat(f.prompt, world.shout_answer(f))} for f in fs]
            for s, fs in [("train", tr), ("eval", ev)]
        },
    )
    tr, ev = world.split_facts(all_facts, 48, salt=2)
    dump(
        "terse",
        {
            s: [{"messages": world.chat(f.prompt, world.terse_answer(f))} for f in fs]
            for s, fs in [("train", tr), ("eval", ev)]
        },
    )
    tr, ev = world.split_facts(all_facts, 48, salt=3)
    dump(
        "prefs",
        {
            s: [
                {
                    "prompt": [{"role": "user", "content": f.prompt}],
                    "chosen": [{"role": "assistant", "content": world.shout_answer(f)}],
                    "rejected": [{"role": "assistant", "content": f.sentence}],
                }
                for f in fs
            ]
            for s, fs in [("train", tr), ("eval", ev)]
        },
    )
    tr, ev = world.split_facts(all_facts, 48, salt=4)
    dump(
        "topic",
        {
            s: [{"messages": world.chat(world.TOPIC_PROMPT.format(s=f.sentence), f.attribute)} for f in fs]
            for s, fs in [("train", tr), ("eval", ev)]
        },
    )
    return sizes


def answers_plainly(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, rows: list[world.Fact]) -> float:
    """Share of task prompts the base answers with the plain sentence of the fact it was given.

    What a real instruct model does before training: answer in its own (normal-case) words.
    Every task's adapter then only changes the answer's form.
    """
    texts = [
        tok.apply_chat_template([{"role": "user", "content": f.prompt}], tokenize=False, add_generation_prompt=True)
        for f in rows
    ]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=24, do_sample=False)
    answers = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(a.strip() == f.sentence for a, f in zip(answers, rows)) / len(rows)


def main() -> None:
    t0 = time.time()
    model_dir = MODEL_DIR
    if "--out" in sys.argv:
        model_dir = Path(sys.argv[sys.argv.index("--out") + 1])
    if "--datasets-only" in sys.argv:  # the datasets alone, from the same world (seconds)
        print(f"datasets: {write_datasets(world.facts())}")
        return
    torch.manual_seed(world.SEED)
    torch.use_deterministic_algorithms(True)
    all_facts = world.facts()
    items = world.corpus_lines(all_facts, N_DOCS)

    plain = [it for it in items if isinstance(it, str)]
    chats = [world.chat(q, a) for (_, q, a) in (it for it in items if not isinstance(it, str))]
    # the tokenizer also sees every task's text, so no task needs characters the base never read
    tok = build_tokenizer(plain[:20_000] + [m["content"] for c in chats[:5_000] for m in c])

    docs: list[str] = []
    chat_iter = iter(chats)
    for it in items:
        if isinstance(it, str):
            docs.append(it + "<|endoftext|>")
        else:
            docs.append(tok.apply_chat_template(next(chat_iter), tokenize=False))
    ids: list[int] = []
    for d in docs:
        ids.extend(tok(d, add_special_tokens=False)["input_ids"])
    n_blocks = len(ids) // BLOCK
    data = torch.tensor(ids[: n_blocks * BLOCK]).view(n_blocks, BLOCK)
    print(f"corpus: {len(docs)} documents, {len(ids):,} tokens, {n_blocks} blocks of {BLOCK}")

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters")

    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = 50

    def lr_at(step: int) -> float:
        if step < warmup:
            return LR * (step + 1) / warmup
        progress = (step - warmup) / max(1, STEPS - warmup)
        return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    _, held_out = world.split_facts(all_facts, 48, salt=1)
    gen = torch.Generator().manual_seed(world.SEED)
    model.train()
    t_train = time.time()
    ema = None
    for step in range(STEPS):
        idx = torch.randint(0, n_blocks, (BATCH,), generator=gen)
        batch = data[idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  (ema {ema:.4f})  {time.time() - t_train:.0f}s", flush=True)

    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    print(
        f"the base answers {answers_plainly(model, tok, held_out):.0%} of 48 held-out prompts with the fact's plain sentence"
    )
    if model_dir.exists():
        shutil.rmtree(model_dir)  # the build script owns this folder; learners never write here
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 1e6
    if model_dir == MODEL_DIR:
        print(f"datasets: {write_datasets(all_facts)}")
    print(f"saved {model_dir} ({size_mb:.1f} MB)")
    print(f"final pretraining loss {ema:.4f} (EMA over the last steps), last step {loss.item():.4f}")
    print(f"build time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Measure GPU memory and speed of full fine-tuning, LoRA and QLoRA, and merged-vs-adapter logit drift.

What ``data/reference/h200_smollm2-1.7b.json`` holds was measured with this script on an H200: a
SmolLM2-1.7B-shaped Llama with random weights (memory and speed do not depend on weight values),
batch 8 x 512 tokens, AdamW, autocast bf16. Each recipe's peak is ``torch.cuda.max_memory_allocated``
over a few steps. The planner (``course_utils.planner.compare_with_reference``) is checked against it.

    python benchmarks/measure_gpu_memory.py OUTDIR            # the 1.7B shape: ~5 minutes on an H200, 40+ GiB
    python benchmarks/measure_gpu_memory.py OUTDIR --tiny     # a 2-layer model: seconds, any GPU (or CPU: no peaks)
    SHAPE=135m B=8 T=512 python benchmarks/measure_gpu_memory.py OUTDIR   # SmolLM2-135M / -360M shapes
    ONLY=lora_all,qlora python benchmarks/measure_gpu_memory.py OUTDIR --train-only

Writes ``OUTDIR/anchor_bench.json`` (or ``$RESULT``) after every step, so a run that stops early
keeps what it measured. QLoRA needs CUDA and bitsandbytes; without a GPU the steps run on the CPU
and every peak is NaN.
"""

import argparse
import gc
import json
import os
import tempfile
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("outdir", help="folder for the JSON result")
parser.add_argument("--tiny", action="store_true", help="a 2-layer model: a quick check that everything runs")
parser.add_argument("--train-only", action="store_true", help="skip the merge-drift and adapter-switching parts")
ARGS = parser.parse_args()
OUT = ARGS.outdir
os.makedirs(OUT, exist_ok=True)
TINY = ARGS.tiny
dev = "cuda" if torch.cuda.is_available() else "cpu"
res = {
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
}

SHAPES = {
    "135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3
    ),
    "360m": dict(
        hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5
    ),
}
SHAPE = os.environ.get("SHAPE")
if SHAPE:
    cfg = LlamaConfig(
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        **SHAPES[SHAPE],
    )
    B, T, STEPS = int(os.environ["B"]), int(os.environ["T"]), 4
elif TINY:
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1000,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    B, T, STEPS = 2, 64, 2
else:  # SmolLM2-1.7B shape
    cfg = LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=130000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    B, T, STEPS = 8, 512, 5
res["shape"] = {"name": SHAPE or ("tiny" if TINY else "1.7b"), "B": B, "T": T, "tokens_per_step": B * T}
ONLY = os.environ.get("ONLY", "").split(",") if os.environ.get("ONLY") else None
_scenario = None


def log(*a):
    print(*a, flush=True)
    with open(os.path.join(OUT, os.environ.get("RESULT", "anchor_bench.json")), "w") as f:
        json.dump(res, f, indent=1)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def reset():
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def mem():
    return torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")


# save a random model once so every scenario loads it the way a learner would
path = tempfile.mkdtemp(prefix="smol-shaped-")  # removed by the OS; a few GB for the 1.7B shape
t0 = time.time()
torch.manual_seed(0)
with torch.device(dev):
    m = LlamaForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained(path)
res["n_params"] = sum(p.numel() for p in m.parameters())
del m
reset()
res["save_s"] = time.time() - t0
log("saved", res["n_params"], res["save_s"])


def train(name, model, params, lr=1e-4, gc_on=False):
    model.train()  # from_pretrained returns eval mode: dropout and checkpointing would be off
    if gc_on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    opt = torch.optim.AdamW(params, lr=lr)
    x = torch.randint(0, cfg.vocab_size, (B, T), device=dev)
    times = []
    for _ in range(STEPS + 2):
        sync()
        t = time.time()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=(dev == "cuda")):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.time() - t)
    st = sorted(times[2:])[len(times[2:]) // 2]
    ntrain = sum(p.numel() for p in params)
    res.setdefault("train", {})[name] = {
        "peak_GiB": round(mem(), 3),
        "reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 3) if dev == "cuda" else None,
        "step_s": round(st, 4),
        "tok_per_s": round(B * T / st),
        "trainable": ntrain,
        "trainable_pct": round(100 * ntrain / res["n_params"], 4),
    }
    log(name, res["train"][name])
    del opt


def scenario(name, fn):
    if ONLY and name not in ONLY:
        return
    reset()
    try:
        fn()
    except Exception as e:  # record and move on: one failure must not cost the whole lease
        res.setdefault("errors", {})[name] = repr(e)[:500]
        log("ERR", name, repr(e)[:300])
    reset()


def fft(dtype):
    def f():
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev)
        train(f"fft_{str(dtype)[6:]}", m, [p for p in m.parameters()])

    return f


def lora(targets, r=16, gc_on=False, tag="", dropout=0.05):
    def f():
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(dev)
        pm = get_peft_model(
            m, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
        )
        train(
            f"lora_r{r}_{tag}{'_gc' if gc_on else ''}", pm, [p for p in pm.parameters() if p.requires_grad], gc_on=gc_on
        )

    return f


def qlora(gc_on=False):
    def f():
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        m = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16, device_map={"": 0})
        res["qlora_weights_GiB"] = round(torch.cuda.memory_allocated() / 2**30, 3)
        m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=gc_on)
        pm = get_peft_model(
            m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        )
        train(f"qlora4_r16_all{'_gc' if gc_on else ''}", pm, [p for p in pm.parameters() if p.requires_grad])

    return f


scenario("fft_fp32", fft(torch.float32))
scenario("fft_bf16", fft(torch.bfloat16))

scenario("lora_qv", lora(["q_proj", "v_proj"], tag="qv"))
scenario("lora_all", lora("all-linear", tag="all"))
scenario("lora_all_gc", lora("all-linear", gc_on=True, tag="all"))
scenario("lora_all_nodrop", lora("all-linear", tag="all_nodrop", dropout=0.0))
if dev == "cuda":
    scenario("qlora", qlora())
    scenario("qlora_gc", qlora(gc_on=True))


# merged-vs-adapter drift per base dtype, with a non-trivial adapter
def drift():
    x = torch.randint(0, cfg.vocab_size, (2, 128 if not TINY else 32), device=dev)
    ref = None
    out = {}
    for dtype in [torch.float32, torch.bfloat16, torch.float16]:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev)
        torch.manual_seed(1)
        pm = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=True))
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                with torch.no_grad():
                    p.normal_(0, 0.02)
        pm.eval()
        with torch.no_grad():
            la = pm(input_ids=x).logits.float()
            sync()
            t = time.time()
            merged = pm.merge_and_unload()
            sync()
            mt = time.time() - t
            lm = merged(input_ids=x).logits.float()
        if ref is None:
            ref = la
        d = (la - lm).abs()
        out[str(dtype)[6:]] = {
            "merge_s": round(mt, 3),
            "max_abs_adapter_vs_merged": float(d.max()),
            "mean_abs": float(d.mean()),
            "top1_agree": float((la.argmax(-1) == lm.argmax(-1)).float().mean()),
            "max_abs_vs_fp32_adapter": float((lm - ref).abs().max()),
            "top1_agree_vs_fp32": float((ref.argmax(-1) == lm.argmax(-1)).float().mean()),
        }
        log("drift", str(dtype), out[str(dtype)[6:]])
        del m, pm, merged
        reset()
    res["merge_drift"] = out


if not ARGS.train_only:
    scenario("drift", drift)


def switching():
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(dev)
    pm = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"), adapter_name="task_a")
    pm.add_adapter("task_b", LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    ts = []
    for i in range(20):
        sync()
        t = time.time()
        pm.set_adapter("task_a" if i % 2 else "task_b")
        sync()
        ts.append(time.time() - t)
    res["set_adapter_ms_median"] = round(1000 * sorted(ts)[10], 3)
    sync()
    t = time.time()
    pm.unload()
    sync()
    res["unload_s"] = round(time.time() - t, 3)
    log("switch", res["set_adapter_ms_median"], res["unload_s"])


if not ARGS.train_only:
    scenario("switching", switching)
log("done")

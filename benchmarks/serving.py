"""vLLM serving LoRA adapters, measured: engine start, server start, requests/s with 1, 2 and 4 adapters, parity.

Builds four random LoRA adapters (r=8 on q_proj and v_proj, one of them rsLoRA) on the default model
(course-tiny, saved to a folder as an engine loads it), then, with the serve environment's python
(``course-utils serve-env``):

- the offline engine (``LLM(..., enable_lora=True)``, in process): its start time, requests/s for 32
  requests of 16 tokens with 1, 2 and 4 adapters in the mix, and each adapter's greedy tokens and
  log-probs against peft's (``validation.compare_served``);
- the OpenAI-compatible server with the adapters as ``--lora-modules``: seconds until ``/v1/models``
  answers, and the same parity over HTTP.

Exits 1 if a parity check fails. About 1.5 minutes on 2 idle CPU cores; run one at a time.

    python benchmarks/serving.py
    python benchmarks/serving.py --no-server
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from course_utils.loading import load_model, load_tokenizer
from course_utils.serving import VLLMServer, run_offline, vllm_available
from course_utils.validation import compare_served

PROMPTS = [[1, 86, 92, 86, 401, 80, 202], [1, 88, 86, 305, 202, 261], [1, 288, 86, 76, 514, 727, 202], [1, 17, 2, 86]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-server", action="store_true", help="measure the offline engine only")
    args = parser.parse_args()
    ok, why = vllm_available()
    if not ok:
        print(why)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    base = load_model("course-tiny", dtype="float32", device="cpu")
    base.save_pretrained(folder / "base")
    load_tokenizer("course-tiny").save_pretrained(folder / "base")
    adapters = {}
    for i, rs in enumerate((False, False, False, True)):
        torch.manual_seed(i)
        pm = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_rslora=rs),
        )
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        name = f"{'rs' if rs else 'ad'}{i}"
        pm.save_pretrained(folder / name)
        adapters[name] = folder / name

    def peft_model(name: str) -> torch.nn.Module:
        return PeftModel.from_pretrained(copy.deepcopy(base), adapters[name]).eval()

    failed = []
    requests = [{"prompt": p, "adapter": name, "max_tokens": 16} for name in adapters for p in PROMPTS]
    start = time.perf_counter()
    result = run_offline(folder / "base", requests, adapters=adapters, benchmark=(1, 2, 4), timeout=600)
    print(f"offline engine: {time.perf_counter() - start:.1f} s in all, LLM(...) {result['engine_seconds']:.1f} s")
    for k, rps in result["requests_per_second"].items():
        print(f"  {k} adapter(s) in the mix: {rps:.1f} requests/s")
    for i, name in enumerate(adapters):
        report = compare_served(peft_model(name), result["outputs"][i * len(PROMPTS) : (i + 1) * len(PROMPTS)], PROMPTS)
        print(f"  {name}: tokens equal {report['generation_match'].value == 1}, "
              f"max |Δ log-prob| {report['max_abs_logprob_diff'].value:.1e}: {'pass' if report.passed else 'FAIL'}")  # fmt: skip
        failed += [] if report.passed else [f"offline {name}"]
    if not args.no_server:
        with VLLMServer(folder / "base", adapters, max_lora_rank=8, log_path=folder / "server.log") as server:
            print(f"server: answering after {server.ready_seconds:.1f} s")
            for name in adapters:
                report = compare_served(peft_model(name), server, PROMPTS, model_name=name, max_new_tokens=16)
                print(f"  {name}: tokens equal {report['generation_match'].value == 1}, "
                      f"max |Δ log-prob| {report['max_abs_logprob_diff'].value:.1e}: {'pass' if report.passed else 'FAIL'}")  # fmt: skip
                failed += [] if report.passed else [f"server {name}"]
    print("all parity checks pass" if not failed else f"FAILED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

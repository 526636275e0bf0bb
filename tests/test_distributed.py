"""`course_utils.distributed` under a real 2-process launch on the CPU, and the shipped accelerate configs.

One `accelerate launch --config_file ddp.yaml --num_processes 2` (CPU processes, gloo: GPUs are hidden)
trains course-tiny for a few steps and dumps per-rank facts to JSON; the tests below read them. Notebook 07
claims the same facts of its own 2-process launch (``train_sft.py``, the same ``record_rank_facts``), so in a
session that runs 07 these tests skip; the module's own path also runs in this process, evaluation included.
accelerate 1.15 runs FSDP on GPUs only (accelerate/state.py enables it for MULTI_GPU-like types, never for
MULTI_CPU), so FSDP through accelerate is covered by parsing its configs and by the refusal the module gives on
CPUs; torch's own FSDP2 does run on CPU processes, and tests/fsdp_cpu_probe.py measures its per-rank shards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from course_utils import distributed
from course_utils.planner import Recipe, estimate_training_memory

REPO = Path(__file__).resolve().parent.parent
STEPS, BATCH, RANK_DIM = 3, 4, 8


def _free_port() -> int:
    with socket.socket() as s:  # other test runs on this machine may hold accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    adapter, facts = tmp / "adapter", tmp / "facts.json"
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = distributed.launch_command(
        [
            "--max-steps",
            str(STEPS),
            "--batch-size",
            str(BATCH),
            "--r",
            str(RANK_DIM),
            "--output-dir",
            str(adapter),
            "--facts",
            str(facts),
            "--eval-examples",
            "0",
        ],
        num_processes=2,
        main_process_port=_free_port(),
    )
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(facts.read_text())
    return {"facts": data, "adapter": adapter, "stdout": proc.stdout, "seconds": seconds}


@pytest.mark.notebook_covers("07_beyond_one_gpu")  # 07 claims it of its 2-process launch (same record_rank_facts)
def test_two_cpu_processes_train_on_different_batches(launch: dict) -> None:
    facts = launch["facts"]
    assert facts["world_size"] == 2
    r0, r1 = facts["ranks"]
    for r in (r0, r1):
        assert r["distributed_type"] == "DistributedType.MULTI_CPU" and r["backend"] == "gloo"
        assert len(r["batches"]) == STEPS
        assert len(r["losses"]) >= 1
    assert not set(r0["batches"]) & set(r1["batches"]), "both ranks trained on the same batch"
    # DDP averages gradients: both replicas end with the same weights, hence the same outputs.
    assert torch.allclose(torch.tensor(r0["probe_logits"]), torch.tensor(r1["probe_logits"]), atol=1e-5)


@pytest.mark.notebook_covers("07_beyond_one_gpu")  # 07 claims it of its 2-process launch (same record_rank_facts)
def test_only_the_adapter_is_saved_and_it_reproduces_rank0(launch: dict) -> None:
    from peft import PeftModel

    from course_utils.loading import load_model, load_tokenizer

    adapter = launch["adapter"]
    files = set(launch["facts"]["ranks"][0]["adapter_files"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not any(f.startswith("model") for f in files), f"a full model was saved: {files}"
    tok = load_tokenizer()
    model = PeftModel.from_pretrained(load_model(device="cpu"), str(adapter)).eval()
    probe = tok("Hello there, how are you?", return_tensors="pt")
    with torch.no_grad():
        logits = model(**probe).logits[0, -1]
    rank0 = torch.tensor(launch["facts"]["ranks"][0]["probe_logits"])
    assert torch.allclose(logits, rank0, atol=1e-5), (logits - rank0).abs().max()
    trained = sum(p.abs().sum() for n, p in model.named_parameters() if "lora_B" in n)
    assert trained > 0, "lora_B is still zero: the adapter did not train"


@pytest.mark.notebook_covers("07_beyond_one_gpu")  # 07 claims it of its 2-process launch (same record_rank_facts)
def test_planner_per_rank_terms_equal_the_bytes_each_rank_holds(launch: dict) -> None:
    recipe = Recipe(
        method="lora",
        dtype="float32",
        r=RANK_DIM,
        lora_dropout=0.0,
        target_modules="all-linear",
        batch_size=BATCH,
        seq_len=128,
        n_gpus=2,
        sharding="ddp",
    )
    d = estimate_training_memory(REPO / "data" / "course-tiny", recipe).details
    for r in launch["facts"]["ranks"]:
        assert r["weight_bytes"] == d["per GPU: weights (own shard)"]
        assert r["grad_bytes"] == d["per GPU: grads"]
        assert r["optimizer_state_bytes"] == d["per GPU: optimizer state"]


def test_an_existing_adapter_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    saved = tmp_path / "adapter" / "adapter_model.safetensors"
    saved.parent.mkdir()
    saved.write_bytes(b"a learner's adapter")
    assert distributed.main(["--output-dir", str(saved.parent)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert saved.read_bytes() == b"a learner's adapter"


def test_one_process_trains_saves_and_scores_the_saved_adapter(tmp_path: Path) -> None:
    """``python -m course_utils.distributed`` without a launcher (its ``main``, in this process): the module's
    own path, the evaluation of the saved adapter included.

    The 2-process launch above checks what notebook 07 claims of its own launch; this one runs whenever.
    """
    from accelerate.state import AcceleratorState

    adapter, facts = tmp_path / "adapter", tmp_path / "facts.json"
    args = ["--max-steps", "2", "--batch-size", str(BATCH), "--r", str(RANK_DIM), "--eval-examples", "4"]
    try:
        assert distributed.main([*args, "--output-dir", str(adapter), "--facts", str(facts)]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # leave no process state to later tests
    data = json.loads(facts.read_text())
    assert data["world_size"] == 1 and len(data["ranks"][0]["batches"]) == 2
    rank0 = data["ranks"][0]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(rank0["adapter_files"])
    assert rank0["eval"]["total"] == 4 and 0 <= rank0["eval"]["correct"] <= 4


@pytest.mark.parametrize(
    ("kind", "method", "hint"),
    [
        ("deepspeed", "lora", "ddp.yaml"),
        ("fsdp", "lora", "ddp.yaml"),
        ("fsdp", "qlora", "ddp.yaml"),
    ],
)
def test_what_cannot_run_on_cpus_says_what_to_use(kind: str, method: str, hint: str) -> None:
    with pytest.raises(distributed.UnsupportedHereError, match=hint) as err:
        distributed.require_supported(kind, method, cuda=False)
    assert str(err.value).count(". ") == 0, "one sentence"
    distributed.require_supported("multi", method, cuda=False)  # DDP runs on CPUs


def _load(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(distributed.accelerate_config(name)))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ddp", "MULTI_GPU"),
        ("fsdp-lora", "FSDP"),
        ("fsdp-qlora", "FSDP"),
        ("zero3", "DEEPSPEED"),
    ],
)
def test_each_shipped_config_parses_and_selects_what_it_claims(name: str, expected: str) -> None:
    cfg = _load(name)
    assert str(cfg.distributed_type).endswith(expected)
    assert cfg.num_processes == 2 and cfg.num_machines == 1 and not cfg.use_cpu
    if expected == "FSDP":
        fsdp = cfg.fsdp_config
        assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
        # transformers' Trainer replaces a transformer-based policy by peft's fsdp_auto_wrap_policy
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_use_orig_params"] is False
    if expected == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 3


def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype() -> None:
    for dtype in (torch.bfloat16, torch.float16):
        cfg = distributed.qlora_config("fsdp", dtype)
        assert cfg.bnb_4bit_quant_storage == dtype == cfg.bnb_4bit_compute_dtype
    assert distributed.qlora_config("multi", torch.float32).bnb_4bit_quant_storage == torch.uint8


def test_config_paths_print_for_the_shell() -> None:
    # The configs ship inside the package (pyproject package-data), not in the clone's top level.
    assert distributed.ACCELERATE_CONFIG_DIR.parent == Path(distributed.__file__).parent
    out = subprocess.run(
        [sys.executable, "-m", "course_utils.distributed", "--config", "fsdp-lora"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0 and Path(out.stdout.strip()).is_file()


def test_torch_fsdp_on_two_cpu_processes_holds_the_planners_shards() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(REPO / "tests" / "fsdp_cpu_probe.py"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads(line) for line in proc.stdout.replace("}{", "}\n{").splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    recipe = Recipe(method="lora", dtype="float32", r=8, lora_dropout=0.0, n_gpus=2, sharding="fsdp")
    d = estimate_training_memory(REPO / "data" / "course-tiny", recipe).details
    one = estimate_training_memory(REPO / "data" / "course-tiny", recipe.replace(n_gpus=1, sharding="none"))
    for r in ranks:
        assert (r["weights"], r["grads"], r["opt"]) == (
            d["per GPU: weights (own shard)"],
            d["per GPU: grads"],
            d["per GPU: optimizer state"],
        )
        assert 2 * r["weights"] == one.weights_bytes  # each rank holds exactly half

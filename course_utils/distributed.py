"""Train a LoRA / QLoRA adapter on 1 process, N CPU processes or N GPUs with ``accelerate launch``.

The same module runs unchanged everywhere; ``accelerate launch`` decides how (notebook 07)::

    python -m course_utils.distributed --max-steps 20                     # 1 process
    accelerate launch --config_file $(python -m course_utils.distributed --config ddp) \\
        --num_processes 2 -m course_utils.distributed                     # 2 processes: GPUs, else CPUs (gloo)
    accelerate launch --config_file $(python -m course_utils.distributed --config fsdp-lora) \\
        --num_processes 4 -m course_utils.distributed --model HuggingFaceTB/SmolLM2-1.7B-Instruct

On a machine without GPUs the DDP config starts CPU processes that talk over gloo. (``accelerate launch
--cpu`` starts ONE process unless MPI is set up, and accelerate runs FSDP on GPUs only: on CPU processes
it silently falls back to plain data parallelism, so this module refuses FSDP there.)

Training is TRL's ``SFTTrainer`` with a peft ``LoraConfig``: the Trainer (through accelerate) wraps the
model in DDP, FSDP or DeepSpeed as the launch config says, swaps in peft's FSDP auto-wrap policy,
shards the data with a distributed sampler and saves only the adapter, from the main process. The
course's data (`course_utils.data.load_task`) and evaluation (`course_utils.evaluation.evaluate_task`)
are used as in the notebooks. The shipped accelerate configs live in ``course_utils/accelerate_configs/``.

``--facts FILE`` writes what each rank saw and holds (batch digests, per-rank bytes of weights,
gradients and optimizer state, the trained model's logits on a fixed prompt) to a JSON file; the tests
(tests/test_distributed.py) and notebook 07 check the launch with it.

>>> sorted(ACCELERATE_CONFIGS)
['ddp', 'fsdp-lora', 'fsdp-qlora', 'zero3']
>>> accelerate_config("ddp").name
'ddp.yaml'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from course_utils.hyperparameters import TOY_LORA_LEARNING_RATE

__all__ = [
    "ACCELERATE_CONFIGS",
    "ACCELERATE_CONFIG_DIR",
    "FACTS_ENV_VAR",
    "PROBE_PROMPT",
    "UnsupportedHereError",
    "ACCELERATE_LAUNCH",
    "accelerate_config",
    "launch_command",
    "build_parser",
    "main",
    "record_rank_facts",
    "write_rank_facts",
]

ACCELERATE_CONFIG_DIR = Path(__file__).resolve().parent / "accelerate_configs"
#: Short name -> what the shipped accelerate config selects.
ACCELERATE_CONFIGS: dict[str, str] = {
    "ddp": "data parallelism (DDP): a full copy of the model on every GPU",
    "fsdp-lora": "FSDP full sharding with peft's auto-wrap policy, for LoRA",
    "fsdp-qlora": "FSDP full sharding for QLoRA (4-bit storage in the compute dtype); CUDA only",
    "zero3": "DeepSpeed ZeRO stage 3; CUDA only, needs `pip install deepspeed`",
}


#: ``accelerate launch``, run by this interpreter. The ``accelerate`` command sits in the environment's
#: ``bin/`` (``Scripts\\`` on Windows), which is on PATH only where the environment is activated: a Jupyter
#: kernel or CI calling a venv's python directly would not find it. ``python -m`` always finds the
#: accelerate this python imports.
ACCELERATE_LAUNCH: tuple[str, ...] = (sys.executable, "-m", "accelerate.commands.launch")


class UnsupportedHereError(RuntimeError):
    """The requested combination cannot run on this machine; the message says what to use instead."""


def accelerate_config(name: str) -> Path:
    """Path of a shipped accelerate config (``"ddp"``, ``"fsdp-lora"``, ``"fsdp-qlora"``, ``"zero3"``).

    >>> accelerate_config("fsdp-lora").is_file()
    True
    """
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"Unknown accelerate config {name!r}; the course ships {sorted(ACCELERATE_CONFIGS)}.")
    return ACCELERATE_CONFIG_DIR / f"{name}.yaml"


def launch_command(
    args: Sequence[str] = (),
    *,
    num_processes: int = 2,
    config: str = "ddp",
    main_process_port: int | None = None,
) -> list[str]:
    """The ``accelerate launch --config_file ... -m course_utils.distributed ...`` command, as a list for ``subprocess``.

    ``config`` is a shipped config name or a path. Without GPUs, the DDP config runs CPU processes (gloo).

    >>> cmd = launch_command(["--max-steps", "4"])
    >>> cmd[1:3], cmd[4].endswith("ddp.yaml"), cmd[5:]
    (['-m', 'accelerate.commands.launch'], True, ['--num_processes', '2', '-m', 'course_utils.distributed', '--max-steps', '4'])
    """
    path = accelerate_config(config) if config in ACCELERATE_CONFIGS else Path(config)
    cmd = [*ACCELERATE_LAUNCH, "--config_file", str(path), "--num_processes", str(num_processes)]
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    return cmd + ["-m", "course_utils.distributed", *args]


# --------------------------------------------------------------------------- the training run


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the training module (``python -m course_utils.distributed --help``).

    >>> ns = build_parser().parse_args(["--max-steps", "4"])
    >>> ns.model, ns.method, ns.max_steps, ns.overwrite
    ('course-tiny', 'lora', 4, False)
    """
    p = argparse.ArgumentParser(
        prog="course_utils.distributed",
        description="LoRA/QLoRA SFT with TRL on 1 process, N CPU processes or N GPUs (run it with accelerate launch).",
    )
    p.add_argument(
        "--config", choices=sorted(ACCELERATE_CONFIGS), help="print the path of a shipped accelerate config and exit"
    )
    p.add_argument("--model", default="course-tiny", help="course-tiny (default), smollm2-135m, any hub id or folder")
    p.add_argument("--task", default="shout", help="course task to train on (course_utils.data.TASKS)")
    p.add_argument("--method", default="lora", choices=("lora", "qlora"))
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--target-modules", default="all-linear", help='"all-linear" or e.g. q_proj,v_proj')
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per process per step")
    p.add_argument("--learning-rate", type=float, default=TOY_LORA_LEARNING_RATE)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs/distributed-adapter", help="where the adapter is saved")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter folder")
    p.add_argument(
        "--eval-examples",
        type=int,
        default=16,
        help="eval conversations scored after training on the main process (0: skip)",
    )
    p.add_argument("--facts", help="write per-rank facts (batches, bytes, logits) to this JSON file")
    return p


def _distributed_kind() -> str:
    """What the launcher asked for: "deepspeed", "fsdp", "multi" (DDP) or "single"."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "multi" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"


def require_supported(kind: str, method: str, cuda: bool) -> None:
    """Raise `UnsupportedHereError` (one sentence: what to use instead) if ``kind`` x ``method`` cannot run here.

    >>> require_supported("multi", "lora", cuda=False)
    >>> require_supported("deepspeed", "lora", cuda=False)
    Traceback (most recent call last):
    ...
    course_utils.distributed.UnsupportedHereError: DeepSpeed ZeRO-3 needs CUDA GPUs and none is visible here: on CPUs launch with the FSDP config (--config_file fsdp-lora.yaml) or the DDP one (ddp.yaml) instead.
    """
    if kind == "deepspeed":
        if not cuda:
            raise UnsupportedHereError(
                "DeepSpeed ZeRO-3 needs CUDA GPUs and none is visible here: on CPUs launch with the FSDP config "
                "(--config_file fsdp-lora.yaml) or the DDP one (ddp.yaml) instead."
            )
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise UnsupportedHereError(
                "DeepSpeed is not installed: `pip install deepspeed` (or `pip install 'peft-course[deepspeed]'`), "
                "or launch with the FSDP config fsdp-lora.yaml / fsdp-qlora.yaml, which needs nothing extra."
            )
    if kind == "fsdp" and method == "lora" and not cuda:
        raise UnsupportedHereError(
            "accelerate runs FSDP on GPUs only (on CPU processes it would quietly fall back to plain data "
            "parallelism): on CPUs launch with the DDP config (--config_file ddp.yaml) instead."
        )
    if kind == "fsdp" and method == "qlora" and not cuda:
        raise UnsupportedHereError(
            "QLoRA with FSDP shards bitsandbytes' 4-bit weights only on CUDA GPUs: on CPUs use --method lora with "
            "fsdp-lora.yaml, or --method qlora with ddp.yaml (each process keeps the whole 4-bit model)."
        )


def qlora_config(kind: str, compute_dtype: Any) -> Any:
    """The QLoRA ``BitsAndBytesConfig`` for a launch of ``kind`` ("fsdp", "multi", "single", "deepspeed").

    FSDP flattens and shards parameters of one floating dtype, so under FSDP the packed 4-bit weights are
    stored in the compute dtype (``bnb_4bit_quant_storage``; peft's "FSDP + QLoRA" guide); elsewhere they
    stay uint8.

    >>> import torch
    >>> qlora_config("fsdp", torch.bfloat16).bnb_4bit_quant_storage
    torch.bfloat16
    """
    from course_utils.quantization import bnb_4bit_config

    device = "cuda" if kind in ("fsdp", "deepspeed") else "cpu"
    cfg = bnb_4bit_config(device, compute_dtype=compute_dtype)
    if kind in ("fsdp", "deepspeed"):
        cfg.bnb_4bit_quant_storage = compute_dtype
    return cfg


def _digest(t: Any) -> str:
    return hashlib.sha1(t.detach().cpu().numpy().tobytes()).hexdigest()[:16]


def _local(t: Any) -> Any:
    """The part of a tensor this rank holds (FSDP2/DTensor shards expose it with ``to_local()``)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _nbytes(tensors: Any) -> int:
    return int(sum(_local(t).numel() * _local(t).element_size() for t in tensors))


#: Environment variable that asks a training script for per-rank facts (its value: the JSON file to write).
FACTS_ENV_VAR = "COURSE_RANK_FACTS"
#: The fixed prompt whose last-token logits every rank records after training.
PROBE_PROMPT = "Hello there, how are you?"


def record_rank_facts(trainer: Any, path: str | Path | None = None) -> dict[str, Any]:
    """Record what this rank saw and holds while ``trainer`` trains; with ``path``, write all ranks' facts to JSON.

    Adds a ``TrainerCallback`` to ``trainer`` (a transformers ``Trainer`` or TRL ``SFTTrainer``) that keeps:
    a digest of every batch this rank trained on (a forward pre-hook on the input embeddings), the bytes
    of the weights, gradients and optimizer state this rank holds (its shards under FSDP), the logged
    losses and the trained model's logits on a fixed prompt (:data:`PROBE_PROMPT`). The course's
    training script ``course_utils/train_sft.py`` calls it only when :data:`FACTS_ENV_VAR` asks, so a
    learner's own run carries no instrumentation.

    With ``path``, every rank writes its facts at the end of training and the main process merges them
    into ``{"world_size": N, "ranks": [...]}`` at ``path`` (:func:`write_rank_facts`).

    Args:
        trainer: the trainer, before ``trainer.train()``.
        path: JSON file for all ranks' facts; None keeps them in the returned dict only.

    Returns:
        This rank's facts: a dict that ``trainer.train()`` fills in.

    >>> from types import SimpleNamespace
    >>> trainer = SimpleNamespace(add_callback=lambda cb: None)
    >>> sorted(record_rank_facts(trainer))
    ['backend', 'batches', 'distributed_type', 'rank', 'world_size']
    """
    import torch
    from accelerate import PartialState
    from transformers import TrainerCallback

    state = PartialState()
    facts: dict[str, Any] = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": state.backend,
        "batches": [],
    }
    hooks: list[Any] = []

    class RankFacts(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            embeddings = trainer.model.get_input_embeddings()  # sees every input_ids this rank trains on
            hooks.append(embeddings.register_forward_pre_hook(lambda _m, inp: facts["batches"].append(_digest(inp[0]))))

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            opt = kwargs["optimizer"]  # gradients are freed right after the step: read them now
            facts["grad_bytes"] = _nbytes(p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for hook in hooks:
                hook.remove()
            params = list(trainer.model_wrapped.parameters())  # FSDP: this rank's shards; DDP: the whole model
            opt_states = [
                v for s in trainer.optimizer.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"
            ]  # exp_avg, exp_avg_sq (the scalar step is not counted)
            facts.update(
                weight_bytes=_nbytes(params),
                trainable_weight_bytes=_nbytes(p for p in params if p.requires_grad),
                optimizer_state_bytes=_nbytes(opt_states),
                train_loss=next((row["train_loss"] for row in state.log_history if "train_loss" in row), None),
                losses=[row["loss"] for row in state.log_history if "loss" in row],
            )
            # the trained model's logits on a fixed prompt, computed by every rank (FSDP gathers in forward)
            probe = trainer.processing_class(PROBE_PROMPT, return_tensors="pt").to(args.device)
            trainer.model_wrapped.eval()
            with torch.no_grad():
                logits = trainer.model_wrapped(**probe).logits.float().cpu()
            trainer.model_wrapped.train()
            facts["probe_logits"] = logits[0, -1].tolist()
            if path is not None:
                write_rank_facts(path, facts)

    trainer.add_callback(RankFacts())
    return facts


def write_rank_facts(path: str | Path, facts: dict[str, Any]) -> None:
    """Write this rank's ``facts``; the main process then merges all ranks into ``{"world_size", "ranks"}`` at ``path``.

    Every rank must call it: it waits for the others before merging, and again after.

    >>> import json, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "facts.json"
    >>> write_rank_facts(path, {"rank": 0, "world_size": 1, "losses": [1.5, 0.7]})
    >>> json.loads(path.read_text())["ranks"][0]["losses"]
    [1.5, 0.7]
    """
    from accelerate import PartialState

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rank, world = facts["rank"], facts["world_size"]
    path.with_suffix(f".rank{rank}.json").write_text(json.dumps(facts))
    PartialState().wait_for_everyone()
    if rank == 0:
        ranks = [json.loads(path.with_suffix(f".rank{r}.json").read_text()) for r in range(world)]
        for r in range(world):
            path.with_suffix(f".rank{r}.json").unlink()
        path.write_text(json.dumps({"world_size": world, "ranks": ranks}, indent=1))
    PartialState().wait_for_everyone()


def _sft_config(ns: argparse.Namespace, out: Path, device: str) -> Any:
    """TRL's ``SFTConfig`` for this launch: the course's device flags plus the command line's numbers."""
    from trl import SFTConfig

    from course_utils.devices import trainer_device_flags

    return SFTConfig(
        output_dir=str(out),
        max_steps=ns.max_steps,
        per_device_train_batch_size=ns.batch_size,
        learning_rate=ns.learning_rate,
        lr_scheduler_type="constant",
        **trainer_device_flags(device),  # use_cpu, bf16/fp16 matching compute_dtype, no pinned memory
        activation_checkpointing=ns.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if ns.gradient_checkpointing else None,
        ddp_find_unused_parameters=False,  # every LoRA parameter gets a gradient each step
        max_length=ns.max_length,
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, ns.max_steps // 5),
        disable_tqdm=True,
        seed=ns.seed,
    )


def run(ns: argparse.Namespace) -> dict[str, Any]:
    """Train, save the adapter from the main process, evaluate it; return this rank's facts.

    >>> facts = run(build_parser().parse_args(["--max-steps", "2", "--output-dir", "/tmp/a", "--overwrite"]))  # doctest: +SKIP
    """
    import torch
    from accelerate import PartialState
    from peft import LoraConfig
    from trl import SFTTrainer

    from course_utils.data import load_task, to_prompt_completion
    from course_utils.devices import compute_dtype_for
    from course_utils.loading import load_model, load_tokenizer

    started = time.perf_counter()
    cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "false").lower() != "true"
    kind = _distributed_kind()
    require_supported(kind, ns.method, cuda)
    out = Path(ns.output_dir)
    state = PartialState(cpu=not cuda)
    device = "cuda" if cuda else "cpu"
    compute_dtype = compute_dtype_for(device)  # the course's one dtype policy (course_utils.devices)

    tokenizer = load_tokenizer(ns.model)
    quantization_config = None
    load_kwargs: dict[str, Any] = {}
    if ns.method == "qlora":
        quantization_config = qlora_config(kind, compute_dtype)
        if kind == "fsdp":  # device placement is left to FSDP
            load_kwargs["device_map"] = None
        else:  # one whole 4-bit model per process, on this process's device
            load_kwargs["device_map"] = {"": state.local_process_index if cuda else "cpu"}
    # Weights are loaded on the CPU; the Trainer moves (or shards) them onto this process's device.
    model = load_model(
        ns.model, dtype=compute_dtype, device="cpu", quantization_config=quantization_config, **load_kwargs
    )

    targets: str | list[str] = ns.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=ns.r, lora_alpha=ns.lora_alpha, lora_dropout=ns.lora_dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    args = _sft_config(ns, out, device)
    train = to_prompt_completion(load_task(ns.task, "train"))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=lora)
    facts = record_rank_facts(trainer)  # batches, bytes, losses and probe logits of this rank
    trainer.train()

    if trainer.is_fsdp_enabled:  # gather the adapter's shards into one file (as peft's examples/sft/train.py does)
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))  # the adapter only (peft), written by the main process
    state.wait_for_everyone()
    facts["train_seconds"] = round(time.perf_counter() - started, 2)
    if state.is_main_process:
        facts["adapter_files"] = sorted(p.name for p in out.iterdir())
        if ns.eval_examples > 0:
            facts["eval"] = _evaluate_saved(ns, out, quantization_config, compute_dtype)
    return facts


def _evaluate_saved(ns: argparse.Namespace, folder: Path, quantization_config: Any, dtype: Any) -> dict[str, Any]:
    """Load a fresh base model plus the SAVED adapter and score it (proves the saved folder is complete)."""
    from peft import PeftModel

    from course_utils.data import load_task
    from course_utils.evaluation import evaluate_task
    from course_utils.loading import load_model, load_tokenizer

    if quantization_config is not None:  # plain uint8 4-bit storage for one process
        quantization_config = qlora_config("single", dtype)
    base = load_model(ns.model, dtype=dtype, quantization_config=quantization_config)
    tokenizer = load_tokenizer(ns.model)
    model = PeftModel.from_pretrained(base, str(folder))
    data = load_task(ns.task, "eval").select(range(min(ns.eval_examples, 48)))
    res = evaluate_task(model, tokenizer, data, progress=False, name=f"{ns.task} after distributed training")
    return {"accuracy": res.accuracy, "correct": res.correct, "total": res.total}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m course_utils.distributed`` / ``accelerate launch -m course_utils.distributed``).

    Returns the exit code: 0, or 2 when the launch cannot run here (the message says what to use instead).

    >>> main(["--config", "ddp"])  # doctest: +ELLIPSIS
    /.../course_utils/accelerate_configs/ddp.yaml
    0
    """
    ns = build_parser().parse_args(argv)
    if ns.config:
        print(accelerate_config(ns.config))
        return 0
    out = Path(ns.output_dir)
    if out.exists() and any(out.iterdir()) and not ns.overwrite:  # checked by every rank, before any work
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"course_utils.distributed: error: {out} already holds files (an earlier adapter?); pass "
                "--overwrite to replace them or choose another --output-dir.",
                file=sys.stderr,
            )
        return 2
    try:
        facts = run(ns)
    except UnsupportedHereError as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"course_utils.distributed: error: {err}", file=sys.stderr)
        return 2
    rank, world = facts["rank"], facts["world_size"]
    print(
        f"[rank {rank}/{world}] {facts['distributed_type']} ({facts['backend']}): {len(facts['batches'])} batches, "
        f"weights {facts['weight_bytes']:,} B, grads {facts.get('grad_bytes', 0):,} B, "
        f"optimizer state {facts['optimizer_state_bytes']:,} B, loss {facts['train_loss']:.4f}",
        flush=True,
    )
    if ns.facts:
        write_rank_facts(ns.facts, facts)
    if rank == 0:
        ev = facts.get("eval")
        if ev:
            print(
                f"saved adapter in {ns.output_dir}: {ev['correct']}/{ev['total']} eval answers exact "
                f"({ev['accuracy']:.0%}) after {ns.max_steps} steps on {world} process(es)"
            )
        print(f"done in {facts['train_seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

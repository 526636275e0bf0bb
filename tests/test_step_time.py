"""Step time: FLOP counts against torch's FlopCounterMode, the calibration against the H200 reference,
the roofline's monotonicity, the CPU path, the notebooks' run table and the learner-facing tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from course_utils.gpus import get_gpu
from course_utils.model_shape import load_config
from course_utils.notebook_time import NOTEBOOK_RUNS, notebook_minutes, predict_notebook_runs, training_time_lines
from course_utils.recipe import Recipe
from course_utils.resources import data_dir
from course_utils.step_time import (
    CALIBRATION_PATH,
    CALIBRATION_ROWS,
    CPU,
    REFERENCE_PATH,
    Efficiency,
    _combine,
    _seconds,
    calibrate,
    h200_efficiency,
    measure_cpu,
    predict_step_time,
    reference_time_errors,
)
from course_utils.step_work import step_work
from course_utils.time_plan import time_table

TINY = data_dir("course-tiny")
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SHAPE = dict(batch_size=2, seq_len=16, autocast=False, dtype="float32")
DEMO_CPU = CPU("demo", 20e9, 5e9, 2e-5, 3e-3, 0.5)


# --------------------------------------------------------------------------- FLOPs, exact


def _counted_mm_flops(recipe: Recipe) -> int:
    """aten.mm FLOPs of one forward + backward of a random course-tiny model (torch's FlopCounterMode)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from course_utils.model_shape import random_model_from_config

    config = load_config(TINY)
    torch.manual_seed(0)
    model = random_model_from_config(config)
    if recipe.method != "full":
        model = get_peft_model(
            model, LoraConfig(r=recipe.r, target_modules=recipe.target_modules, lora_dropout=recipe.lora_dropout)
        )
    model.train()
    x = torch.randint(0, config.vocab_size, (recipe.batch_size, recipe.seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=x, labels=x).loss.backward()
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe(method="full", **SHAPE),
        Recipe(method="lora", target_modules=["q_proj", "v_proj"], **SHAPE),
        Recipe(method="lora", target_modules="all-linear", r=4, **SHAPE),
    ],
    ids=["full", "lora-qv", "lora-all-r4"],
)
def test_matmul_flops_equal_flop_counter(recipe: Recipe) -> None:
    work = step_work(TINY, recipe)
    assert work.matmul_flops - work.attention_flops == _counted_mm_flops(recipe)


def test_full_is_6n_and_lora_4n_plus_adapters_by_hand() -> None:
    s = load_config(TINY)
    d, f, v, layers = s.hidden_size, s.intermediate_size, s.vocab_size, s.num_hidden_layers
    kv = s.num_key_value_heads * s.head_dim
    q = s.num_attention_heads * s.head_dim
    per_layer = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
    n = layers * sum(i * o for i, o in per_layer.values()) + v * d  # matmul weights, with the tied head
    tokens = 2 * 16
    full = step_work(TINY, Recipe(method="full", **SHAPE))
    assert full.matmul_flops - full.attention_flops == 6 * n * tokens
    lora = step_work(TINY, Recipe(method="lora", target_modules=["q_proj", "v_proj"], r=8, **SHAPE))
    adapters = layers * 8 * sum(sum(per_layer[k]) for k in ("q", "v"))
    # layer 0's q/k/v (and its lora_A) need no input gradient: their input, the frozen embedding, needs none
    skip = sum(i * o for i, o in (per_layer["q"], per_layer["k"], per_layer["v"])) + 8 * 2 * d
    assert lora.matmul_flops - lora.attention_flops == 4 * n * tokens + 6 * adapters * tokens - 2 * skip * tokens


def test_checkpointing_adds_one_forward_and_dora_adds_its_second_base_pass() -> None:
    rc = Recipe(method="lora", target_modules=["q_proj", "v_proj"], **SHAPE)
    plain, gc = step_work(TINY, rc), step_work(TINY, rc.replace(gradient_checkpointing=True))
    forward = plain.phase("forward matmuls").flops
    head = 2 * 32 * 772 * 192  # the head is not recomputed
    assert gc.phase("recompute (checkpointing)").flops == pytest.approx(forward - head, rel=1e-9)
    dora = rc.replace()
    dora.use_dora = True  # the DoRA option of Recipe (the attribute step_work reads)
    extra = step_work(TINY, dora).matmul_flops - plain.matmul_flops
    base_qv = 4 * (192 * 192 + 192 * 96)
    lora_eye = 4 * 2 * rc.r * (192 * (192 + 192) + 192 * (192 + 96))
    assert extra == pytest.approx(2 * 32 * base_qv * 2 + lora_eye)  # forward + input grad of W x, and B(A(eye))
    assert step_work(TINY, dora).bytes_moved > plain.bytes_moved


# --------------------------------------------------------------------------- calibration


def test_calibration_rows_fit_and_held_out_rows_stay_within_the_measured_error() -> None:
    rows = reference_time_errors()
    calib = [r for r in rows if r["calibration"]]
    held = [r for r in rows if not r["calibration"]]
    assert sorted(r["name"] for r in calib) == sorted(CALIBRATION_ROWS)
    assert all(abs(r["rel_error"]) < 0.02 for r in calib)
    # Issue 23's target is 20%; QLoRA without checkpointing misses it (-26%): see benchmarks/planner_time.py.
    assert max(abs(r["rel_error"]) for r in held) < 0.30
    assert sum(abs(r["rel_error"]) for r in held) / len(held) < 0.15
    eff = h200_efficiency()
    assert 0.3 < eff.matmul <= 1 and 0.3 < eff.memory <= 1


def test_calibrate_recovers_known_efficiencies(tmp_path: Path) -> None:
    """A reference made by the model itself with known efficiencies: the fit must find them again."""
    from course_utils.planner import reference_recipes

    true = Efficiency(0.45, 0.7, 2e-5, step_overhead_s=0.03)
    ref = json.loads(REFERENCE_PATH.read_text())
    h200 = get_gpu("H200")
    for name, rc in reference_recipes().items():
        dev, host, _ = _seconds(step_work("smollm2-1.7b", rc), h200.peak_flops, h200.bandwidth, true)
        ref["train"][name]["step_s"] = _combine(dev, host, true, rc.gradient_checkpointing)[0]
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    got = calibrate(CALIBRATION_ROWS, path)
    assert (got.matmul, got.memory, got.launch_s, got.step_overhead_s) == pytest.approx(
        (true.matmul, true.memory, true.launch_s, true.step_overhead_s), rel=0.05
    )
    with pytest.raises(ValueError, match="not in"):
        calibrate(("no_such_row",), path)


def test_shipped_calibration_is_a_fresh_fit() -> None:
    stored, fresh = h200_efficiency(), calibrate()
    assert (stored.matmul, stored.memory, stored.launch_s, stored.step_overhead_s) == pytest.approx(
        (fresh.matmul, fresh.memory, fresh.launch_s, fresh.step_overhead_s), rel=1e-3
    )
    assert json.loads(CALIBRATION_PATH.read_text())["rows"] == list(CALIBRATION_ROWS)


def test_other_shapes_are_predictions_only() -> None:
    rows = reference_time_errors(batch_size=16, seq_len=512)
    assert all(r["measured_s"] is None and r["rel_error"] is None for r in rows)


# --------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        (dict(batch_size=4), dict(batch_size=16)),
        (dict(seq_len=256), dict(seq_len=2048)),
        (dict(), dict(gradient_checkpointing=True)),
        (dict(method="full", dtype="bfloat16"), dict(method="full", dtype="float32")),
        (dict(target_modules=["q_proj", "v_proj"]), dict(target_modules="all-linear")),
    ],
)
def test_more_work_takes_longer(smaller: dict, larger: dict) -> None:
    base = Recipe(method="lora", batch_size=8, seq_len=512)
    for gpu in ("T4", "A100-80GB"):
        a = predict_step_time("smollm2-1.7b", base.replace(**smaller), gpu)
        b = predict_step_time("smollm2-1.7b", base.replace(**larger), gpu)
        assert b.step_s > a.step_s


def test_faster_gpus_are_faster_and_more_gpus_finish_sooner() -> None:
    rc = Recipe(method="qlora", batch_size=4, gradient_checkpointing=True)
    times = [predict_step_time("smollm2-1.7b", rc, g).step_s for g in ("T4", "A100-40GB", "H100")]
    assert times == sorted(times, reverse=True)
    one = predict_step_time("smollm2-1.7b", rc, "H100")
    four = predict_step_time("smollm2-1.7b", rc.replace(n_gpus=4, sharding="ddp"), "H100")
    assert four.comm_s > 0 and four.step_s > one.step_s
    assert four.time_for(10_000) < one.time_for(10_000) / 3
    assert four.gpu_hours(10_000) >= one.gpu_hours(10_000)


def test_time_arithmetic_and_label() -> None:
    est = predict_step_time("smollm2-135m", Recipe(batch_size=4, seq_len=256, n_gpus=2, sharding="ddp"), "L4")
    assert est.steps_for(1000, epochs=2) == 250  # 2000 rows / (4 rows x 2 GPUs)
    assert est.time_for(1000, 2) == pytest.approx(250 * est.step_s)
    assert est.gpu_hours(1000, 2) == pytest.approx(2 * 250 * est.step_s / 3600)
    assert est.tokens_per_s == pytest.approx(2 * 4 * 256 / est.step_s)
    assert re.fullmatch(r"predicted; ±\d+% on the H200 reference's 4 held-out recipes", est.label)
    assert "ms/step" in repr(est)


# --------------------------------------------------------------------------- CPU


def test_cpu_steps_add_device_and_host_time() -> None:
    est = predict_step_time(TINY, Recipe(method="lora", **SHAPE), DEMO_CPU, trainer=True)
    assert est.step_s == pytest.approx(est.device_s + est.host_s)
    assert est.error is None and "calibration of this CPU" in est.label
    assert est.start_s == DEMO_CPU.start_s


def test_measure_cpu_gives_positive_rates() -> None:
    cpu = measure_cpu(seconds=0.2, trainer_probe=False)
    assert cpu.peak_flops > 1e8 and cpu.bandwidth > 1e8 and 0 < cpu.launch_s < 1e-2
    assert cpu.efficiency().overlap is False


def _parameter(notebook: str, name: str) -> str:
    text = (NOTEBOOKS / f"{notebook}.py").read_text()
    return re.search(rf"^{name} = ([^#\n]+)", text, flags=re.M).group(1).strip()


def test_notebook_runs_match_the_notebooks() -> None:
    runs = {(r.notebook, r.cell): r for r in NOTEBOOK_RUNS}
    assert (
        int(_parameter("01_lora_training", "SWEEP_STEPS")) == runs["01_lora_training", "sweep, r1 on attention"].steps
    )
    assert (
        int(_parameter("01_lora_training", "SWEEP_BATCH"))
        == runs["01_lora_training", "sweep, r1 on attention"].batch_size
    )
    sweep_ranks = sorted({r.r for (nb, cell), r in runs.items() if cell.startswith("sweep") and "attention" in cell})
    assert sweep_ranks == json.loads(_parameter("01_lora_training", "SWEEP_RANKS"))
    assert int(_parameter("02_adapters", "MAX_STEPS")) == runs["02_adapters", "shout adapter"].steps
    assert int(_parameter("02_adapters", "BATCH_SIZE")) == runs["02_adapters", "shout adapter"].batch_size
    assert int(_parameter("05_prompt_tuning", "MAX_STEPS")) == runs["05_prompt_tuning", "LoRA r8 on q, v"].steps
    for notebook in ("01_lora_training", "03_merging", "04_trl", "08_serving"):
        assert _parameter(notebook, "MAX_STEPS").strip('"') == "auto"
    assert {r.notebook for r in NOTEBOOK_RUNS} == {p.stem for p in NOTEBOOKS.glob("0*.py")}


def test_notebook_predictions_and_doctor_lines() -> None:
    rows = predict_notebook_runs(DEMO_CPU, NOTEBOOK_RUNS[:2] + NOTEBOOK_RUNS[-1:])
    assert rows[0]["predicted_s"] > rows[1]["predicted_s"] > 0  # 45 steps of 16 rows vs 40 of 8
    assert rows[-1]["predicted_s"] is None
    minutes = notebook_minutes(DEMO_CPU)
    assert minutes["01_lora_training"][0] > 0 and minutes["07_beyond_one_gpu"] == (
        0.0,
        ["accelerate launch, 2 processes"],
    )
    gpu = training_time_lines({"device": "cuda", "gpu": "NVIDIA L4"})
    assert len(gpu) == 1 and "NVIDIA L4" in gpu[0][0]


def test_doctor_lines_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("course_utils.step_time.measure_cpu", lambda seconds=1.5: DEMO_CPU)
    facts: dict = {"device": "cpu"}
    lines = training_time_lines(facts)
    assert {found.split(":")[0] for found, _ in lines} == {r.notebook for r in NOTEBOOK_RUNS}
    assert "min of training (predicted)" in lines[0][0] and facts["training_minutes"]["01_lora_training"] > 0


# --------------------------------------------------------------------------- where learners see it


def test_time_table_fits_and_cheapest() -> None:
    table = time_table(
        "llama-3.1-8b", Recipe(method="lora", gradient_checkpointing=True), gpus=("L4", "A100-80GB"), n_gpus=(1, 2, 8)
    )
    l4 = {s.n_gpus: s for s in table.rows if s.gpu == "L4"}
    assert not l4[1].fits and l4[2].fits  # 8B bf16 weights: one 24 GB card is too small, FSDP over two is not
    best = table.cheapest(hours=1.0)
    assert best is not None and best.fits and best.hours <= 1.0
    assert table.cheapest(hours=1e-6) is None
    assert table.cheapest(prices={"L4": 0.01}).gpu == "L4"
    frame = table.to_frame()
    assert list(frame["fits"]) == ["no", "yes", "yes", "yes", "yes", "yes"]

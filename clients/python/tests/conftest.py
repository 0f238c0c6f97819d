"""Fixtures: real `selm serve` processes on real sockets (never a mock).

The server binary is ``$SELM_BIN``, else ``<repo>/.build/debug/selm``, else ``<repo>/.build/release/selm``;
the model is ``$SELM_MODEL``, else ``<repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf``. Each server gets a
temporary data directory, a free TCP port (``--address 127.0.0.1:0``, read back from its log) and a Unix
socket.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The tiny random chat model of the Swift tests (2 layers, 64 wide, vocabulary 601, context 256): loads
#: and generates in milliseconds, for tests that run several servers.
TINY_CHAT = REPO / "Tests" / "ModelTests" / "Fixtures" / "tiny-chat"
#: Seconds a test waits for any single reply (a hung server fails the test instead of hanging it).
REPLY_TIMEOUT = 120.0


#: The tiny random chat model of the Swift tests (vocabulary 601, 2 layers): for tests that need a
#: learner that steps in milliseconds and do not care what the text says.
TINY_CHAT = REPO / "Tests" / "ModelTests" / "Fixtures" / "tiny-chat"


def selm_binary() -> Path:
    env = os.environ.get("SELM_BIN")
    if env:
        path = Path(env)
        if not path.is_file():
            pytest.fail("SELM_BIN=%s does not exist" % env)
        return path
    for candidate in (REPO / ".build/debug/selm", REPO / ".build/release/selm"):
        if candidate.is_file():
            return candidate
    pytest.fail("no selm binary: build it (`swift build --product selm`) or set SELM_BIN")
    raise AssertionError  # unreachable


def model_path() -> Path:
    path = Path(os.environ.get("SELM_MODEL") or REPO / "models" / MODEL_NAME)
    if not path.is_file():
        pytest.fail("%s is missing: run `make model`" % path)
    return path


class Server:
    """A running `selm serve` process."""

    def __init__(self, extra_args: Optional[List[str]] = None, token: Optional[str] = None,
                 model: Optional[Path] = None, address: str = "127.0.0.1:0") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="selm-pytest-"))
        self.data_dir = self.dir / "data"
        self.unix = str(self.dir / "selm.sock")
        self.log_path = self.dir / "serve.log"
        self.token = token
        args = [str(selm_binary()), "serve", "--model", str(model or model_path()), "--address", address,
                "--unix", self.unix, "--data-dir", str(self.data_dir)]
        if token is not None:
            token_file = self.dir / "token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            args += ["--auth-token-file", str(token_file)]
        args += extra_args or []
        if "--engine-precision" not in args:
            args += ["--engine-precision", "f32"]  # parity checks compare with the f32 forward
        self.args = args
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.address = self._wait_listening(timeout=120)

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            tcp = re.search(r"listening on tcp (\S+)", text)
            if tcp and "listening on unix" in text:
                return tcp.group(1)
            if self.process.poll() is not None:
                pytest.fail("selm serve exited with status %s:\n%s" % (self.process.returncode, text))
            time.sleep(0.05)
        self.stop()
        pytest.fail("selm serve did not start listening within %d s:\n%s" % (timeout, self.log()))
        raise AssertionError  # unreachable

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 20 s; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def cleanup(self) -> None:
        """Stops the server and removes its directory (data, socket, log)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self, **kwargs):  # type: ignore[no-untyped-def]
        from selm_client import Client
        kwargs.setdefault("timeout", REPLY_TIMEOUT)
        if "unix" not in kwargs and "address" not in kwargs:
            kwargs["address"] = self.address
        if self.token is not None:
            kwargs.setdefault("token", self.token)
        return Client(**kwargs)


#: A learner that takes one step per preference row at once (batch 1, no waiting), at a learning rate
#: where one step moves SmolLM2's greedy log-probs by ~1e-2: far above the 1e-4 at which served and
#: offline log-probs agree.
LEARNER_ARGS = ["--lr", "1e-5", "--batch-size", "1", "--max-wait-seconds", "0"]


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One server shared by the tests that do not disturb it. It runs no learner, so its version never
    changes under a test: the results of two calls are comparable."""
    s = Server(["--no-learner"])
    yield s
    s.cleanup()


@pytest.fixture()
def learner_server() -> Iterator[Server]:
    """A server of the test's own with a learner (``LEARNER_ARGS``)."""
    s = Server(LEARNER_ARGS)
    yield s
    s.cleanup()


def offline_greedy(model: str, prompt: str, max_tokens: int) -> dict:
    """``selm generate --model MODEL --prompt PROMPT --chat --max-tokens N --json --engine-precision f32``
    (greedy; f32 as the test servers) in a process of its own: ``{ids, logprobs, text, finish_reason,
    prompt_tokens}``, ids with the stop token if any."""
    r = subprocess.run([str(selm_binary()), "generate", "--model", model, "--prompt", prompt, "--chat",
                        "--max-tokens", str(max_tokens), "--json", "--engine-precision", "f32"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail("selm generate --model %s exited %d: %s" % (model, r.returncode, r.stderr))
    return json.loads(r.stdout)


@pytest.fixture(scope="session")
def auth_server() -> Iterator[Server]:
    """A server started with --auth-token-file."""
    s = Server(token="s3cret-token")
    yield s
    s.cleanup()


@pytest.fixture()
def fresh_server() -> Iterator[Server]:
    """A server of the test's own (for tests that stop it)."""
    s = Server()
    yield s
    s.cleanup()


@pytest.fixture()
def client(server: Server):  # type: ignore[no-untyped-def]
    with server.client() as c:
        yield c

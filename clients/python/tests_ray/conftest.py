"""The Ray tests reuse the client tests' helpers (binary, tiny model, timeouts) from
``../tests/conftest.py``; Ray is kept on the loopback interface (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
makes it take 127.0.0.1 as the node's address) and sends no usage statistics."""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_spec = importlib.util.spec_from_file_location("selm_client_test_helpers",
                                               Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)  # type: ignore[union-attr]

REPLY_TIMEOUT = _helpers.REPLY_TIMEOUT
TINY_CHAT = _helpers.TINY_CHAT
selm_binary = _helpers.selm_binary

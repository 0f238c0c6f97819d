"""Run one learner and N rollout replicas on a Ray cluster (``pip install selm-client[ray]``).

Ray places and supervises; the data path is selm's own: each Ray actor runs the ``selm`` binary
(``selm serve``) as a child process on its node — the learner with ``--role learner``, each replica
with ``--role rollout --follow LEARNER`` — and the driver talks to them with the selm protocol
through the :class:`~selm_client.Cluster` that :func:`launch` returns.

    import ray
    from selm_client.ray import launch

    ray.init()
    with launch(2, model="/models/SmolLM2-135M-Instruct.Q4_1.gguf", selm="/opt/selm/bin/selm") as cluster:
        samples = cluster.generate("Name a colour.", chat=True, n=4, max_tokens=32)
        cluster.submit_preferences([{"prompt": "Name a colour.", "chosen": samples[0].text,
                                     "rejected": samples[1].text, "version": samples[0].version}], chat=True)

**Supervision.** Each actor watches its ``selm`` process; when the process dies (crash, OOM,
``kill -9``) the actor exits too, and Ray restarts it (``max_restarts``), which starts a new
``selm serve``: a replica on a fresh port and data directory (it fetches the learner's newest
version before it listens), the learner on its old port and data directory (it resumes from its
latest checkpoint and replays its preference log, so nothing acknowledged is lost). The cluster's
``discover`` asks the actors for their addresses every ``discover_every`` seconds and whenever a
replica's connection fails, so requests move to the new replica as soon as it listens. The child is
started with ``PR_SET_PDEATHSIG``: an actor killed by Ray takes its ``selm`` process with it.

**Authentication.** One random token (or the ``token`` given) is written to a 0600 file beside each
process's data directory and passed as ``--auth-token-file`` (and ``--follow-auth-token-file`` to
replicas); every selm connection says it in Hello. It reaches the actors as a constructor argument,
i.e. through Ray's own (authenticated) control plane. The selm protocol has no TLS: across machines
keep the cluster on a private network.

**Addresses.** ``host="auto"`` (the default) listens on 127.0.0.1 when the Ray cluster has a single
node and on each node's IP address (``ray.util.get_node_ip_address()``) otherwise.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import ray

from .cluster import Cluster

__all__ = ["launch", "RayCluster", "SelmProcess"]

_LISTENING = re.compile(r"listening on tcp (\S+)")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGKILL when the actor process that started it dies (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _SelmProcess:
    """A Ray actor running one ``selm serve`` (see the module's doc). Thread-safe methods (the actor
    is created with ``max_concurrency`` > 1 so ``address`` answers while another call waits)."""

    def __init__(self, role: str, selm: str, model: str, work_dir: str, token: str, host: str,
                 follow: Optional[str], args: Sequence[str], startup_timeout: float) -> None:
        self.role = role
        if host == "auto":
            host = "127.0.0.1" if len([n for n in ray.nodes() if n.get("Alive")]) <= 1 else ray.util.get_node_ip_address()
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        port = 0
        if role == "learner":
            # The learner keeps its data directory and port across restarts: the replicas follow
            # this address, and its log and checkpoints are what a restart resumes from.
            self.data_dir = work / "data"
            port_file = work / "port"
            if port_file.exists():
                port = int(port_file.read_text().strip() or 0)
        else:
            self.data_dir = Path(tempfile.mkdtemp(prefix="replica-", dir=str(work)))
        token_file = work / ("token-%d" % os.getpid())
        fd = os.open(str(token_file), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        self.token_file = token_file
        cmd = [selm, "serve", "--model", model, "--role", role, "--address", "%s:%d" % (host, port),
               "--data-dir", str(self.data_dir), "--auth-token-file", str(token_file)]
        if follow is not None:
            cmd += ["--follow", follow, "--follow-auth-token-file", str(token_file)]
        cmd += list(args)
        self.cmd = cmd
        self.log_path = Path(str(self.data_dir) + ".log") if role != "learner" else work / "learner.log"
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()
        self._stopping = False
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        self._address = self._wait_listening(startup_timeout)
        if role == "learner":
            (work / "port").write_text(self._address.rpartition(":")[2] + "\n")
        self.started = time.time()
        threading.Thread(target=self._watch, name="selm-watch", daemon=True).start()

    def _tail(self, n: int = 4000, since: int = 0) -> str:
        """The log's last ``n`` bytes (not before byte ``since``)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(since, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("selm serve (%s) exited with status %s:\n%s" % (self.role, self.process.returncode, self._tail()))
            found = _LISTENING.findall(self._tail(1 << 20, since=self._log_start))
            if found:
                return found[-1]
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError("selm serve (%s) did not listen within %.0f s:\n%s" % (self.role, timeout, self._tail()))

    def _watch(self) -> None:
        """The watchdog: a child that dies takes the actor with it, and Ray restarts the actor."""
        code = self.process.wait()
        if self._stopping:
            return
        print("selm serve (%s, pid %d) exited with status %s; restarting the actor" % (self.role, self.process.pid, code),
              file=sys.stderr, flush=True)
        os._exit(1)

    # ── Remote methods ──

    def address(self) -> str:
        """``HOST:PORT`` of this ``selm serve``."""
        return self._address

    def pid(self) -> int:
        """The ``selm serve`` process id (on this actor's node)."""
        return self.process.pid

    def info(self) -> Dict[str, Any]:
        return {"role": self.role, "address": self._address, "pid": self.process.pid, "actor_pid": os.getpid(),
                "data_dir": str(self.data_dir), "log": str(self.log_path), "started": self.started,
                "node_ip": ray.util.get_node_ip_address(), "cmd": self.cmd}

    def log_tail(self, n: int = 4000) -> str:
        return self._tail(n)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM (then SIGKILL after ``timeout``); returns the exit status. A replica's data
        directory is removed; the learner's is kept."""
        self._stopping = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        try:
            self.token_file.unlink()
        except OSError:
            pass
        if self.role != "learner":
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.process.returncode


#: The actor class (``ray.remote`` of :class:`_SelmProcess`); :func:`launch` sets its options.
SelmProcess = ray.remote(_SelmProcess)


class RayCluster(Cluster):
    """A :class:`~selm_client.Cluster` over actors started by :func:`launch`; :meth:`close`
    (or leaving the ``with`` block) stops them."""

    def __init__(self, learner_actor: Any, replica_actors: List[Any], learner_address: str, *,
                 token: str, work_dir: str, keep_work_dir: bool, **kwargs: Any) -> None:
        self.learner_actor = learner_actor
        self.replica_actors = list(replica_actors)
        self.token = token
        self.work_dir = work_dir
        self._keep_work_dir = keep_work_dir
        self._known: Dict[int, str] = {}
        super().__init__(self._discover_addresses(wait=60.0), learner_address, token=token,
                         discover=self._discover_addresses, **kwargs)

    def _discover_addresses(self, wait: float = 1.0) -> List[str]:
        """The replicas' addresses now: an actor being restarted is left out until it answers."""
        refs = {i: a.address.remote() for i, a in enumerate(self.replica_actors)}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=wait)
        out = []
        for i, ref in refs.items():
            if ref in ready:
                try:
                    self._known[i] = ray.get(ref)
                    out.append(self._known[i])
                except Exception:
                    continue
        return out

    def replica_info(self, timeout: float = 30.0) -> List[Dict[str, Any]]:
        """Each replica actor's :meth:`SelmProcess.info` (address, pid, log, ...), waiting for
        actors being restarted."""
        return ray.get([a.info.remote() for a in self.replica_actors], timeout=timeout)

    def learner_info(self, timeout: float = 30.0) -> Dict[str, Any]:
        return ray.get(self.learner_actor.info.remote(), timeout=timeout)

    def close(self) -> None:
        """Closes the connections, stops every ``selm serve`` (SIGTERM) and ends the actors."""
        if self.closed:
            return
        super().close()
        actors = self.replica_actors + [self.learner_actor]
        try:
            ray.get([a.stop.remote() for a in actors], timeout=60)
        except Exception:
            pass
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        if not self._keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def launch(replicas: int, *, model: str, selm: Optional[str] = None, learner_args: Sequence[str] = (),
           replica_args: Sequence[str] = (), token: Optional[str] = None, work_dir: Optional[str] = None,
           host: str = "auto", max_restarts: int = -1, learner_options: Optional[Dict[str, Any]] = None,
           replica_options: Optional[Dict[str, Any]] = None, startup_timeout: float = 300.0,
           discover_every: float = 1.0, **cluster_kwargs: Any) -> RayCluster:
    """Starts one learner and ``replicas`` rollout replicas as Ray actors and returns the
    :class:`RayCluster` (a :class:`~selm_client.Cluster`) connected to them.

    Args:
        replicas: rollout replicas to start (≥ 1).
        model: the model path (a ``.gguf`` file or a Hugging Face directory), the same on every node.
        selm: the ``selm`` binary, the same path on every node (default ``$SELM_BIN``, else
            ``selm`` on the driver's ``PATH``).
        learner_args, replica_args: more ``selm serve`` options (``--lr``, ``--engine-precision``, ...).
        token: the shared secret (default: a fresh random one, :attr:`RayCluster.token`).
        work_dir: where each node keeps the processes' data directories, logs and token files
            (default a new directory under the system's temporary directory; removed by
            :meth:`RayCluster.close` unless given). The learner's is ``WORK_DIR/learner``: put it on
            the node that keeps it (``learner_options={"resources": ...}``) to survive restarts.
        host: the address to listen on (see the module's doc).
        max_restarts: Ray restarts of each actor (-1: unlimited).
        learner_options, replica_options: more ``.options(...)`` for the actors (``num_cpus``
            defaults to 1 each; e.g. ``scheduling_strategy="SPREAD"`` for the replicas).
        startup_timeout: seconds each ``selm serve`` has to load its model and listen.
        discover_every: seconds between the cluster's looks at the replicas' addresses.
        cluster_kwargs: passed to :class:`~selm_client.Cluster` (``timeout``, ``version_timeout``).
    """
    if replicas < 1:
        raise ValueError("replicas must be at least 1, got %d" % replicas)
    if not ray.is_initialized():
        ray.init()
    selm = selm or os.environ.get("SELM_BIN") or shutil.which("selm")
    if not selm:
        raise ValueError("no selm binary: pass selm=PATH or set SELM_BIN")
    token = token or secrets.token_urlsafe(24)
    keep = work_dir is not None
    work_dir = work_dir or os.path.join(tempfile.gettempdir(), "selm-ray-%s" % secrets.token_hex(4))
    base = {"num_cpus": 1, "max_restarts": max_restarts, "max_concurrency": 4}
    learner = SelmProcess.options(**dict(base, **(learner_options or {}))).remote(
        "learner", selm, model, os.path.join(work_dir, "learner"), token, host, None, list(learner_args), startup_timeout)
    actors: List[Any] = []
    try:
        learner_address = ray.get(learner.address.remote(), timeout=startup_timeout + 60)
        actors += [SelmProcess.options(**dict(base, **(replica_options or {}))).remote(
            "rollout", selm, model, os.path.join(work_dir, "replicas"), token, host, learner_address,
            list(replica_args), startup_timeout) for _ in range(replicas)]
        ray.get([a.address.remote() for a in actors], timeout=startup_timeout + 60)
    except BaseException:
        for a in [learner] + actors:
            try:
                ray.get(a.stop.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(a, no_restart=True)
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return RayCluster(learner, actors, learner_address, token=token, work_dir=work_dir, keep_work_dir=keep,
                      discover_every=discover_every, **cluster_kwargs)

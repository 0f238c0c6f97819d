"""Plain result types returned by :class:`selm_client.Client` (no protobuf objects leak out).

Field meanings follow ``Proto/selm.proto``; token ids are ints, log-probabilities are natural logs.
``top_logprobs`` entries are dicts ``{token_id: logprob}`` ordered most likely first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

__all__ = [
    "HelloInfo",
    "Chunk",
    "Sample",
    "GenerateDone",
    "ScoredItem",
    "ScoreResult",
    "PreferenceAck",
    "Status",
    "Checkpoint",
    "VersionEvent",
    "FINISH_REASONS",
]

#: ``selm.v1.FinishReason`` numbers → the names used in :attr:`Sample.finish_reason`.
FINISH_REASONS: Dict[int, str] = {0: "unspecified", 1: "eos", 2: "stop", 3: "length", 4: "cancelled"}


@dataclass(frozen=True)
class HelloInfo:
    """What the server said about itself in reply to Hello."""
    protocol_version: int
    server_version: str
    model_name: str
    model_path: str
    policy_version: int   #: the weight version current when the connection was opened
    vocab_size: int       #: token ids are < vocab_size
    context_length: int   #: maximum prompt + completion tokens per sequence
    chat_template: str    #: the chat template source, or the name of the built-in one
    max_frame_bytes: int  #: the largest frame the server accepts
    engine_precision: str = ""  #: "f32", "bf16" or "q8": what every returned log-prob and score is computed in


@dataclass
class Chunk:
    """Newly produced tokens of one sample (``generate(..., stream=True)`` only)."""
    prompt_index: int
    sample_index: int
    token_ids: List[int]
    text_delta: str        #: text completed by these tokens (may lag by a partial character or a held-back stop prefix)
    logprobs: List[float]  #: one per token in ``token_ids``
    top_logprobs: List[Dict[int, float]] = field(default_factory=list)


@dataclass
class Sample:
    """One finished sample of a generation."""
    prompt_index: int
    sample_index: int
    token_ids: List[int]   #: all completion tokens
    text: str              #: the completion's text (a matched stop string removed)
    logprobs: List[float]  #: log-probability of each completion token under the weights that produced it
    top_logprobs: List[Dict[int, float]]
    finish_reason: str     #: "eos", "stop", "length" or "cancelled"
    version: int           #: the weight version that produced the sample
    first_version: int     #: the version bound at admission (differs from ``version`` only after a move: ``recompute``, or its version retired)
    prompt_tokens: int     #: tokens in the (templated) prompt
    completion_tokens: int  #: ``len(token_ids)``


@dataclass(frozen=True)
class GenerateDone:
    """The end of a generation: totals over its samples."""
    samples: int
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ScoredItem:
    """Log-probabilities of one score item's continuation."""
    token_ids: List[int]
    logprobs: List[float]
    total_logprob: float
    top_logprobs: List[Dict[int, float]]
    #: per token, with ``score(..., entropy=True)``: entropy (nats) of the full next-token distribution
    entropies: List[float] = field(default_factory=list)


@dataclass
class ScoreResult:
    """Reply to :meth:`Client.score`: one item per request item, and the weight version used."""
    items: List[ScoredItem]
    version: int


@dataclass(frozen=True)
class PreferenceAck:
    """The rows are durable in the server's write-ahead log (fsynced) under these sequence numbers."""
    first_sequence: int
    last_sequence: int
    rows: int            #: rows written to the log
    stale_rows: int = 0  #: rows dropped as too stale (``selm serve --max-staleness``); not in the log


@dataclass
class Status:
    """The server's state."""
    policy_version: int
    learner_step: int
    learner_metrics: Dict[str, float]  #: latest training metrics ("loss", "rewards/margins", ...)
    wal_last_sequence: int
    wal_consumed_sequence: int
    waiting_requests: int
    running_sequences: int
    kv_blocks_used: int
    kv_blocks_total: int
    generated_tokens_per_second: float
    uptime_seconds: float
    live_versions: int
    connections: int
    data_dir_bytes: int = 0    #: bytes allocated under the server's data directory (measured at most seconds ago)
    disk_free_bytes: int = 0   #: bytes free on the data directory's filesystem
    checkpoints: int = 0       #: checkpoint directories in DATA/checkpoints
    engine_precision: str = "" #: as ``HelloInfo.engine_precision``
    #: Staleness of the preference rows received with a ``version`` (the learner's newest version
    #: minus the row's, at intake): upper bound in versions (inclusive; 2**64-1 for the last bucket)
    #: → rows in (previous bound, bound]. Empty until a row with a version arrives.
    staleness: Dict[int, int] = field(default_factory=dict)
    stale_rows_dropped: int = 0  #: rows dropped by ``--max-staleness`` since the server started
    role: str = ""              #: "all", "rollout" or "learner" (``selm serve --role``)
    following: str = ""         #: the learner a rollout replica follows (``--follow``), else ""
    reference_version: int = 0  #: as :attr:`VersionEvent.reference_version` of the current version


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint written by :meth:`Client.save_checkpoint`."""
    path: str          #: relative to the server's data directory
    learner_step: int
    wal_sequence: int  #: last WAL sequence consumed by the state it holds
    version: int       #: the weight version it holds


@dataclass
class VersionEvent:
    """A weight version was published (the first event of a subscription is the current one)."""
    version: int
    learner_step: int
    metrics: Dict[str, float]
    unix_time: float
    #: the version serving the reference policy the learner trained this version against (the frozen
    #: start version, or the previous iteration's with ``--ref-refresh-steps``); kept alive by the
    #: server so :meth:`Client.score` can name it. 0 = none served.
    reference_version: int = 0

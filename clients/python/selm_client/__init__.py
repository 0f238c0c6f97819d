"""Python client for ``selm serve``: rollouts over sockets, streamed preferences, live weight versions.

>>> from selm_client import Client
>>> with Client("127.0.0.1:7070") as c:
...     samples = c.generate("What is 2+2?", chat=True, n=4, max_tokens=32, temperature=0.8)
...     ack = c.submit_preferences([{"prompt": "What is 2+2?", "chosen": samples[0].text,
...                                  "rejected": samples[1].text}], chat=True)

See :class:`Client` for every call, :mod:`selm_client.errors` for the exceptions and
:mod:`selm_client.types` for the result types; :mod:`selm_client.aio` has the same calls for asyncio
(``AsyncClient``). :class:`Cluster` spreads generation over rollout replicas and sends preferences
to their learner; :mod:`selm_client.ray` (``pip install selm-client[ray]``) starts such a deployment
on Ray.
"""

from .client import DEFAULT_ADDRESS, PROTOCOL_VERSION, Client, GenerateStream, VersionSubscription
from .cluster import Cluster, ClusterGenerateStream, ReplicaInfo
from .errors import (Cancelled, ConnectionClosed, FrameTooLarge, Internal, InvalidArgument, Malformed, NotFound,
                     OutOfRange, PermissionDenied, ProtocolError, ResourceExhausted, SelmError, Timeout,
                     Unauthenticated, UnknownBody, Unavailable, UnsupportedVersion)
from .types import (Checkpoint, Chunk, GenerateDone, HelloInfo, PreferenceAck, Sample, ScoredItem, ScoreResult,
                    Status, VersionEvent)

__version__ = "0.1.0"

__all__ = [
    "Client", "GenerateStream", "VersionSubscription", "DEFAULT_ADDRESS", "PROTOCOL_VERSION",
    "Cluster", "ClusterGenerateStream", "ReplicaInfo",
    "SelmError", "InvalidArgument", "Unauthenticated", "NotFound", "ResourceExhausted", "FrameTooLarge",
    "Malformed", "UnknownBody", "UnsupportedVersion", "PermissionDenied", "Cancelled", "Internal", "Unavailable",
    "OutOfRange", "ConnectionClosed", "Timeout", "ProtocolError",
    "HelloInfo", "Chunk", "Sample", "GenerateDone", "ScoredItem", "ScoreResult", "PreferenceAck", "Status",
    "Checkpoint", "VersionEvent",
]

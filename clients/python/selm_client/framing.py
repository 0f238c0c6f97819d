"""Frames of the selm wire protocol: a 4-byte big-endian body length N, then N bytes holding one
serialized ``selm.v1.Envelope``.

:func:`encode_frame` builds a frame; :class:`FrameReader` splits a byte stream into frame bodies,
whatever the chunk boundaries.
"""

from __future__ import annotations

from typing import List, Optional

from . import selm_pb2 as pb
from .errors import FrameTooLarge

__all__ = ["HEADER_SIZE", "DEFAULT_MAX_FRAME_BYTES", "encode_frame", "decode_body", "FrameReader"]

HEADER_SIZE = 4
#: The protocol's default frame limit (16 MiB), used until the server announces its own.
DEFAULT_MAX_FRAME_BYTES = 16 << 20


def encode_frame(envelope: "pb.Envelope", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Serializes ``envelope`` with its length prefix.

    Raises:
        FrameTooLarge: the body would exceed ``max_frame_bytes`` (the receiver's limit).
    """
    body = envelope.SerializeToString()
    if len(body) > max_frame_bytes or len(body) > 0xFFFFFFFF:
        raise FrameTooLarge("frame of %d bytes exceeds the limit of %d bytes" % (len(body), max_frame_bytes),
                            request_id=envelope.id)
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def decode_body(body: bytes) -> "pb.Envelope":
    """Parses one frame body (without its header) as an Envelope.

    Raises:
        google.protobuf.message.DecodeError: the bytes are not a valid Envelope.
    """
    envelope = pb.Envelope()
    envelope.ParseFromString(body)
    return envelope


class FrameReader:
    """Splits a byte stream into frame bodies.

    Feed it what the socket delivered with :meth:`feed`; it returns the bodies completed so far.
    A header announcing more than ``max_frame_bytes`` raises :class:`FrameTooLarge` (the stream
    cannot be trusted after that; the client closes the connection).
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._need: Optional[int] = None  # body length of the frame being collected

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> List[bytes]:
        """Consumes a chunk of the stream; returns the frame bodies it completed, in order."""
        self._buffer += data
        out: List[bytes] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER_SIZE:
                    return out
                size = int.from_bytes(self._buffer[:HEADER_SIZE], "big")
                del self._buffer[:HEADER_SIZE]
                if size > self.max_frame_bytes:
                    raise FrameTooLarge("server sent a frame of %d bytes, over this client's limit of %d bytes"
                                        % (size, self.max_frame_bytes))
                self._need = size
            if len(self._buffer) < self._need:
                return out
            out.append(bytes(self._buffer[:self._need]))
            del self._buffer[:self._need]
            self._need = None

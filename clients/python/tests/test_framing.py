"""Framing and encoding against byte fixtures (no server needed): the frames in
Tests/WireTests/Fixtures/python_frames.json are the ones the Swift `Wire` module is checked against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selm_client import FrameTooLarge, InvalidArgument
from selm_client import selm_pb2 as pb
from selm_client.errors import error_from_code
from selm_client.framing import FrameReader, decode_body, encode_frame

FIXTURE = Path(__file__).resolve().parents[3] / "Tests/WireTests/Fixtures/python_frames.json"


@pytest.fixture(scope="module")
def frames() -> list:
    if not FIXTURE.is_file():  # the cross-check is the point of this file: a missing fixture fails it
        pytest.fail("%s is missing (scripts/make_reference.py wire writes it)" % FIXTURE)
    return [bytes.fromhex(f["frame"]) for f in json.loads(FIXTURE.read_text())["frames"]]


def test_frames_re_encode_to_the_same_bytes(frames: list) -> None:
    for frame in frames:
        body = frame[4:]
        assert int.from_bytes(frame[:4], "big") == len(body)
        envelope = decode_body(body)
        again = encode_frame(envelope)
        assert again[:4] == frame[:4]
        # Map entries (metrics) may be serialized in any order; everything else byte for byte.
        assert decode_body(again[4:]) == envelope
        if envelope.WhichOneof("body") not in ("status_reply", "version_event"):
            assert again == frame


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_reader_splits_a_stream_at_any_chunk_size(frames: list, chunk: int) -> None:
    stream = b"".join(frames)
    reader = FrameReader()
    bodies = []
    for i in range(0, len(stream), chunk):
        bodies += reader.feed(stream[i:i + chunk])
    assert bodies == [f[4:] for f in frames]
    assert reader.buffered == 0


def test_empty_body_is_a_frame() -> None:
    assert FrameReader().feed(b"\x00\x00\x00\x00") == [b""]
    assert decode_body(b"") == pb.Envelope()


def test_reader_refuses_an_oversize_header() -> None:
    reader = FrameReader(max_frame_bytes=10)
    with pytest.raises(FrameTooLarge):
        reader.feed(b"\x00\x00\x00\x0b")


def test_encode_refuses_an_oversize_body() -> None:
    env = pb.Envelope(id=1, tokenize=pb.TokenizeRequest(text="x" * 100))
    with pytest.raises(FrameTooLarge) as e:
        encode_frame(env, max_frame_bytes=50)
    assert e.value.request_id == 1


def test_error_codes_map_to_classes() -> None:
    e = error_from_code(1, "sampling.top_p: must be in (0, 1]", "sampling.top_p", 7)
    assert isinstance(e, InvalidArgument)
    assert (e.code, e.code_name, e.field, e.request_id) == (1, "INVALID_ARGUMENT", "sampling.top_p", 7)
    assert str(e) == "INVALID_ARGUMENT: sampling.top_p: must be in (0, 1]"
    unknown = error_from_code(99, "new", "")
    assert unknown.code == 99 and unknown.code_name == "CODE_99"
    for code in range(1, 14):
        assert error_from_code(code, "m").code == code

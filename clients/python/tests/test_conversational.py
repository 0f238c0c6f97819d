"""Conversational preference rows (TRL's format: the prompt and each response lists of messages) sent
by ``submit_preferences`` reach the server's log as TRL 1.16's ``DPOTrainer`` token ids
(Tests/TokenizerTests/Fixtures/trl_rows.json, written by scripts/reference/trl_rows.py), against a real
``selm serve`` (see conftest.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import REPO
from selm_client import InvalidArgument
from selm_client import selm_pb2 as pb

FIXTURE = REPO / "Tests/TokenizerTests/Fixtures/trl_rows.json"


def fixture_rows() -> List[Dict[str, Any]]:
    """The fixture's rows, each with SmolLM2's ids of it under ``"ids"``."""
    top = json.loads(FIXTURE.read_text())
    smol = next(t for t in top["tokenizers"] if t["tokenizer"] == "smollm2")
    return [{"row": {k: r[k] for k in ("prompt", "chosen", "rejected")}, "ids": e["ids"]}
            for r, e in zip(top["rows"], smol["rows"])]


def logged_batch(data_dir: Path, sequence: int) -> "pb.SubmitPreferences":
    """Record ``sequence`` of the server's preference log (Sources/PreferenceLog: a 16-byte file header,
    then records of u32 length, u32 CRC32C, u64 sequence, little-endian, and a serialized Envelope whose
    body is the batch with every part as token ids)."""
    data = (data_dir / "preferences.wal").read_bytes()
    assert data[:8] == b"SELMWAL1"
    offset = 16
    while offset + 16 <= len(data):
        length, _crc, seq = struct.unpack_from("<IIQ", data, offset)
        if seq == sequence:
            envelope = pb.Envelope.FromString(data[offset + 16:offset + 16 + length])
            assert envelope.id == sequence
            return envelope.submit_preferences
        offset += 16 + length
    raise AssertionError("no record %d in the log" % sequence)


def test_conversational_rows_are_logged_as_trls_ids(server) -> None:  # type: ignore[no-untyped-def]
    rows = fixture_rows()
    assert sum(isinstance(r["row"]["prompt"], list) for r in rows) == 4
    with server.client() as client:
        ack = client.submit_preferences([r["row"] for r in rows])  # chat=False: standard rows as TRL, plain
    assert ack.rows == len(rows) and ack.first_sequence == ack.last_sequence
    batch = logged_batch(server.data_dir, ack.first_sequence)
    assert len(batch.rows) == len(rows)
    for got, want in zip(batch.rows, rows):
        assert list(got.prompt.ids.ids) == want["ids"]["prompt"], want["row"]["prompt"]
        assert list(got.chosen.ids.ids) == want["ids"]["chosen"], want["row"]["chosen"]
        assert list(got.rejected.ids.ids) == want["ids"]["rejected"], want["row"]["rejected"]


@pytest.mark.parametrize("row, field", [
    # A conversational response beside a text prompt: TRL's rules need a conversational prompt.
    ({"prompt": "Hi", "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": "No."}, "rows[0].chosen.messages"),
    # Not ending with the assistant's turn.
    ({"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello.",
      "rejected": [{"role": "assistant", "content": "No."}, {"role": "user", "content": "?"}]}, "rows[0].rejected.messages"),
])
def test_conversational_rows_breaking_trls_rules_are_refused_by_field(client, row, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as e:
        client.submit_preferences([row])
    assert e.value.field == field
    assert "conversational" in e.value.message
    assert client.submit_preferences([{"prompt": [{"role": "user", "content": "Hi"}],
                                       "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": "No."}]).rows == 1


def test_conversational_score_continuation_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as e:
        client.score([([{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello."}])])
    assert e.value.field == "items[0].continuation.messages"

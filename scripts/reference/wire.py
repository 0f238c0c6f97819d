"""Reference frames for the wire protocol (WireTests: PythonCrossCheckTests).

Everything here is encoded by Google's `protobuf` Python package from the generated
`clients/python/selm_client/selm_pb2.py`, so the Swift (protobuf-c) side is checked against code
this project did not write:
  - every message the Swift tests build natively is built here too, under the same name, and
    written as a complete frame (4-byte big-endian length + serialized Envelope, with
    `deterministic=True` so map entries are sorted by key). Swift must decode each frame to its own
    value, and must encode its own value to exactly these bytes (so Python also reads Swift's frames);
  - a few requests that are valid protobuf but invalid requests, with the field path Swift must name.

Writes <root>/Tests/WireTests/Fixtures/python_frames.json:
  {"protobuf": version, "frames": [{"name", "direction": "client"|"server", "frame": hex}],
   "invalid": [{"name", "frame": hex, "id", "field"}]}

Run with the reference venv (needs only `protobuf`):
    /tmp/refvenv/bin/python -m pip install protobuf
    /tmp/refvenv/bin/python scripts/reference/wire.py [root]
"""
from __future__ import annotations

import json
import pathlib
import struct
import sys

U64_MAX = 2**64 - 1


def load_pb2(root: pathlib.Path):
    sys.path.insert(0, str(root / "clients" / "python" / "selm_client"))
    import selm_pb2  # noqa: E402

    return selm_pb2


def frame(envelope) -> bytes:
    body = envelope.SerializeToString(deterministic=True)
    return struct.pack(">I", len(body)) + body


def client_samples(pb):
    """Must match `Samples.client` in Tests/WireTests/Samples.swift, name for name."""
    E = pb.Envelope
    msgs = lambda *pairs: pb.Messages(messages=[pb.ChatMessage(role=r, content=c) for r, c in pairs])
    return [
        ("hello", E(id=1, hello=pb.Hello(protocol_version=1, auth_token="s3cret", client_name="selm-python/0.1"))),
        ("generate_full", E(id=2, generate=pb.GenerateRequest(
            prompts=[
                pb.Prompt(text="What is the capital of France?"),
                pb.Prompt(ids=pb.TokenIds(ids=[1, 2, 3, 49151])),
                pb.Prompt(messages=msgs(("system", "You are terse."), ("user", "Hi 👋"))),
            ],
            chat=True,
            sampling=pb.SamplingParams(
                temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1,
                presence_penalty=0.5, frequency_penalty=-0.25, seed=1234567890123, max_tokens=64),
            n=4, stop=["\n\n", "User:"], stop_token_ids=[2, 7], ignore_eos=True, stream=True,
            top_logprobs=5, require_version=0, recompute=True))),
        ("generate_minimal", E(id=3, generate=pb.GenerateRequest(prompts=[pb.Prompt(text="")], n=1))),
        ("generate_partial_sampling", E(id=31, generate=pb.GenerateRequest(
            prompts=[pb.Prompt(text="Once upon a time")], n=2,
            sampling=pb.SamplingParams(temperature=0.0, max_tokens=16), require_version=7))),
        ("cancel", E(id=4, cancel=pb.Cancel(target_id=2))),
        ("score", E(id=5, score=pb.ScoreRequest(
            items=[
                pb.ScoreItem(prompt=pb.Prompt(text="2+2="), continuation=pb.Response(text=" 4")),
                pb.ScoreItem(prompt=pb.Prompt(ids=pb.TokenIds(ids=[5, 6])),
                             continuation=pb.Response(ids=pb.TokenIds(ids=[7]))),
            ],
            version=3, top_logprobs=2))),
        ("tokenize_text", E(id=6, tokenize=pb.TokenizeRequest(text="<|im_start|>user", add_special=True))),
        ("tokenize_messages", E(id=7, tokenize=pb.TokenizeRequest(
            messages=msgs(("user", "Hello"), ("assistant", "Hi!")), chat=True))),
        ("detokenize", E(id=8, detokenize=pb.DetokenizeRequest(ids=[1, 2, 3, 4294967295]))),
        ("submit_preferences", E(id=9, submit_preferences=pb.SubmitPreferences(
            rows=[
                pb.PreferenceRow(prompt=pb.Prompt(text="Name a colour."), chosen=pb.Response(text="Blue."),
                                 rejected=pb.Response(text="Seven."), reference=pb.Response(text="Red."),
                                 weight=0.5, source="pairrm"),
                pb.PreferenceRow(prompt=pb.Prompt(ids=pb.TokenIds(ids=[10, 11])),
                                 chosen=pb.Response(ids=pb.TokenIds(ids=[12])),
                                 rejected=pb.Response(ids=pb.TokenIds(ids=[13, 14])), weight=1.0),
            ],
            chat=True))),
        ("status", E(id=10, status=pb.StatusRequest())),
        ("refresh_weights", E(id=11, refresh_weights=pb.RefreshWeights(checkpoint="checkpoints/step-100"))),
        ("save_checkpoint", E(id=12, save_checkpoint=pb.SaveCheckpoint())),
        ("save_checkpoint_named", E(id=13, save_checkpoint=pb.SaveCheckpoint(name="manual/before-eval"))),
        ("subscribe_versions", E(id=U64_MAX, subscribe_versions=pb.SubscribeVersions())),
        ("score_entropy", E(id=14, score=pb.ScoreRequest(
            items=[pb.ScoreItem(prompt=pb.Prompt(text="Hi"), continuation=pb.Response(ids=pb.TokenIds(ids=[3, 4])))],
            entropy=True))),
        ("submit_preferences_versioned", E(id=15, submit_preferences=pb.SubmitPreferences(rows=[
            pb.PreferenceRow(prompt=pb.Prompt(ids=pb.TokenIds(ids=[1])), chosen=pb.Response(ids=pb.TokenIds(ids=[2])),
                             rejected=pb.Response(ids=pb.TokenIds(ids=[3])), weight=2.0, version=41),
            pb.PreferenceRow(prompt=pb.Prompt(ids=pb.TokenIds(ids=[1])), chosen=pb.Response(ids=pb.TokenIds(ids=[4])),
                             rejected=pb.Response(ids=pb.TokenIds(ids=[5])), weight=1.0, version=0),
        ]))),
        ("fetch_weights", E(id=16, fetch_weights=pb.FetchWeights(version=43, chunk_bytes=65536, dtype="bf16"))),
        ("fetch_weights_newest", E(id=17, fetch_weights=pb.FetchWeights(chunk_bytes=1 << 20))),  # 0 decodes as 1 MiB
    ]


def server_samples(pb):
    """Must match `Samples.server` in Tests/WireTests/Samples.swift, name for name."""
    E = pb.Envelope
    tops = [pb.TopLogprobs(token_ids=[5, 9], logprobs=[-0.25, -1.5]),
            pb.TopLogprobs(token_ids=[7], logprobs=[-0.125])]
    return [
        ("error", E(id=2, error=pb.Error(code=pb.ERROR_CODE_INVALID_ARGUMENT,
                                         message="prompts[2].ids: must not be empty", field="prompts[2].ids"))),
        ("error_unrecognized_code", E(id=3, error=pb.Error(code=99, message="from the future"))),
        ("hello_reply", E(id=1, hello_reply=pb.HelloReply(
            protocol_version=1, server_version="0.1.0", model_name="SmolLM2-135M-Instruct",
            model_path="models/SmolLM2-135M-Instruct.Q4_1.gguf", policy_version=42, vocab_size=49152,
            context_length=8192, chat_template="chatml", max_frame_bytes=16 << 20))),
        ("generate_chunk", E(id=2, generate_chunk=pb.GenerateChunk(
            prompt_index=1, sample_index=3, token_ids=[5, 7], text_delta="Par",
            logprobs=[-0.25, -0.125], top_logprobs=tops))),
        ("sample_result", E(id=2, sample_result=pb.SampleResult(
            prompt_index=0, sample_index=1, token_ids=[5, 7, 2], text="Paris.",
            logprobs=[-0.25, -0.125, float("-inf")], top_logprobs=tops,
            finish_reason=pb.FINISH_REASON_STOP, version=41, first_version=40, prompt_tokens=12,
            completion_tokens=3))),
        ("sample_result_unrecognized", E(id=2, sample_result=pb.SampleResult(finish_reason=9, version=1,
                                                                             first_version=1))),
        ("generate_done", E(id=2, generate_done=pb.GenerateDone(samples=12, prompt_tokens=144,
                                                                completion_tokens=4096))),
        ("cancel_reply", E(id=4, cancel_reply=pb.CancelReply(found=True))),
        ("score_reply", E(id=5, score_reply=pb.ScoreReply(
            items=[pb.ScoredItem(token_ids=[220, 19], logprobs=[-0.5, -2.0], total_logprob=-2.5),
                   pb.ScoredItem(token_ids=[7], logprobs=[-0.25], total_logprob=-0.25, top_logprobs=tops[:1])],
            version=3))),
        ("tokenize_reply", E(id=6, tokenize_reply=pb.TokenizeReply(ids=[1, 882, 198]))),
        ("detokenize_reply", E(id=8, detokenize_reply=pb.DetokenizeReply(text="héllo wörld 🌍\n"))),
        ("preference_ack", E(id=9, preference_ack=pb.PreferenceAck(first_sequence=100, last_sequence=101, rows=2))),
        ("status_reply", E(id=10, status_reply=pb.StatusReply(
            policy_version=42, learner_step=420,
            learner_metrics={"loss": 0.6875, "rewards/margins": 0.125, "grad_norm": 1.5},
            wal_last_sequence=101, wal_consumed_sequence=99, waiting_requests=3, running_sequences=8,
            kv_blocks_used=120, kv_blocks_total=512, generated_tokens_per_second=812.5,
            uptime_seconds=3600.25, live_versions=2, connections=5))),
        ("refresh_weights_reply", E(id=11, refresh_weights_reply=pb.RefreshWeightsReply(version=43))),
        ("save_checkpoint_reply", E(id=12, save_checkpoint_reply=pb.SaveCheckpointReply(
            path="checkpoints/step-420", learner_step=420, wal_sequence=99, version=42))),
        ("version_event", E(id=U64_MAX, version_event=pb.VersionEvent(
            version=43, learner_step=430, metrics={"loss": 0.5, "rewards/accuracies": 0.75},
            unix_time=1767225600.5))),
        ("hello_reply_precision", E(id=1, hello_reply=pb.HelloReply(
            protocol_version=1, server_version="0.1.0", model_name="m", model_path="m.gguf", policy_version=1,
            vocab_size=32, context_length=64, chat_template="chatml", max_frame_bytes=1 << 20,
            engine_precision="bf16"))),
        ("preference_ack_stale", E(id=15, preference_ack=pb.PreferenceAck(first_sequence=102, last_sequence=102, rows=1,
                                                                         stale_rows=1))),
        ("score_reply_entropy", E(id=14, score_reply=pb.ScoreReply(
            items=[pb.ScoredItem(token_ids=[3, 4], logprobs=[-1.5, -0.75], total_logprob=-2.25, entropies=[2.5, 0.0625])],
            version=7))),
        ("status_reply_full", E(id=10, status_reply=pb.StatusReply(
            policy_version=43, learner_step=430, wal_last_sequence=7, wal_consumed_sequence=7, kv_blocks_total=512,
            uptime_seconds=12.5, live_versions=3, connections=1, data_dir_bytes=123456789, disk_free_bytes=1 << 40,
            checkpoints=2, engine_precision="q8",
            staleness=[pb.StalenessBucket(le=0, rows=10), pb.StalenessBucket(le=1, rows=4),
                       pb.StalenessBucket(le=U64_MAX, rows=1)],
            stale_rows_dropped=3, role="rollout", following="10.0.0.2:7000", reference_version=41))),
        ("version_event_reference", E(id=U64_MAX, version_event=pb.VersionEvent(
            version=44, learner_step=440, unix_time=1767225601.25, reference_version=42))),
        ("weights_chunk", E(id=16, weights_chunk=pb.WeightsChunk(offset=1 << 20, data=bytes([0, 1, 2, 128, 255]),
                                                                 crc32c=0xE3069283))),
        ("weights_done", E(id=16, weights_done=pb.WeightsDone(
            version=43, dtype="bf16",
            tensors=[pb.TensorLayout(name="model.embed_tokens.weight", shape=[32, 8], offset=0, length=1024, dtype="f32"),
                     pb.TensorLayout(name="model.layers.0.self_attn.q_proj.weight", shape=[8, 8], offset=1024,
                                     length=128, dtype="bf16")],
            total_bytes=1152, crc32c=0x12345678, chunks=2, learner_step=430))),
    ]


def invalid_requests(pb):
    """Valid protobuf, invalid requests: (name, envelope, field path Swift must report)."""
    E = pb.Envelope
    text = pb.Prompt(text="hi")
    return [
        ("n_too_large", E(id=20, generate=pb.GenerateRequest(prompts=[text], n=65)), "n"),
        ("empty_ids", E(id=21, generate=pb.GenerateRequest(
            prompts=[text, text, pb.Prompt(ids=pb.TokenIds())])), "prompts[2].ids"),
        ("top_p_zero", E(id=22, generate=pb.GenerateRequest(
            prompts=[text], sampling=pb.SamplingParams(top_p=0.0))), "sampling.top_p"),
        ("no_prompts", E(id=23, generate=pb.GenerateRequest()), "prompts"),
        ("missing_rejected", E(id=24, submit_preferences=pb.SubmitPreferences(
            rows=[pb.PreferenceRow(prompt=text, chosen=pb.Response(text="a"))])), "rows[0].rejected"),
        ("escaping_checkpoint", E(id=25, refresh_weights=pb.RefreshWeights(checkpoint="../etc/passwd")),
         "checkpoint"),
    ]


def main(root: pathlib.Path) -> None:
    root = pathlib.Path(root)
    pb = load_pb2(root)
    import google.protobuf

    frames = []
    for direction, samples in (("client", client_samples(pb)), ("server", server_samples(pb))):
        for name, envelope in samples:
            data = frame(envelope)
            # Round trip through Python itself first: the fixture must be what protobuf means.
            assert pb.Envelope.FromString(data[4:]) == envelope, name
            frames.append({"name": name, "direction": direction, "frame": data.hex()})
    invalid = [{"name": name, "frame": frame(env).hex(), "id": env.id, "field": field}
               for name, env, field in invalid_requests(pb)]
    out = root / "Tests" / "WireTests" / "Fixtures" / "python_frames.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"protobuf": google.protobuf.__version__, "frames": frames, "invalid": invalid},
                              indent=1) + "\n")
    print(f"wrote {out} ({len(frames)} frames, {len(invalid)} invalid requests)")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])

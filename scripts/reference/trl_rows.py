"""Reference fixture for the TRL row rule (`Tokenizer.TRLRow` + `PromptResponseEncoder`), produced by TRL.

Writes `<root>/Tests/TokenizerTests/Fixtures/trl_rows.json`: preference rows as TRL datasets carry
them (conversational: prompt a list of messages with and without a system message, chosen/rejected
one assistant message or several turns; standard: plain strings), and for each tokenizer

- `strings`: what `trl.data_utils.maybe_apply_chat_template` makes of the row (prompt rendered with
  the generation prompt; each response = the rendering of prompt + response after their common
  prefix), and
- `ids`: the `prompt_ids` / `chosen_ids` / `rejected_ids` of `DPOTrainer._prepare_dataset` (the
  prompt with the generation prompt and prompt + response tokenized by `apply_chat_template`; the
  response is what follows the tokens both share; standard rows get the EOS text appended and are
  tokenized without a template).

Tokenizers: SmolLM2-135M-Instruct (its GGUF vocabulary, merges and chat template in a transformers
`PreTrainedTokenizerFast`, built as `tokenizer.py` builds it) and the tiny-chat fixture model
(`Tests/ModelTests/Fixtures/tiny-chat`: its tokenizer.json and chat template).

Run: `python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install trl transformers torch==2.13.0+cpu gguf`
then `/tmp/trlvenv/bin/python scripts/reference/trl_rows.py` from the package root.
"""

from __future__ import annotations

import json
import pathlib
import sys
import types

import datasets
import transformers
import trl
from trl.data_utils import maybe_apply_chat_template
from trl.trainer.dpo_trainer import DPOTrainer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from reference.tokenizer import build_smollm2_tokenizer, model_path, read_gguf_tokenizer  # noqa: E402


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


CONVERSATIONAL = [
    {
        "name": "system prompt, one assistant message each",
        "prompt": [msg("system", "You are terse."), msg("user", "What color is the sky?")],
        "chosen": [msg("assistant", "It is blue.")],
        "rejected": [msg("assistant", "It is green.")],
    },
    {
        "name": "no system message (a template may insert its default)",
        "prompt": [msg("user", "Name a prime number.")],
        "chosen": [msg("assistant", "7")],
        "rejected": [msg("assistant", "Nine, probably.")],
    },
    {
        "name": "several turns in chosen",
        "prompt": [msg("system", "Answer in French."), msg("user", "Hello!")],
        "chosen": [msg("assistant", "Bonjour !"), msg("user", "And goodbye?"), msg("assistant", "Au revoir.")],
        "rejected": [msg("assistant", "Hello!")],
    },
    {
        "name": "multi-turn prompt, leading space and non-ASCII in responses",
        "prompt": [msg("user", "2+2?"), msg("assistant", "4."), msg("user", "Und auf Deutsch? 🙂")],
        "chosen": [msg("assistant", " Vier – ganz sicher.\n")],
        "rejected": [msg("assistant", "Fünf")],
    },
]

STANDARD = [
    {
        "name": "standard: prompt and responses as strings",
        "prompt": "The sky is",
        "chosen": " blue.",
        "rejected": " green.",
    },
]


def dpo_ids(rows: list[dict], tok) -> list[dict]:
    """`DPOTrainer._prepare_dataset` on `rows` (the trainer's own tokenization, no model needed)."""
    cols = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
    ds = datasets.Dataset.from_dict(cols)
    stub = types.SimpleNamespace(_tokenizer=tok)
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    out = DPOTrainer._prepare_dataset(stub, ds, tok, args, "fixture")
    return [{"prompt": r["prompt_ids"], "chosen": r["chosen_ids"], "rejected": r["rejected_ids"]} for r in out]


def tokenizer_entry(name: str, tok) -> dict:
    entry = {"tokenizer": name, "rows": []}
    conv_ids = dpo_ids(CONVERSATIONAL, tok)
    std_ids = dpo_ids(STANDARD, tok)
    for row, ids in zip(CONVERSATIONAL + STANDARD, conv_ids + std_ids):
        example = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        strings = maybe_apply_chat_template(example, tok)
        entry["rows"].append({"name": row["name"], "strings": {k: strings[k] for k in ("prompt", "chosen", "rejected")},
                              "ids": ids})
    return entry


def smollm2_tokenizer(root: pathlib.Path):
    meta = read_gguf_tokenizer(model_path(root))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=build_smollm2_tokenizer(meta),
        bos_token=meta["tokens"][int(meta["bos"])],
        eos_token=meta["tokens"][int(meta["eos"])],
        chat_template=meta["chat_template"],
    )


def tiny_chat_tokenizer(folder: pathlib.Path):
    """The tiny-chat fixture's tokenizer.json and chat template (its tokenizer_config.json spells EOS in an
    older dict form that `AutoTokenizer` of transformers 5 refuses, so the fields are passed by hand)."""
    config = json.loads((folder / "tokenizer_config.json").read_text())

    def text(v):
        return v["content"] if isinstance(v, dict) else v

    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        bos_token=text(config["bos_token"]),
        eos_token=text(config["eos_token"]),
        chat_template=config["chat_template"],
    )


def main(root: pathlib.Path) -> None:
    root = pathlib.Path(root)
    tiny = root / "Tests" / "ModelTests" / "Fixtures" / "tiny-chat"
    fixture = {
        "source": f"trl {trl.__version__} (data_utils.maybe_apply_chat_template; DPOTrainer._prepare_dataset), "
                  f"transformers {transformers.__version__}",
        "rows": [{k: r[k] for k in ("name", "prompt", "chosen", "rejected")} for r in CONVERSATIONAL + STANDARD],
        "tokenizers": [
            tokenizer_entry("smollm2", smollm2_tokenizer(root)),
            tokenizer_entry("tiny-chat", tiny_chat_tokenizer(tiny)),
        ],
    }
    out = root / "Tests" / "TokenizerTests" / "Fixtures" / "trl_rows.json"
    out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(pathlib.Path(__file__).resolve().parents[2])

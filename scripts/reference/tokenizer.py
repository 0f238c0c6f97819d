"""Reference fixtures for the Swift `Tokenizer` module, produced by libraries nobody here wrote.

Writes into `<root>/Tests/TokenizerTests/Fixtures/`:

- `smollm2_encode.json`: token ids of a varied corpus (hand-written cases plus seeded random strings)
  from the Hugging Face `tokenizers` library, with a tokenizer built from the GGUF's own vocabulary,
  merges and token types and SmolLM2's declared pre-tokenizer
  (Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]),
  the ByteLevel decoder, and the GGUF's control tokens added as special tokens. Also records whether
  transformers' own GGUF tokenizer loading (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`)
  produces the same ids, and where it does not.
- `pretokenize.json`: the pieces each pre-tokenizer kind (gpt2, smollm, llama3, qwen2) cuts the corpus
  into, from `tokenizers.pre_tokenizers.Split(Regex(pattern), "isolated")` (Oniguruma).
- `chat_templates.json`: renderings by transformers' `render_jinja_template` (Jinja2) of the real
  SmolLM2 template text (read from the GGUF) and of the Qwen2.5, Zephyr and Llama-3 templates.
- `hf/<name>/tokenizer.json` (+ `tokenizer_config.json`): small tokenizers trained here with the
  `tokenizers` library, and `hf_encode.json` with their encodings, to test loading an HF directory.

Run: `/tmp/refvenv/bin/python scripts/reference/tokenizer.py` (from the package root), or call
`main(root)`. The model is `$SELM_MODEL` or `<root>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import tempfile

import gguf
import tokenizers
import transformers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers.utils.chat_template_utils import render_jinja_template

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The pre-tokenizer regexes, as the tokenizer.json files of the models that use them spell them.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Chat templates of other model families, verbatim from the `chat_template` field of each model's
# tokenizer_config.json on the Hugging Face Hub.
# Qwen/Qwen2.5-0.5B-Instruct (the same text ships with every Qwen2.5 Instruct size).
QWEN25_TEMPLATE = json.loads(
    r'''"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"'''
)
# HuggingFaceH4/zephyr-7b-beta.
ZEPHYR_TEMPLATE = json.loads(
    r'''"{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"'''
)
# meta-llama/Meta-Llama-3-8B-Instruct.
LLAMA3_TEMPLATE = json.loads(
    r'''"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"'''
)
# A ChatML template that inserts no system message (as in many fine-tunes, e.g. teknium/OpenHermes-2.5-Mistral-7B).
PLAIN_CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

HAND_CORPUS = [
    "",
    "Hello world",
    "Hello, world! How's it going?",
    "I'M HERE, YOU'RE THERE, WE'LL SEE. SHE'S, HE'D, THEY'VE; i'm, I'm",
    "don't can't won't it's we've they're I'd you'll",
    "'s 's 'S x's ''s 'sound 'll'", 
    "café naïve résumé Ĳssel straße STRASSE ẞ",
    "cafe\u0301 and e\u0301 with combining marks: a\u0308\u0304 \u0301x",
    "日本語のテキスト、中文文本，한국어 텍스트。",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷🇩🇪 ✔︎",
    "ZWJ sequences: 👩‍💻👨🏿‍🚀 and keycaps 1️⃣ #️⃣",
    "def foo(x):\n\treturn x ** 2  # square\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "if x>=10&&y!=3:\n    print(f\"{x!r}\")\n\n\nclass A(B): pass",
    "3.14159 2024-06-01 1,000,000 123456789012345678901234567890",
    "Numbers: 0 07 42 1999 2000's 10x 3rd 4th ½ ² Ⅻ ٣٤٥ ๑๒๓",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\t\tand\ttabs\t",
    "line1\nline2\n\nline4\r\nline5\r\n\r\n",
    "  \n  \n\t x",
    "\n",
    " ",
    "     ",
    "\t",
    "a  b   c    d     e",
    "word\n\n\nword  \n  word",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|endoftext|>",
    "x<|im_start|>y <|im_end|> z",
    "<|im_start",
    "<|im_start|>|>",
    "<<|im_end|>>",
    "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "\u00a0nbsp\u00a0 \u3000ideographic\u2028line sep\u2029para",
    "zero\u200bwidth\u200cjoiners\u200d",
    "Mixed: The year 1999 and 2000's; e=mc². Temperature: -40°C = -40°F.",
    "https://example.com/path?query=1&x=y#frag user@example.com",
    "$100.00 €50 £20 ¥1000 ₹75",
    "АБВ абв Ελληνικά עברית العربية हिन्दी ไทย",
    "!!!???... --- ***",
    " !!! ,,, ",
    "(hello) [world] {foo}",
    "hello!!!\n\nbye\r\n",
    "It's 5 o'clock; y'all'd've",
    (
        "SmolLM2 is a family of compact language models available in three sizes: 135M, 360M, and 1.7B "
        "parameters. They are capable of solving a wide range of tasks while being lightweight enough to "
        "run on-device.\n\nThe 1.7B variant demonstrates significant advances over its predecessor SmolLM1-1.7B, "
        "particularly in instruction following, knowledge, reasoning, and mathematics. It was trained on "
        "11 trillion tokens using a diverse dataset combination: FineWeb-Edu, DCLM, The Stack, along with "
        "new mathematics and coding datasets that we curated and will release soon."
    ),
    # Special-token boundaries and BOS (Tests/TokenizerTests/SmolLM2Tests.swift).
    "Hi",
    "<|im_start|>Hi",
    "a ",
    "a <|im_end|>",
    "x",
    "x<|im_start|>user\nhi<|im_end|>",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start|>",
]

FUZZ_ALPHABET = list(
    "abZés中文ア한\u0301\u03080779٣Ⅻ²½  \t\n\r\u00a0\u3000\u2028\u200b''stSTlLmMdDrReEvVſ.,!-(\"<|>_$😀👍🏽\u200d❤\ufe0f"
)
FUZZ_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def fuzz_corpus(count: int, seed: int, specials: bool) -> list[str]:
    """Seeded random strings over an alphabet that mixes every character class the regexes tell apart."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 24)
        pieces = []
        for _ in range(n):
            if specials and rng.random() < 0.04:
                pieces.append(rng.choice(FUZZ_SPECIALS))
            else:
                pieces.append(rng.choice(FUZZ_ALPHABET))
        out.append("".join(pieces))
    return out


def model_path(root: pathlib.Path) -> pathlib.Path:
    env = os.environ.get("SELM_MODEL")
    path = pathlib.Path(env) if env else root / "models" / MODEL_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `make model` (or set SELM_MODEL)")
    return path


def read_gguf_tokenizer(path: pathlib.Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields

    def get(key):
        return fields[key].contents() if key in fields else None

    return {
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "tokens": get("tokenizer.ggml.tokens"),
        "token_type": get("tokenizer.ggml.token_type"),
        "merges": get("tokenizer.ggml.merges"),
        "bos": get("tokenizer.ggml.bos_token_id"),
        "eos": get("tokenizer.ggml.eos_token_id"),
        "chat_template": get("tokenizer.chat_template"),
    }


def build_smollm2_tokenizer(meta: dict) -> tokenizers.Tokenizer:
    """SmolLM2's tokenizer as its tokenizer.json declares it, from the GGUF's vocabulary and merges."""
    vocab = {token: index for index, token in enumerate(meta["tokens"])}
    merges = [tuple(m.split(" ")) for m in meta["merges"]]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(meta["tokens"], meta["token_type"])
        if kind == 3
    ]
    user_defined = [
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(meta["tokens"], meta["token_type"])
        if kind == 4
    ]
    tok.add_special_tokens(specials)
    if user_defined:
        tok.add_tokens(user_defined)
    return tok


def encode_fixture(gguf_file: pathlib.Path, meta: dict) -> dict:
    tok = build_smollm2_tokenizer(meta)
    corpus = HAND_CORPUS + fuzz_corpus(250, seed=1234, specials=True)
    entries = []
    for text in corpus:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, repr(text)
        entries.append({"text": text, "ids": ids})

    # parseSpecial = false: special tokens are tokenized as ordinary text.
    tok.encode_special_tokens = True
    literal = [
        {"text": text, "ids": tok.encode(text, add_special_tokens=False).ids}
        for text in HAND_CORPUS
        if "<" in text
    ]
    tok.encode_special_tokens = False

    # Does transformers' own GGUF loader agree?
    agreement = compare_with_transformers(gguf_file, corpus, [e["ids"] for e in entries])
    return {
        "source": (
            f"tokenizers {tokenizers.__version__}: BPE from the GGUF's tokenizer.ggml.tokens/merges, "
            "pre_tokenizer Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, "
            "use_regex=True)], decoder ByteLevel, token_type 3 added as special tokens; "
            "encode(text, add_special_tokens=False)"
        ),
        "model": gguf_file.name,
        "vocab_size": len(meta["tokens"]),
        "transformers_gguf": agreement,
        "cases": entries,
        "literal_special_cases": literal,
    }


def compare_with_transformers(gguf_file: pathlib.Path, corpus: list[str], expected: list[list[int]]) -> dict:
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    except Exception as error:  # noqa: BLE001 - recorded, not fatal
        return {"version": transformers.__version__, "loaded": False, "error": repr(error)}
    mismatches = []
    for text, ids in zip(corpus, expected):
        theirs = tok.encode(text, add_special_tokens=False)
        if theirs != ids:
            mismatches.append({"text": text, "tokenizers": ids, "transformers": theirs})
    return {
        "version": transformers.__version__,
        "loaded": True,
        "class": type(tok).__name__,
        "pre_tokenizer": str(tok.backend_tokenizer.pre_tokenizer.__getstate__()),
        "cases": len(corpus),
        "agree": len(mismatches) == 0,
        "mismatch_count": len(mismatches),
        "mismatches": mismatches[:12],
    }


def pretokenize_fixture() -> dict:
    def split(pattern):
        return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)

    kinds = {
        "gpt2": split(GPT2_PATTERN),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), split(GPT2_PATTERN)]),
        "llama3": split(LLAMA3_PATTERN),
        "qwen2": split(QWEN2_PATTERN),
    }
    extra = ["x'ſx x'Sx I'LL WE'RE don'T", "\r\n\r\n  \r\n x", "a\n\n b", "1234567 12 1", "  \n\n  ", "x  \r\n"]
    corpus = HAND_CORPUS + extra + fuzz_corpus(400, seed=99, specials=False)
    cases = []
    for text in corpus:
        cases.append({"text": text, **{k: [p for p, _ in pt.pre_tokenize_str(text)] for k, pt in kinds.items()}})
    return {
        "source": f"tokenizers {tokenizers.__version__} pre_tokenizers.Split(Regex(pattern), 'isolated'); smollm = Sequence[Digits(individual_digits=True), Split(gpt2)]",
        "patterns": {"gpt2": GPT2_PATTERN, "llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN},
        "cases": cases,
    }


CONVERSATIONS = [
    [{"role": "user", "content": "Hello! How are you?"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Arr! Ahoy."},
        {"role": "user", "content": "Where's the treasure? 🏴‍☠️"},
    ],
    [
        {"role": "user", "content": "  padded content \n"},
        {"role": "assistant", "content": "\tok "},
        {"role": "user", "content": "multi\nline\n\ncontent"},
    ],
]


def chat_fixture(smollm2_template: str) -> dict:
    templates = [
        {"name": "smollm2", "model": "HuggingFaceTB/SmolLM2-135M-Instruct (tokenizer.chat_template in the GGUF)",
         "template": smollm2_template, "kind": "chatml",
         "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
        {"name": "qwen2.5", "model": "Qwen/Qwen2.5-0.5B-Instruct", "template": QWEN25_TEMPLATE, "kind": "chatml",
         "default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
        {"name": "chatml-plain", "model": "teknium/OpenHermes-2.5-Mistral-7B-style ChatML", "template": PLAIN_CHATML_TEMPLATE,
         "kind": "chatml", "default_system": None},
        {"name": "zephyr", "model": "HuggingFaceH4/zephyr-7b-beta", "template": ZEPHYR_TEMPLATE, "kind": "zephyr",
         "default_system": None},
        {"name": "llama3", "model": "meta-llama/Meta-Llama-3-8B-Instruct", "template": LLAMA3_TEMPLATE, "kind": "llama3",
         "default_system": None},
    ]
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "</s>"}
    for entry in templates:
        renders = []
        for messages in CONVERSATIONS:
            for gen in (False, True):
                text = render_jinja_template(
                    conversations=[messages], chat_template=entry["template"], add_generation_prompt=gen, **special
                )[0][0]
                renders.append({"messages": messages, "add_generation_prompt": gen, "rendered": text})
        entry["renders"] = renders
    return {
        "source": f"transformers {transformers.__version__} render_jinja_template (jinja2, trim_blocks, lstrip_blocks); bos_token=<|begin_of_text|>, eos_token=</s>",
        "templates": templates,
    }


# MARK: small Hugging Face tokenizer directories

TRAIN_TEXT = HAND_CORPUS * 3 + [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "Tokenizers split text into pieces, then merge bytes into tokens by rank.",
    "print('hello world')\nreturn 0\n",
]
HF_TEXTS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'M HERE, we'll see 12345 3.14",
    "<|im_start|>user\nHi<|im_end|>\n",
    "café 日本語 😀👍🏽",
    "  spaces\n\n\ttabs  ",
    " zzqq zzqq!",
    "Cafe\u0301 Ω\u212b",
]


def train_bpe(pre_tokenizer, specials, vocab_size, normalizer=None) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    return tok


def add_unmerged_word(tok: tokenizers.Tokenizer, ignore_merges: bool) -> tokenizers.Tokenizer:
    """Adds the vocabulary entry 'Ġzzqq' (no merge produces it) so ignore_merges makes a difference."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    next_id = max(max(vocab.values()), max(t["id"] for t in data["added_tokens"])) + 1
    vocab["Ġzzqq"] = next_id
    data["model"]["ignore_merges"] = ignore_merges
    return tokenizers.Tokenizer.from_str(json.dumps(data))


def hf_fixtures(out: pathlib.Path) -> dict:
    hf = out / "hf"
    if hf.exists():
        shutil.rmtree(hf)
    results = {}

    # 1. GPT-2 style: ByteLevel(use_regex) pre-tokenizer, merges as "a b" strings, no BOS.
    gpt2 = train_bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        600,
    )
    gpt2.post_processor = processors.ByteLevel(trim_offsets=False)
    gpt2 = add_unmerged_word(gpt2, ignore_merges=False)
    config = {
        "add_bos_token": False,
        "bos_token": "<|endoftext|>",
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
        "unk_token": None,
        "chat_template": PLAIN_CHATML_TEMPLATE,
        "tokenizer_class": "GPT2Tokenizer",
    }
    results["tiny-gpt2"] = save_hf(hf / "tiny-gpt2", gpt2, config, None, merges_as_strings=True)

    # 2. Llama-3 style: Split(llama3 regex) + ByteLevel(use_regex=false), ignore_merges, BOS added by
    #    a TemplateProcessing post-processor, merges as pairs, template in chat_template.jinja.
    llama = train_bpe(
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        600,
    )
    llama = add_unmerged_word(llama, ignore_merges=True)
    bos = llama.token_to_id("<|begin_of_text|>")
    llama.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    results["tiny-llama3"] = save_hf(hf / "tiny-llama3", llama, config, LLAMA3_TEMPLATE)

    # 3. Qwen2 style: NFC normalizer, Split(qwen2 regex) + ByteLevel, no BOS.
    qwen = train_bpe(
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        600,
        normalizer=normalizers.NFC(),
    )
    qwen = add_unmerged_word(qwen, ignore_merges=False)
    config = {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": QWEN25_TEMPLATE, "tokenizer_class": "Qwen2Tokenizer"}
    results["tiny-qwen2"] = save_hf(hf / "tiny-qwen2", qwen, config, None)
    return results


def save_hf(
    directory: pathlib.Path, tok: tokenizers.Tokenizer, config: dict, jinja: str | None, merges_as_strings: bool = False
) -> dict:
    """Saves tokenizer.json (merges as ["a", "b"] pairs, or as older files spell them, "a b") and the config."""
    directory.mkdir(parents=True)
    data = json.loads(tok.to_str())
    if merges_as_strings:
        data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    if jinja is not None:
        (directory / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    reloaded = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    cases = []
    for text in HF_TEXTS:
        plain = reloaded.encode(text, add_special_tokens=False).ids
        full = reloaded.encode(text, add_special_tokens=True).ids
        cases.append({"text": text, "ids": plain, "ids_with_special": full})
    return {"vocab_size": reloaded.get_vocab_size(with_added_tokens=True), "cases": cases}


def write_json(path: pathlib.Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main(root: pathlib.Path) -> None:
    root = pathlib.Path(root)
    out = root / "Tests" / "TokenizerTests" / "Fixtures"
    out.mkdir(parents=True, exist_ok=True)
    gguf_file = model_path(root)
    meta = read_gguf_tokenizer(gguf_file)

    encode = encode_fixture(gguf_file, meta)
    write_json(out / "smollm2_encode.json", encode)
    write_json(out / "pretokenize.json", pretokenize_fixture())
    write_json(out / "chat_templates.json", chat_fixture(meta["chat_template"]))
    write_json(out / "hf_encode.json", hf_fixtures(out))

    agreement = encode["transformers_gguf"]
    print(f"tokenizer fixtures written to {out}")
    print(f"transformers GGUF tokenizer agrees with the tokenizers reference: {agreement.get('agree')} "
          f"({agreement.get('mismatch_count')} of {agreement.get('cases')} differ)")


if __name__ == "__main__":
    main(pathlib.Path(__file__).resolve().parents[2])

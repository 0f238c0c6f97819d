#!/usr/bin/env python3
"""Writes the Swift mirror of Proto/selm.proto into Sources/Wire/Generated/ (committed output).

    scripts/gen_wire.py DESCRIPTOR_SET OUT_DIR

DESCRIPTOR_SET is `protoc --include_source_info --descriptor_set_out=...` of selm.proto (a
FileDescriptorSet, read here with a small reader of the protobuf wire format; descriptor.proto's
field numbers are stable); scripts/gen_proto.sh makes it and calls this script, so `make proto`
regenerates everything and `make proto-check` fails when a committed file differs. Python 3.10+
standard library only.

It writes three files:
  Messages.swift  the value types: one Swift type per message and enum, `Envelope<Body>`,
                  `ClientMessage` / `ServerMessage`; doc comments are the .proto's comments
  Encode.swift    Swift value → protobuf-c struct, built in an `Arena` (Sources/Wire/Codec.swift)
  Decode.swift    protobuf-c struct → Swift value (`Unpacked.decode…`); requests are checked by
                  their `validate(at:)` (Sources/Wire/Validation.swift) as they are built

The mapping, rule by rule (each rule is what the hand-written API did; the Swift API is the one
Server, SelmClient, the CLI and the tests use):

 1. Names. A message keeps its name as a Swift type, except `Error` → `ErrorReply` (it would
    shadow Swift.Error) [TYPE_NAMES]. A field becomes lowerCamelCase, the words id / ids / eos
    written ID / IDs / EOS after the first word (`token_ids` → `tokenIDs`, `target_id` →
    `targetID`, `ignore_eos` → `ignoreEOS`) [ACRONYMS]. An enum value loses its enum's prefix and
    becomes a lowerCamelCase case (`ERROR_CODE_NOT_FOUND` → `.notFound`).
 2. Enums are open, as proto3 says: besides one case per value, `.unrecognized(Int32)` keeps a value
    from a newer peer so it re-encodes unchanged; `rawValue` / `init(rawValue:)` map any Int32.
    An enum no field uses is not a Swift type; its values the code needs become constants
    [CONSTANTS: `Hello.currentProtocolVersion` = PROTOCOL_VERSION_CURRENT].
 3. `Envelope` is `Envelope<Body>` (`id`, `body`); its `body` oneof is split by field number into
    `ClientMessage` (requests, numbers below SERVER_BODY_FIRST = 40) and `ServerMessage` (replies
    and pushes, 40 and up), one case per member (`submit_preferences` → `.submitPreferences`), and
    `name`, the proto field name. `Frame` encodes and decodes them (Frame.swift).
 4. A message whose fields all sit in one oneof (`Prompt`, `Response`) is a Swift enum with one case
    per member. It has no "unset" state: decoding one with no member set is refused as
    "one of text, ids, messages is required" (field: the message's path).
 5. A message with exactly one field, repeated, used as another message's field type (`TokenIds`,
    `Messages`: lists cannot sit in a oneof) is a list wrapper: no Swift type, the fields of that
    type hold the list (`Prompt.ids([UInt32])`, `Prompt.messages([ChatMessage])`), absent = empty.
 6. `oneof optional_x { T x = N; }` — how selm.proto writes proto3 `optional`, which protoc-c 1.4
    cannot compile — and a real proto3 `optional` are `x: T?`, nil = unset.
 7. Any other oneof of a message with more fields (`TokenizeRequest.input`) is a nested enum named
    after the oneof (`TokenizeRequest.Input`) in a property of the oneof's name (`input`); unset
    decodes as the first member's zero value (`.text("")`, as the .proto documents).
 8. A singular message field is
      - of an enum type (rule 4): required — no default, absent refused as "is required";
      - listed in OPTIONAL_FIELDS (`PreferenceRow.reference`): `T?`, nil = absent;
      - otherwise (`GenerateRequest.sampling`): a plain `T`, absent = `T()`, and encoded only when
        it differs from `T()`, so "all defaults" travels as no message at all.
 9. `map<string, V>` is `[String: V]`, encoded sorted by key (equal dictionaries, equal bytes).
    protoc-c keeps map keys as C strings (the only `string` not turned into `bytes`, see
    gen_proto.sh), so a key is cut at a NUL; maps are refused in requests, where strings are
    checked.
10. Strings: protoc-c compiles every `string` field as `bytes` (gen_proto.sh), so Swift sees the
    exact bytes. In requests (messages reachable from `ClientMessage`) a string holding a NUL byte
    or ill-formed UTF-8 is refused naming its field path (`prompts[0].messages.messages[2].content`,
    `stop[1]`); in replies NULs are kept and ill-formed UTF-8 becomes U+FFFD. A message used in
    both directions is refused by this generator (it would need both decoders).
11. A (singular) `bytes` field is `[UInt8]`, its bytes as sent (repeated `bytes` is refused).
    Every other field maps to its Swift scalar (uint32 → UInt32, float → Float, bool → Bool, ...);
    repeated scalars to arrays (packed by protobuf-c, as proto3 wants).
12. Each struct has a memberwise initializer in field order whose parameters all default to what
    an unset field decodes to (proto3's zero, `T()`, `[]`, nil), except required fields (rule 8,
    no default) and SWIFT_DEFAULTS: `GenerateRequest.n` = 1 and `PreferenceRow.weight` = 1 (the
    server reads the wire's 0 as 1, so a value built in Swift encodes what it means),
    `Hello.protocol_version` / `HelloReply.protocol_version` = the current protocol version,
    `HelloReply.max_frame_bytes` = `Frame.defaultMaxFrameBytes`.
13. Every request type (reachable from `ClientMessage`) is decoded through its
    `validate(at: path)`, written by hand in Validation.swift: the semantic checks (ranges,
    non-empty lists, "0 means default"). A request type without one does not compile.
14. Types are `Sendable, Equatable`; enums of proto enums also `Hashable`.

Adding a field: edit Proto/selm.proto, run `make proto` (C, Python and this Swift mirror), then
use the new property. Adding a request message also needs its `validate(at:)` in Validation.swift.
"""

import os
import sys
from dataclasses import dataclass, field as dc_field

# ─── Swift-side tables (the only per-field knowledge in this generator; see the rules above) ─────

TYPE_NAMES = {"Error": "ErrorReply"}
ACRONYMS = {"id": "ID", "ids": "IDs", "eos": "EOS"}
OPTIONAL_FIELDS = {"PreferenceRow.reference"}
SWIFT_DEFAULTS = {
    "GenerateRequest.n": "1",
    "PreferenceRow.weight": "1",
    "Hello.protocol_version": "Hello.currentProtocolVersion",
    "HelloReply.protocol_version": "Hello.currentProtocolVersion",
    "HelloReply.max_frame_bytes": "UInt64(Frame.defaultMaxFrameBytes)",
}
# (type, Swift constant) → (proto enum, value name, Swift type)
CONSTANTS = {
    ("Hello", "currentProtocolVersion"): ("ProtocolVersion", "PROTOCOL_VERSION_CURRENT", "UInt32"),
}
ENVELOPE = "Envelope"
SERVER_BODY_FIRST = 40

SWIFT_KEYWORDS = {
    "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import", "init",
    "inout", "internal", "let", "open", "operator", "private", "protocol", "public", "rethrows",
    "static", "struct", "subscript", "typealias", "var", "break", "case", "continue", "default",
    "defer", "do", "else", "fallthrough", "for", "guard", "if", "in", "repeat", "return", "switch",
    "where", "while", "as", "catch", "false", "is", "nil", "super", "self", "Self", "throw", "throws",
    "true", "try", "Any", "Type",
}

# ─── A reader of the protobuf wire format, enough for descriptor.proto ────────────────────────────


def read_varint(buf, i):
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields_of(buf):
    """(number, value) pairs of a serialized message; value is an int (varint, fixed) or bytes."""
    i, out = 0, []
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 1:
            value, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == 2:
            n, i = read_varint(buf, i)
            value, i = bytes(buf[i:i + n]), i + n
        elif wire == 5:
            value, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise SystemExit(f"gen_wire: unsupported wire type {wire} in the descriptor set")
        out.append((number, value))
    return out


def packed_ints(value):
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = read_varint(value, i)
        out.append(v)
    return out


# descriptor.proto field numbers
FILE_SET_FILE = 1
FILE_NAME, FILE_PACKAGE, FILE_MESSAGE, FILE_ENUM, FILE_SOURCE_INFO = 1, 2, 4, 5, 9
MSG_NAME, MSG_FIELD, MSG_NESTED, MSG_ENUM, MSG_OPTIONS, MSG_ONEOF = 1, 2, 3, 4, 7, 8
MSG_OPTIONS_MAP_ENTRY = 7
FIELD_NAME, FIELD_NUMBER, FIELD_LABEL, FIELD_TYPE, FIELD_TYPE_NAME, FIELD_ONEOF, FIELD_PROTO3_OPTIONAL = 1, 3, 4, 5, 6, 9, 17
ONEOF_NAME = 1
ENUM_NAME, ENUM_VALUE = 1, 2
VALUE_NAME, VALUE_NUMBER = 1, 2
SRC_LOCATION = 1
LOC_PATH, LOC_LEADING, LOC_TRAILING = 1, 3, 4
LABEL_REPEATED = 3
T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL, T_STRING = 1, 2, 3, 4, 5, 6, 7, 8, 9
T_GROUP, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM, T_SFIXED32, T_SFIXED64, T_SINT32, T_SINT64 = 10, 11, 12, 13, 14, 15, 16, 17, 18

SCALARS = {  # proto type → (Swift type, zero literal)
    T_DOUBLE: ("Double", "0"), T_FLOAT: ("Float", "0"), T_INT64: ("Int64", "0"), T_UINT64: ("UInt64", "0"),
    T_INT32: ("Int32", "0"), T_FIXED64: ("UInt64", "0"), T_FIXED32: ("UInt32", "0"), T_BOOL: ("Bool", "false"),
    T_UINT32: ("UInt32", "0"), T_SFIXED32: ("Int32", "0"), T_SFIXED64: ("Int64", "0"), T_SINT32: ("Int32", "0"),
    T_SINT64: ("Int64", "0"), T_STRING: ("String", '""'), T_BYTES: ("[UInt8]", "[]"),
}


@dataclass
class Field:
    name: str
    number: int
    repeated: bool
    type: int
    type_name: str  # ".selm.v1.Prompt" for messages and enums
    oneof: int | None
    proto3_optional: bool
    doc: str = ""
    owner: "Message | None" = None


@dataclass
class Oneof:
    name: str
    doc: str = ""
    fields: list = dc_field(default_factory=list)


@dataclass
class Message:
    name: str  # "StatusReply" or "StatusReply.LearnerMetricsEntry"
    full: str  # ".selm.v1.StatusReply"
    fields: list
    oneofs: list
    map_entry: bool
    doc: str = ""


@dataclass
class EnumValue:
    name: str
    number: int
    doc: str = ""


@dataclass
class Enum:
    name: str
    full: str
    values: list
    doc: str = ""


def clean_comment(text):
    if not text:
        return ""
    lines = [line[1:] if line.startswith(" ") else line for line in text.rstrip("\n").split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def load(descriptor_path):
    data = open(descriptor_path, "rb").read()
    files = [v for n, v in fields_of(data) if n == FILE_SET_FILE]
    if len(files) != 1:
        raise SystemExit("gen_wire: expected a descriptor set of exactly one file (selm.proto)")
    file = fields_of(files[0])
    package = next(v.decode() for n, v in file if n == FILE_PACKAGE)
    comments = {}
    for n, v in file:
        if n == FILE_SOURCE_INFO:
            for n2, loc in fields_of(v):
                if n2 != SRC_LOCATION:
                    continue
                path, lead, trail = [], "", ""
                for n3, v3 in fields_of(loc):
                    if n3 == LOC_PATH:
                        path += packed_ints(v3)
                    elif n3 == LOC_LEADING:
                        lead = v3.decode()
                    elif n3 == LOC_TRAILING:
                        trail = v3.decode()
                if lead or trail:
                    comments[tuple(path)] = (clean_comment(lead), clean_comment(trail))

    def type_doc(path):
        """A message's or enum's comment: the one before it (and any after its opening line)."""
        lead, trail = comments.get(path, ("", ""))
        return "\n".join(c for c in (lead, trail) if c)

    def member_doc(path):
        """A field's, oneof's or enum value's comment: the one on its line when there is one, else
        the one before it (a comment before a group of fields with their own line comments is
        about the group, not the first field)."""
        lead, trail = comments.get(path, ("", ""))
        return trail or lead

    messages, enums = [], []

    def read_enum(buf, prefix, path):
        e = fields_of(buf)
        name = next(v.decode() for n, v in e if n == ENUM_NAME)
        values = []
        for k, v in enumerate(v for n, v in e if n == ENUM_VALUE):
            ev = fields_of(v)
            number = next((x for n, x in ev if n == VALUE_NUMBER), 0)
            if number >= 1 << 31:
                number -= 1 << 32
            values.append(EnumValue(next(x.decode() for n, x in ev if n == VALUE_NAME), number,
                                    member_doc(path + (ENUM_VALUE, k))))
        enums.append(Enum(prefix + name, f".{package}.{prefix}{name}", values, type_doc(path)))

    def read_message(buf, prefix, path):
        m = fields_of(buf)
        name = next(v.decode() for n, v in m if n == MSG_NAME)
        map_entry = any(n == MSG_OPTIONS and any(n2 == MSG_OPTIONS_MAP_ENTRY and v2 for n2, v2 in fields_of(v))
                        for n, v in m)
        msg = Message(prefix + name, f".{package}.{prefix}{name}", [], [], map_entry, type_doc(path))
        for k, v in enumerate(v for n, v in m if n == MSG_ONEOF):
            oneof_name = next(x.decode() for n, x in fields_of(v) if n == ONEOF_NAME)
            msg.oneofs.append(Oneof(oneof_name, member_doc(path + (MSG_ONEOF, k))))
        for k, v in enumerate(v for n, v in m if n == MSG_FIELD):
            f = dict(fields_of(v))
            fd = Field(name=f[FIELD_NAME].decode(), number=f[FIELD_NUMBER], repeated=f.get(FIELD_LABEL) == LABEL_REPEATED,
                       type=f[FIELD_TYPE], type_name=f.get(FIELD_TYPE_NAME, b"").decode(),
                       oneof=f.get(FIELD_ONEOF), proto3_optional=bool(f.get(FIELD_PROTO3_OPTIONAL, 0)),
                       doc=member_doc(path + (MSG_FIELD, k)), owner=msg)
            msg.fields.append(fd)
            if fd.oneof is not None:
                msg.oneofs[fd.oneof].fields.append(fd)
        messages.append(msg)
        for k, v in enumerate(v for n, v in m if n == MSG_NESTED):
            read_message(v, prefix + name + ".", path + (MSG_NESTED, k))
        for k, v in enumerate(v for n, v in m if n == MSG_ENUM):
            read_enum(v, prefix + name + ".", path + (MSG_ENUM, k))

    for k, v in enumerate(v for n, v in file if n == FILE_MESSAGE):
        read_message(v, "", (FILE_MESSAGE, k))
    for k, v in enumerate(v for n, v in file if n == FILE_ENUM):
        read_enum(v, "", (FILE_ENUM, k))
    return package, messages, enums


# ─── Naming ───────────────────────────────────────────────────────────────────────────────────────


def camel(snake, upper_first=False):
    """lowerCamelCase (UpperCamelCase with upper_first) of a snake_case name; ACRONYMS after the first word."""
    words = [w for w in snake.lower().split("_") if w]
    out = [words[0][:1].upper() + words[0][1:] if upper_first else words[0]]
    out += [ACRONYMS.get(w, w[:1].upper() + w[1:]) for w in words[1:]]
    return "".join(out)


def ident(name):
    return f"`{name}`" if name in SWIFT_KEYWORDS else name


def c_snake(camel_name):
    """protobuf-c's name mangling: "GenerateRequest" → "generate_request", nested "A.B" → "a__b"."""
    parts = []
    for part in camel_name.split("."):
        out = ""
        for i, ch in enumerate(part):
            if ch.isupper() and i > 0 and (part[i - 1].islower() or part[i - 1].isdigit()):
                out += "_"
            out += ch.lower()
        parts.append(out)
    return "__".join(parts)


LINE_WIDTH = 120


def wrap_call(head, args, tail, indent):
    """`head` + comma-separated `args` + `tail`, on one line if it fits, else one argument group per
    line (as many arguments as fit) under `indent`."""
    one = head + ", ".join(args) + tail
    if len(one) <= LINE_WIDTH:
        return [one]
    lines, line = [head.rstrip()], indent
    for i, a in enumerate(args):
        piece = a + ("," if i < len(args) - 1 else tail)
        if line.strip() and len(line) + 1 + len(piece) > LINE_WIDTH:
            lines.append(line)
            line = indent
        line += ("" if not line.strip() else " ") + piece
    lines.append(line)
    return lines


def doc_lines(text, indent):
    if not text:
        return []
    return [f"{indent}/// {line}".rstrip() for line in text.split("\n")]


# ─── The model, as Swift sees it ──────────────────────────────────────────────────────────────────


class Schema:
    def __init__(self, package, messages, enums):
        self.package = package
        self.c_type_prefix = "__".join(p[:1].upper() + p[1:] for p in package.split(".")) + "__"
        self.c_func_prefix = "__".join(package.split(".")) + "__"
        self.c_const_prefix = "__".join(p.upper() for p in package.split(".")) + "__"
        self.messages = {m.full: m for m in messages}
        self.enums = {e.full: e for e in enums}
        self.order = list(messages)  # declaration order, nested types after their parent
        self.envelope = self.messages.get(f".{package}.{ENVELOPE}")
        if self.envelope is None:
            raise SystemExit(f"gen_wire: no message {ENVELOPE}")
        self.check_envelope()
        self.body = self.envelope.oneofs[0]
        body_types = {f.type_name for f in self.body.fields}
        # Rule 5: list wrappers; rule 4: enum messages.
        used_as_field = {f.type_name for m in messages if m is not self.envelope for f in m.fields if f.type == T_MESSAGE}
        self.wrappers = {m.full for m in messages
                         if len(m.fields) == 1 and m.fields[0].repeated and m.full in used_as_field
                         and m.full not in body_types and not m.map_entry}
        self.enum_messages = {m.full for m in messages
                              if m.fields and len(m.oneofs) == 1 and all(f.oneof == 0 for f in m.fields)
                              and m is not self.envelope and not any(f.proto3_optional for f in m.fields)}
        used_enums = {f.type_name for m in messages for f in m.fields if f.type == T_ENUM}
        self.swift_enums = [e for e in enums if e.full in used_enums]
        self.constant_enums = {e.name: e for e in enums if e.full not in used_enums}
        # Rule 10: directions.
        self.client_types = self.reachable([f.type_name for f in self.body.fields if f.number < SERVER_BODY_FIRST])
        self.server_types = self.reachable([f.type_name for f in self.body.fields if f.number >= SERVER_BODY_FIRST])
        both = self.client_types & self.server_types
        if both:
            raise SystemExit(f"gen_wire: messages used in requests and replies alike: {sorted(both)} (rule 10)")
        for full in self.client_types:
            for f in self.messages[full].fields:
                if self.is_map(f):
                    raise SystemExit(f"gen_wire: map field {self.messages[full].name}.{f.name} in a request (rule 9)")
        for key in OPTIONAL_FIELDS | set(SWIFT_DEFAULTS):
            mname, fname = key.split(".")
            m = self.messages.get(f".{package}.{mname}")
            if m is None or not any(f.name == fname for f in m.fields):
                raise SystemExit(f"gen_wire: {key} (a generator table) names no field of selm.proto")

    def check_envelope(self):
        e = self.envelope
        if len(e.oneofs) != 1 or [f.name for f in e.fields if f.oneof is None] != ["id"]:
            raise SystemExit(f"gen_wire: {ENVELOPE} must hold `uint64 id` and one oneof (rule 3)")
        for f in e.fields:
            if f.oneof is not None and f.type != T_MESSAGE:
                raise SystemExit(f"gen_wire: {ENVELOPE}.{f.name} must be a message (rule 3)")

    def reachable(self, roots):
        seen, todo = set(), list(roots)
        while todo:
            full = todo.pop()
            if full in seen:
                continue
            seen.add(full)
            for f in self.messages[full].fields:
                if f.type == T_MESSAGE:
                    todo.append(f.type_name)
        return seen

    # Names

    def swift_type(self, full):
        if full in self.enums:
            name = self.enums[full].name
        else:
            name = self.messages[full].name
        if "." in name:
            raise SystemExit(f"gen_wire: nested type {name} is not supported (maps aside)")
        return TYPE_NAMES.get(name, name)

    def c_type(self, full):
        name = self.messages[full].name if full in self.messages else self.enums[full].name
        return self.c_type_prefix + name.replace(".", "__")

    def c_func(self, full):
        return self.c_func_prefix + c_snake(self.messages[full].name)

    def c_const(self, m, oneof, f):
        return f"{self.c_const_prefix}{c_snake(m.name).upper()}__{oneof.name.upper()}_{f.name.upper()}"

    # Field kinds

    def is_map(self, f):
        return f.type == T_MESSAGE and f.repeated and self.messages[f.type_name].map_entry

    def optional_oneof(self, m, f):
        """Rule 6: `oneof optional_x { T x = N; }` or a proto3 `optional`."""
        if f.oneof is None:
            return False
        o = m.oneofs[f.oneof]
        return f.proto3_optional or (len(o.fields) == 1 and o.name == "optional_" + f.name)

    def key(self, m, f):
        return f"{m.name}.{f.name}"

    def value_type(self, f):
        """Swift type of one (not repeated) value of the field."""
        if f.type in SCALARS:
            return SCALARS[f.type][0]
        if f.type == T_ENUM:
            return self.swift_type(f.type_name)
        if f.type == T_MESSAGE:
            if f.type_name in self.wrappers:
                inner = self.messages[f.type_name].fields[0]
                return f"[{self.value_type(inner)}]"
            return self.swift_type(f.type_name)
        raise SystemExit(f"gen_wire: field {f.owner.name}.{f.name}: type {f.type} is not supported")

    def field_kind(self, m, f):
        """One of: scalar, optional, list, map, required, message, optional_message."""
        if self.is_map(f):
            return "map"
        if f.repeated:
            return "list"
        if f.type == T_MESSAGE:
            if self.key(m, f) in OPTIONAL_FIELDS:
                return "optional_message"
            if f.type_name in self.enum_messages:
                return "required"
            return "message"
        if self.optional_oneof(m, f):
            return "optional"
        return "scalar"

    def swift_field_type(self, m, f):
        kind = self.field_kind(m, f)
        if kind == "map":
            entry = self.messages[f.type_name]
            k, v = entry.fields
            return f"[{self.value_type(k)}: {self.value_type(v)}]"
        if kind == "list":
            return f"[{self.value_type(f)}]"
        if kind in ("optional", "optional_message"):
            return f"{self.value_type(f)}?"
        return self.value_type(f)

    def zero(self, f):
        """Swift literal of the value an unset single field decodes to; None when there is none."""
        if f.type in SCALARS:
            return SCALARS[f.type][1]
        if f.type == T_ENUM:
            e = self.enums[f.type_name]
            zero = next((v for v in e.values if v.number == 0), None)
            return f".{ident(self.case_name(e, zero))}" if zero else f".unrecognized(0)"
        if f.type == T_MESSAGE:
            if f.type_name in self.wrappers:
                return "[]"
            if f.type_name in self.enum_messages:
                return None
            return f"{self.swift_type(f.type_name)}()"
        return None

    def default(self, m, f):
        key = self.key(m, f)
        if key in SWIFT_DEFAULTS:
            return SWIFT_DEFAULTS[key]
        kind = self.field_kind(m, f)
        if kind == "map":
            return "[:]"
        if kind == "list":
            return "[]"
        if kind in ("optional", "optional_message"):
            return "nil"
        return self.zero(f)

    def case_name(self, e, v):
        prefix = c_snake(e.name).upper() + "_"
        name = v.name[len(prefix):] if v.name.startswith(prefix) else v.name
        return camel(name)



# ─── Messages.swift ───────────────────────────────────────────────────────────────────────────────

HEADER = """// GENERATED by scripts/gen_wire.py from Proto/selm.proto — do not edit; run `make proto`.
"""


def gen_messages(s):
    out = [HEADER,
           "// The Swift value types of every message of selm.proto (package selm.v1). Doc comments are the",
           "// .proto's; field paths in `WireError.invalidField` use the proto (snake_case) names.",
           "// Mapping rules: scripts/gen_wire.py.", ""]
    # Envelope and its two body enums.
    env = s.envelope
    out += doc_lines(env.doc, "")
    out += [f"/// (`{s.package}.{env.name}`) `Body` is `ClientMessage` for client → server frames and `ServerMessage`",
            "/// for server → client frames. Encode with `Frame.encode(_:)`, decode with `Frame.decodeClient(_:)` /",
            "/// `Frame.decodeServer(_:)`.",
            "public struct Envelope<Body: Sendable & Equatable>: Sendable, Equatable {"]
    id_field = next(f for f in env.fields if f.name == "id")
    out += doc_lines(id_field.doc, "    ")
    out += ["    public var id: UInt64",
            "    /// The message (the `body` oneof).",
            "    public var body: Body",
            "",
            "    /// An envelope carrying `body` for request `id`.",
            "    public init(id: UInt64, body: Body) {",
            "        self.id = id",
            "        self.body = body",
            "    }",
            "}", ""]
    for swift, doc, members in (
            ("ClientMessage", "A request, client → server: the members of `Envelope.body` numbered below "
             f"{SERVER_BODY_FIRST}.", [f for f in s.body.fields if f.number < SERVER_BODY_FIRST]),
            ("ServerMessage", "A reply or push, server → client: the members of `Envelope.body` numbered "
             f"{SERVER_BODY_FIRST} and up.", [f for f in s.body.fields if f.number >= SERVER_BODY_FIRST])):
        out += [f"/// {doc}", f"public enum {swift}: Sendable, Equatable {{"]
        for f in members:
            out += doc_lines(f"Field {f.number}: {f.doc}" if f.doc else f"Field {f.number}.", "    ")
            out.append(f"    case {ident(camel(f.name))}({s.swift_type(f.type_name)})")
        out += ["", "    /// The proto field name of this case (\"submit_preferences\"), for logs and metrics.",
                "    public var name: String {", "        switch self {"]
        for f in members:
            out.append(f"        case .{ident(camel(f.name))}: \"{f.name}\"")
        out += ["        }", "    }", "}", ""]

    for m in s.order:
        if m is env or m.map_entry or m.full in s.wrappers:
            continue
        if m.full in s.enum_messages:
            out += gen_enum_message(s, m)
        else:
            out += gen_struct(s, m)
    for e in s.swift_enums:
        out += gen_enum(s, e)
    for (owner, const), (enum_name, value_name, swift_type) in CONSTANTS.items():
        e = s.constant_enums.get(enum_name)
        v = next((v for v in e.values if v.name == value_name), None) if e else None
        if v is None:
            raise SystemExit(f"gen_wire: CONSTANTS: no {enum_name}.{value_name} in selm.proto")
        out += [f"extension {owner} {{"]
        out += doc_lines(f"`{value_name}` of `{s.package}.{enum_name}`: {v.doc}" if v.doc else value_name, "    ")
        out += [f"    public static let {const}: {swift_type} = {v.number}", "}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def type_doc(s, m, extra=""):
    lines = doc_lines(m.doc, "")
    lines.append(f"/// (`{s.package}.{m.name}`){extra}")
    return lines


def gen_enum_message(s, m):
    swift = s.swift_type(m.full)
    out = type_doc(s, m, " The members of the `" + m.oneofs[0].name + "` oneof; one is always set.")
    out.append(f"public enum {swift}: Sendable, Equatable {{")
    for f in m.fields:
        out += doc_lines(f.doc, "    ")
        out.append(f"    case {ident(camel(f.name))}({s.value_type(f)})")
    out += ["}", ""]
    return out


def gen_struct(s, m):
    swift = s.swift_type(m.full)
    out = type_doc(s, m)
    out.append(f"public struct {swift}: Sendable, Equatable {{")
    props = []  # (name, type, default)
    emitted_oneofs = set()
    for f in m.fields:
        if f.oneof is not None and not s.optional_oneof(m, f):
            o = m.oneofs[f.oneof]
            if f.oneof in emitted_oneofs:
                continue
            emitted_oneofs.add(f.oneof)
            enum_name = camel(o.name, upper_first=True)
            out += doc_lines(o.doc or f"The `{o.name}` oneof.", "    ")
            out.append(f"    public enum {enum_name}: Sendable, Equatable {{")
            for member in o.fields:
                out += doc_lines(member.doc, "        ")
                out.append(f"        case {ident(camel(member.name))}({s.value_type(member)})")
            out += ["    }", ""]
            first = o.fields[0]
            zero = s.zero(first)
            if zero is None:
                raise SystemExit(f"gen_wire: oneof {m.name}.{o.name}: its first member needs a zero value (rule 7)")
            props.append((camel(o.name), enum_name, f".{ident(camel(first.name))}({zero})", o.doc, f"The `{o.name}` oneof."))
            continue
        doc = f.doc
        if s.optional_oneof(m, f) and not f.proto3_optional:
            doc = "\n".join(d for d in (m.oneofs[f.oneof].doc, f.doc) if d)
        props.append((camel(f.name), s.swift_field_type(m, f), s.default(m, f), doc, ""))
    for name, typ, _, doc, fallback in props:
        out += doc_lines(doc or fallback, "    ")
        out.append(f"    public var {ident(name)}: {typ}")
    if props:
        out.append("")
    out.append("    /// Creates the message; omitted arguments take the values an unset field decodes to.")
    params = [f"{ident(name)}: {typ}" + (f" = {default}" if default is not None else "") for name, typ, default, _, _ in props]
    if not props:
        out.append("    public init() {}")
    else:
        out += wrap_call("    public init(", params, ") {", "                ")
        for name, *_ in props:
            out.append(f"        self.{name} = {name}")
        out.append("    }")
    out += ["}", ""]
    return out


def gen_enum(s, e):
    swift = s.swift_type(e.full)
    out = doc_lines(e.doc, "")
    out.append(f"/// (`{s.package}.{e.name}`; open: a value this build does not know is kept as `.unrecognized`)")
    out.append(f"public enum {swift}: Sendable, Equatable, Hashable {{")
    for v in e.values:
        out += doc_lines(v.doc, "    ")
        out.append(f"    case {ident(s.case_name(e, v))}")
    out += ["    /// A value this build does not know (sent by a newer peer); kept so it can be re-encoded.",
            "    case unrecognized(Int32)", "",
            "    /// The value on the wire.", "    public var rawValue: Int32 {", "        switch self {"]
    for v in e.values:
        out.append(f"        case .{ident(s.case_name(e, v))}: {v.number}")
    out += ["        case .unrecognized(let v): v", "        }", "    }", "",
            "    /// The value's name in the .proto without the enum's prefix (\"INVALID_ARGUMENT\");",
            "    /// `.unrecognized(v)` is \"<ENUM>_<v>\" (e.g. \"ERROR_CODE_42\").",
            "    public var protoName: String {", "        switch self {"]
    for v in e.values:
        prefix = c_snake(e.name).upper() + "_"
        bare = v.name[len(prefix):] if v.name.startswith(prefix) else v.name
        out.append(f"        case .{ident(s.case_name(e, v))}: \"{bare}\"")
    out += [f"        case .unrecognized(let v): \"{c_snake(e.name).upper()}_\\(v)\"", "        }", "    }", "",
            "    /// Maps any wire value; unknown ones become `.unrecognized`.",
            "    public init(rawValue: Int32) {", "        switch rawValue {"]
    for v in e.values:
        out.append(f"        case {v.number}: self = .{ident(s.case_name(e, v))}")
    out += ["        default: self = .unrecognized(rawValue)", "        }", "    }", "}", ""]
    return out


# ─── Encode.swift ─────────────────────────────────────────────────────────────────────────────────


def enc_name(s, full):
    return "encode" + (s.messages[full].name if full in s.wrappers else s.swift_type(full))


def gen_encode(s):
    out = [HEADER,
           "// Swift values → protobuf-c structs, allocated in an `Arena` (Codec.swift) that lives until the",
           "// envelope is packed. Mapping rules: scripts/gen_wire.py.", "",
           "internal import SelmProtoC", "internal import CProtobufC", "", "extension Arena {"]
    env = s.envelope
    for swift, members in (("ClientMessage", [f for f in s.body.fields if f.number < SERVER_BODY_FIRST]),
                           ("ServerMessage", [f for f in s.body.fields if f.number >= SERVER_BODY_FIRST])):
        ctype = s.c_type(env.full)
        out += [f"    func envelope(_ e: Envelope<{swift}>) -> UnsafeMutablePointer<{ctype}> {{",
                f"        let p = new({ctype}.self)",
                f"        {s.c_func(env.full)}__init(p)",
                "        p.pointee.id = e.id",
                "        switch e.body {"]
        for f in members:
            out += [f"        case .{ident(camel(f.name))}(let m):",
                    f"            p.pointee.{s.body.name}_case = {s.c_const(env, s.body, f)}",
                    f"            p.pointee.{f.name} = {enc_name(s, f.type_name)}(m)"]
        out += ["        }", "        return p", "    }", ""]
    for m in s.order:
        if m is env or m.map_entry:
            continue
        out += gen_encode_message(s, m)
    while out[-1] == "":
        out.pop()
    out.append("}")
    return "\n".join(out) + "\n"


def enc_value(s, f, expr):
    """C value of one (not repeated) value `expr` of field f."""
    if f.type == T_STRING:
        return f"string({expr})"
    if f.type == T_BYTES:
        return f"bytes({expr})"
    if f.type == T_BOOL:
        return f"{expr} ? 1 : 0"
    if f.type == T_ENUM:
        return f"{s.c_type(f.type_name)}(rawValue: UInt32(bitPattern: {expr}.rawValue))"
    if f.type == T_MESSAGE:
        return f"{enc_name(s, f.type_name)}({expr})"
    return expr


def enc_field(s, m, f, expr, indent):
    """Statements setting C field f of `p.pointee` from the Swift value `expr`."""
    kind = s.field_kind(m, f)
    c = f"p.pointee.{f.name}"
    if kind == "map":
        entry = s.messages[f.type_name]
        k, v = entry.fields
        if k.type != T_STRING or v.type not in SCALARS or v.type == T_STRING:
            raise SystemExit(f"gen_wire: map {m.name}.{f.name}: only map<string, scalar> is supported")
        return [f"{indent}p.pointee.n_{f.name} = {expr}.count",
                f"{indent}{c} = mapEntries({expr}, init: {s.c_func(entry.full)}__init) {{",
                f"{indent}    $0.pointee.key = $1",
                f"{indent}    $0.pointee.value = $2",
                f"{indent}}}"]
    if kind == "list":
        if f.type == T_BYTES:
            raise SystemExit(f"gen_wire: repeated {m.name}.{f.name}: repeated bytes is not supported")
        if f.type == T_STRING:
            value = f"strings({expr})"
        elif f.type == T_MESSAGE:
            value = f"pointers({expr}) {{ {enc_name(s, f.type_name)}($0) }}"
        elif f.type == T_BOOL:
            value = f"array({expr}.map {{ $0 ? 1 as protobuf_c_boolean : 0 }})"
        elif f.type in SCALARS:
            value = f"array({expr})"
        else:
            raise SystemExit(f"gen_wire: repeated {m.name}.{f.name}: type {f.type} is not supported")
        return [f"{indent}p.pointee.n_{f.name} = {expr}.count", f"{indent}{c} = {value}"]
    if kind == "optional":
        o = m.oneofs[f.oneof]
        return [f"{indent}if let v = {expr} {{",
                f"{indent}    p.pointee.{o.name}_case = {s.c_const(m, o, f)}",
                f"{indent}    {c} = {enc_value(s, f, 'v')}",
                f"{indent}}}"]
    if kind == "optional_message":
        return [f"{indent}{c} = {expr}.map {{ {enc_name(s, f.type_name)}($0) }}"]
    if kind == "message" and f.type_name not in s.wrappers:
        return [f"{indent}{c} = {expr} == {s.swift_type(f.type_name)}() ? nil : {enc_value(s, f, expr)}"]
    return [f"{indent}{c} = {enc_value(s, f, expr)}"]


def gen_encode_message(s, m):
    ctype = s.c_type(m.full)
    if m.full in s.wrappers:
        inner = m.fields[0]
        head = f"    func {enc_name(s, m.full)}(_ v: [{s.value_type(inner)}]) -> UnsafeMutablePointer<{ctype}> {{"
    else:
        head = f"    func {enc_name(s, m.full)}(_ v: {s.swift_type(m.full)}) -> UnsafeMutablePointer<{ctype}> {{"
    out = [head, f"        let p = new({ctype}.self)", f"        {s.c_func(m.full)}__init(p)"]
    if m.full in s.wrappers:
        out += enc_field(s, m, m.fields[0], "v", "        ")
    elif m.full in s.enum_messages:
        o = m.oneofs[0]
        out.append("        switch v {")
        for f in m.fields:
            out += [f"        case .{ident(camel(f.name))}(let x):",
                    f"            p.pointee.{o.name}_case = {s.c_const(m, o, f)}",
                    f"            p.pointee.{f.name} = {enc_value(s, f, 'x')}"]
        out.append("        }")
    else:
        done = set()
        for f in m.fields:
            if f.oneof is not None and not s.optional_oneof(m, f):
                if f.oneof in done:
                    continue
                done.add(f.oneof)
                o = m.oneofs[f.oneof]
                out.append(f"        switch v.{camel(o.name)} {{")
                for member in o.fields:
                    out += [f"        case .{ident(camel(member.name))}(let x):",
                            f"            p.pointee.{o.name}_case = {s.c_const(m, o, member)}",
                            f"            p.pointee.{member.name} = {enc_value(s, member, 'x')}"]
                out.append("        }")
                continue
            out += enc_field(s, m, f, f"v.{ident(camel(f.name))}", "        ")
    out += ["        return p", "    }", ""]
    return out


# ─── Decode.swift ─────────────────────────────────────────────────────────────────────────────────


def dec_name(s, full):
    return "decode" + (s.messages[full].name if full in s.wrappers else s.swift_type(full))


def gen_decode(s):
    out = [HEADER,
           "// protobuf-c structs → Swift values. Requests (strict: strings checked, each value passed through",
           "// its `validate(at:)` from Validation.swift) throw `FieldError` naming the field's proto path;",
           "// replies are read as they are. Mapping rules: scripts/gen_wire.py.", "",
           "internal import SelmProtoC", "internal import CProtobufC", "", "extension Unpacked {"]
    env = s.envelope
    ctype = s.c_type(env.full)
    out += ["    /// The request an envelope carries, nil when its body is a reply (or unset).",
            f"    static func decodeClientBody(_ e: {ctype}) throws(FieldError) -> ClientMessage? {{",
            f"        switch e.{s.body.name}_case {{"]
    for f in s.body.fields:
        if f.number < SERVER_BODY_FIRST:
            out += [f"        case {s.c_const(env, s.body, f)}:",
                    f"            return .{ident(camel(f.name))}(try {dec_name(s, f.type_name)}(e.{f.name}!.pointee, at: \"\"))"]
    out += ["        default:", "            return nil", "        }", "    }", "",
            "    /// The reply or push an envelope carries, nil when its body is a request (or unset).",
            f"    static func decodeServerBody(_ e: {ctype}) -> ServerMessage? {{",
            f"        switch e.{s.body.name}_case {{"]
    for f in s.body.fields:
        if f.number >= SERVER_BODY_FIRST:
            out += [f"        case {s.c_const(env, s.body, f)}:",
                    f"            return .{ident(camel(f.name))}({dec_name(s, f.type_name)}(e.{f.name}!.pointee))"]
    out += ["        default:", "            return nil", "        }", "    }", ""]
    for m in s.order:
        if m is env or m.map_entry:
            continue
        if m.full in s.client_types:
            out += gen_decode_message(s, m, strict=True)
        elif m.full in s.server_types:
            out += gen_decode_message(s, m, strict=False)
    while out[-1] == "":
        out.pop()
    out.append("}")
    return "\n".join(out) + "\n"


def dec_value(s, f, expr, path, strict):
    """Swift expression of one (not repeated) C value `expr` of field f; `path` its field path."""
    if f.type == T_STRING:
        return f"try text({expr}, {path})" if strict else f"string({expr})"
    if f.type == T_BYTES:
        return f"binary({expr})"
    if f.type == T_BOOL:
        return f"{expr} != 0"
    if f.type == T_ENUM:
        return f"{s.swift_type(f.type_name)}(rawValue: Int32(bitPattern: {expr}.rawValue))"
    if f.type == T_MESSAGE:
        return (f"try {dec_name(s, f.type_name)}({expr}.pointee, at: {path})" if strict
                else f"{dec_name(s, f.type_name)}({expr}.pointee)")
    return expr


def dec_message_member(s, f, c, path, strict, indent, target):
    """Statements assigning to `target` the value of message field/member f from C pointer `c`."""
    zero = s.zero(f)
    missing = f'throw FieldError({path}, "is required")' if zero is None else f"{target} = {zero}"
    return [f"{indent}if let q = {c} {{", f"{indent}    {target} = {dec_value(s, f, 'q', path, strict)}",
            f"{indent}}} else {{", f"{indent}    {missing}", f"{indent}}}"]


def gen_decode_message(s, m, strict):
    ctype = s.c_type(m.full)
    throws = " throws(FieldError)" if strict else ""
    path_param = ", at path: String" if strict else ""
    if m.full in s.wrappers:
        rtype = f"[{s.value_type(m.fields[0])}]"
    else:
        rtype = s.swift_type(m.full)
    out = [f"    static func {dec_name(s, m.full)}(_ m: {ctype}{path_param}){throws} -> {rtype} {{"]

    def fpath(f, index=None):
        if not strict:
            return None
        base = f"fieldPath(path, \"{f.name}\")"
        return base if index is None else f"\"\\({base})[\\({index})]\""

    if not strict:
        for f in m.fields:
            if s.field_kind(m, f) == "required" or (f.oneof is not None and m.full in s.enum_messages):
                raise SystemExit(f"gen_wire: {m.name} (a reply) has a required field or no unset state (rules 4, 8)")

    def list_decode(f, target_var, indent):
        """Statements building `var <target_var>: [T]` from repeated C field f of m."""
        n, c = f"m.n_{f.name}", f"m.{f.name}"
        if f.type in SCALARS and f.type not in (T_STRING, T_BOOL):
            return [f"{indent}let {target_var} = array({c}, {n})"]
        if f.type == T_BOOL:
            return [f"{indent}let {target_var} = array({c}, {n}).map {{ $0 != 0 }}"]
        lines = [f"{indent}var {target_var}: [{s.value_type(f)}] = []",
                 f"{indent}{target_var}.reserveCapacity({n})",
                 f"{indent}for i in 0..<{n} {{"]
        if f.type == T_STRING:
            lines.append(f"{indent}    {target_var}.append({dec_value(s, f, f'{c}[i]', fpath(f, 'i'), strict)})")
        elif f.type == T_MESSAGE:
            lines.append(f"{indent}    {target_var}.append({dec_value(s, f, f'{c}[i]!', fpath(f, 'i'), strict)})")
        else:
            raise SystemExit(f"gen_wire: repeated {m.name}.{f.name}: type {f.type} is not supported")
        lines.append(f"{indent}}}")
        return lines

    body = []
    if m.full in s.wrappers:
        body += list_decode(m.fields[0], "list", "        ")
        body.append("        return list")
    elif m.full in s.enum_messages:
        o = m.oneofs[0]
        body += [f"        var v: {rtype}", f"        switch m.{o.name}_case {{"]
        for f in m.fields:
            body.append(f"        case {s.c_const(m, o, f)}:")
            body += member_decode(s, m, f, fpath(f), strict, "            ", lambda x, f=f: f"v = .{ident(camel(f.name))}({x})")
        names = ", ".join(f.name for f in m.fields)
        body += ["        default:", f"            throw FieldError(path, \"one of {names} is required\")", "        }"]
        body += ["        try v.validate(at: path)", "        return v"]
    else:
        # Fields decoded in declaration order: those needing statements (lists, maps, messages,
        # oneofs, checked strings) into locals named `_field`, plain scalars inline in the call.
        args = []
        done = set()
        for f in m.fields:
            local = "_" + camel(f.name)
            if f.oneof is not None and not s.optional_oneof(m, f):
                if f.oneof in done:
                    continue
                done.add(f.oneof)
                o = m.oneofs[f.oneof]
                local = "_" + camel(o.name)
                enum_name = camel(o.name, upper_first=True)
                body += [f"        let {local}: {rtype}.{enum_name}", f"        switch m.{o.name}_case {{"]
                for member in o.fields:
                    body.append(f"        case {s.c_const(m, o, member)}:")
                    body += member_decode(s, m, member, fpath(member), strict, "            ",
                                          lambda x, member=member, local=local: f"{local} = .{ident(camel(member.name))}({x})")
                first = o.fields[0]
                body += ["        default:", f"            {local} = .{ident(camel(first.name))}({s.zero(first)})", "        }"]
                args.append((camel(o.name), local))
                continue
            kind = s.field_kind(m, f)
            c = f"m.{f.name}"
            if kind == "scalar":
                value = dec_value(s, f, c, fpath(f), strict)
                if value.startswith("try "):
                    body.append(f"        let {local} = {value}")
                    value = local
                args.append((camel(f.name), value))
                continue
            if kind == "optional":
                o = m.oneofs[f.oneof]
                body.append(f"        let {local} = m.{o.name}_case == {s.c_const(m, o, f)} ? {dec_value(s, f, c, fpath(f), strict)} : nil")
                args.append((camel(f.name), local))
                continue
            if kind == "list":
                body += list_decode(f, local, "        ")
            elif kind == "map":
                entry = s.messages[f.type_name]
                vt = entry.fields[1]
                body += [f"        var {local}: {s.swift_field_type(m, f)} = [:]",
                         f"        for i in 0..<m.n_{f.name} {{",
                         f"            let entry = {c}[i]!.pointee",
                         f"            {local}[cString(entry.key)] = {dec_value(s, vt, 'entry.value', None, strict)}",
                         "        }"]
            elif kind == "optional_message":
                body += [f"        var {local}: {s.value_type(f)}? = nil",
                         f"        if let q = {c} {{", f"            {local} = {dec_value(s, f, 'q', fpath(f), strict)}",
                         "        }"]
            else:  # required, message
                body.append(f"        let {local}: {s.value_type(f)}")
                body += dec_message_member(s, f, c, fpath(f), strict, "        ", local)
            args.append((camel(f.name), local))
        call_args = [f"{name}: {value}" for name, value in args]
        if strict:
            body += wrap_call(f"        var v = {rtype}(", call_args, ")", "            ")
            body += ["        try v.validate(at: path)", "        return v"]
        else:
            body += wrap_call(f"        return {rtype}(", call_args, ")", "            ")
    out += body
    out += ["    }", ""]
    return out


def member_decode(s, m, f, path, strict, indent, assign):
    """Statements for oneof member f (its case is set): `assign(value)`."""
    c = f"m.{f.name}"
    if f.type == T_MESSAGE:
        zero = s.zero(f)
        missing = f'throw FieldError({path}, "is required")' if zero is None else assign(zero)
        return [f"{indent}if let q = {c} {{", f"{indent}    {assign(dec_value(s, f, 'q', path, strict))}",
                f"{indent}}} else {{", f"{indent}    {missing}", f"{indent}}}"]
    return [f"{indent}{assign(dec_value(s, f, c, path, strict))}"]


# ─── Main ─────────────────────────────────────────────────────────────────────────────────────────


def main(argv):
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    schema = Schema(*load(argv[1]))
    os.makedirs(argv[2], exist_ok=True)
    for name, text in (("Messages.swift", gen_messages(schema)), ("Encode.swift", gen_encode(schema)),
                       ("Decode.swift", gen_decode(schema))):
        with open(os.path.join(argv[2], name), "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

import Foundation

/// One preference row as TRL datasets carry it, parsed but not tokenized: the one reader of
/// preference JSONL, for `selm train` / `selm loss` (through the learner's `PreferenceData`) and
/// `selm client submit`.
///
/// Fields (others are ignored):
/// - `prompt`: a string (TRL's standard format) or a list of `{"role", "content"}` messages
///   (conversational); or `prompt_ids`, token ids.
/// - `chosen`, `rejected` (required) and `reference_response` (optional, the reference policy's own
///   response for SELM's optimism term): a string, or — with a conversational prompt — a list of
///   messages (one assistant message, or several turns ending with the assistant's); or
///   `chosen_ids`, `rejected_ids`, `reference_ids`. A part's `_ids` key wins over its text key.
/// - `weight`: a number (default 1); `source`: a string (provenance, kept in the server's log).
///
/// `PromptResponseEncoder.encode(_:textPromptsAsChat:)` turns a row into token ids.
public struct TRLRow: Sendable, Equatable {
    /// A prompt: text, a conversation, or token ids.
    public enum Prompt: Sendable, Equatable {
        case text(String)
        case messages([ChatTurn])
        case ids([Int32])
    }

    /// A response: text, the turns of a conversational response, or token ids.
    public enum Response: Sendable, Equatable {
        case text(String)
        case messages([ChatTurn])
        case ids([Int32])
    }

    public var prompt: Prompt
    public var chosen: Response
    public var rejected: Response
    public var reference: Response?
    public var weight: Float
    public var source: String?

    public init(prompt: Prompt, chosen: Response, rejected: Response, reference: Response? = nil, weight: Float = 1,
                source: String? = nil) {
        self.prompt = prompt; self.chosen = chosen; self.rejected = rejected
        self.reference = reference; self.weight = weight; self.source = source
    }

    /// The row of one JSON object; `place` names it in errors ("data.jsonl:3").
    /// - Throws: `TRLRowError` naming the field: a missing or mistyped part, an empty text or
    ///   message list, a message without string `role`/`content`, a conversational response whose
    ///   last message is not the assistant's or whose prompt is not a conversation, a token id that
    ///   is not an integer in [0, 2³¹), a weight that is not a number.
    public static func parse(_ object: [String: Any], place: String) throws(TRLRowError) -> TRLRow {
        func bad(_ field: String, _ reason: String) -> TRLRowError { TRLRowError(place: place, field: field, reason: reason) }
        func present(_ key: String) -> Any? {
            guard let v = object[key], !(v is NSNull) else { return nil }
            return v
        }
        func ids(_ key: String) throws(TRLRowError) -> [Int32]? {
            guard let v = present(key) else { return nil }
            guard let list = v as? [Any] else { throw bad(key, "must be a list of token ids") }
            var out: [Int32] = []
            for (i, x) in list.enumerated() {
                guard let n = tokenID(x) else { throw bad("\(key)[\(i)]", "must be a token id (an integer in [0, 2^31))") }
                out.append(n)
            }
            return out
        }
        func messages(_ key: String, _ v: Any) throws(TRLRowError) -> [ChatTurn]? {
            guard let list = v as? [Any] else { return nil }
            if list.isEmpty { throw bad(key, "must not be an empty list of messages") }
            var out: [ChatTurn] = []
            for (i, m) in list.enumerated() {
                guard let d = m as? [String: Any], let role = d["role"] as? String, let content = d["content"] as? String else {
                    throw bad("\(key)[\(i)]", "must be an object with string 'role' and 'content'")
                }
                out.append(ChatTurn(role: role, content: content))
            }
            return out
        }
        func response(_ key: String, idsKey: String) throws(TRLRowError) -> Response? {
            if let i = try ids(idsKey) { return .ids(i) }
            guard let v = present(key) else { return nil }
            if let s = v as? String {
                if s.isEmpty { throw bad(key, "is empty") }
                return .text(s)
            }
            guard let turns = try messages(key, v) else { throw bad(key, "must be a string or a list of messages") }
            return .messages(turns)
        }

        let prompt: Prompt
        if let i = try ids("prompt_ids") {
            prompt = .ids(i)
        } else if let v = present("prompt") {
            if let s = v as? String { prompt = .text(s) } else if let m = try messages("prompt", v) { prompt = .messages(m) } else {
                throw bad("prompt", "must be a string or a list of messages")
            }
        } else {
            throw bad("prompt", "is missing (expected prompt/chosen/rejected or prompt_ids/chosen_ids/rejected_ids)")
        }
        // A missing part is named in the form the row uses (an ids row: `chosen_ids`).
        func missing(_ key: String) -> TRLRowError {
            if case .ids = prompt { return bad(key + "_ids", "is missing") }
            return bad(key, "is missing")
        }
        guard let chosen = try response("chosen", idsKey: "chosen_ids") else { throw missing("chosen") }
        guard let rejected = try response("rejected", idsKey: "rejected_ids") else { throw missing("rejected") }
        let reference = try response("reference_response", idsKey: "reference_ids")
        var weight: Float = 1
        if let w = present("weight") {
            guard let n = w as? NSNumber, !isBoolean(n) else { throw bad("weight", "must be a number") }
            weight = n.floatValue
        }
        var source: String? = nil
        if let s = present("source") {
            guard let text = s as? String else { throw bad("source", "must be a string") }
            source = text
        }
        let row = TRLRow(prompt: prompt, chosen: chosen, rejected: rejected, reference: reference, weight: weight, source: source)
        if let (part, reason) = row.conversationalResponseProblem {
            throw bad(part == .reference ? "reference_response" : part.rawValue, reason)
        }
        return row
    }

    /// The rows of JSONL `data` with their 1-based line numbers; blank lines are skipped. `name`
    /// (a file path, or "-") prefixes the places in errors ("data.jsonl:3").
    /// - Throws: `TRLRowError` for the first line that is not a JSON object or not a valid row.
    public static func read(jsonl data: Data, name: String) throws(TRLRowError) -> [(row: TRLRow, line: Int)] {
        var out: [(row: TRLRow, line: Int)] = []
        var lineNo = 0
        for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNo += 1
            let line = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw[...]
            if line.allSatisfy({ $0 == 32 || $0 == 9 }) { continue }
            let place = "\(name):\(lineNo)"
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
                throw TRLRowError(place: place, field: "", reason: "not a JSON object")
            }
            out.append((try parse(object, place: place), lineNo))
        }
        return out
    }
}

extension TRLRow {
    /// A response of a row: `chosen`, `rejected` or `reference` (the JSONL key `reference_response`,
    /// the wire's `PreferenceRow.reference`).
    public enum Part: String, Sendable, CaseIterable {
        case chosen, rejected, reference
    }

    /// TRL's rules for conversational responses — the one statement of them, for the JSONL parser
    /// and the server's `SubmitPreferences`: a response given as messages needs a conversational
    /// prompt (TRL renders prompt + response through the chat template) and must end with the
    /// assistant's message. The first part that breaks them (chosen, rejected, reference) and why;
    /// nil when none does. Pure; any thread.
    public var conversationalResponseProblem: (part: Part, reason: String)? {
        for (part, r) in [(Part.chosen, chosen), (.rejected, rejected), (.reference, reference)] {
            guard case .messages(let turns)? = r else { continue }
            guard prompt.isConversation else {
                return (part, "a conversational response needs a conversational prompt (a list of messages), as in TRL")
            }
            guard turns.last?.role == "assistant" else {
                return (part, "a conversational response must end with the assistant's message")
            }
        }
        return nil
    }
}

extension TRLRow.Prompt {
    /// Whether the prompt is a list of messages (TRL's conversational format).
    public var isConversation: Bool {
        if case .messages = self { return true }
        return false
    }
}

/// A preference row that cannot be read: where (`place`, "file:line"), which field, and why.
public struct TRLRowError: Error, Equatable, Sendable, CustomStringConvertible {
    public var place: String
    /// The JSON key ("chosen", "prompt[1]", "chosen_ids[4]"); empty when the line as a whole is bad.
    public var field: String
    public var reason: String

    public init(place: String, field: String, reason: String) {
        self.place = place; self.field = field; self.reason = reason
    }

    public var description: String {
        field.isEmpty ? "\(place): \(reason)" : "\(place): field '\(field)': \(reason)"
    }
}

/// Foundation parses JSON `true`/`false` as NSNumber too: tells them apart from numbers.
private func isBoolean(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

/// A JSON number that is a token id: an integer in [0, 2³¹), not a boolean.
private func tokenID(_ v: Any) -> Int32? {
    guard let n = v as? NSNumber, !isBoolean(n) else { return nil }
    let d = n.doubleValue
    guard d == d.rounded(), d >= 0, d < 2_147_483_648 else { return nil }
    return Int32(d)
}

import Foundation
import Model

/// One preference pair in token ids: the prompt (conditioning, not scored), the preferred and the
/// dispreferred response, and optionally y_ref — the reference policy's own (greedy) response, which
/// SELM's optimism term scores.
public struct PreferencePair: Sendable, Equatable, Codable {
    public var prompt: [Int32]
    public var chosen: [Int32]
    public var rejected: [Int32]
    public var reference: [Int32]?
    public var weight: Float

    public init(prompt: [Int32], chosen: [Int32], rejected: [Int32], reference: [Int32]? = nil, weight: Float = 1) {
        self.prompt = prompt; self.chosen = chosen; self.rejected = rejected
        self.reference = reference; self.weight = weight
    }

    /// Checks the pair against the model — the one place a preference row is checked, for the
    /// server (rows of `SubmitPreferences`) and for `selm train`/`loss` (JSONL rows): token ids in
    /// the vocabulary, no empty part, each prompt + response within the context, a finite weight ≥ 0.
    /// - Parameters:
    ///   - place: where the row came from, for errors ("file:line", "rows[3]").
    ///   - idsField: the name of a part's token list in errors (the server's is "chosen.ids").
    /// - Throws: `LearnerError.outOfRange` for a token id outside the vocabulary or a response beyond
    ///   the context, `LearnerError.badRow` for an empty part or a bad weight; each names the field.
    public func validate(vocabSize: Int, contextLength: Int, at place: String,
                         idsField: (String) -> String = { $0 }) throws {
        func bad(_ f: String, _ r: String) -> LearnerError { .badRow(place: place, field: f, reason: r) }
        for (name, ids) in [("prompt", prompt), ("chosen", chosen), ("rejected", rejected), ("reference", reference ?? [])] {
            if let i = ids.firstIndex(where: { $0 < 0 || Int($0) >= vocabSize }) {
                throw LearnerError.outOfRange(place: place, field: "\(idsField(name))[\(i)]",
                                              reason: "token id \(ids[i]) is outside the vocabulary [0, \(vocabSize))")
            }
        }
        if prompt.isEmpty { throw bad("prompt", "is empty") }
        for (name, resp) in [("chosen", chosen), ("rejected", rejected), ("reference", reference ?? [0])] {
            if resp.isEmpty { throw bad(name, "is empty") }
            if prompt.count + resp.count > contextLength {
                throw LearnerError.outOfRange(place: place, field: name,
                                              reason: "prompt + response is \(prompt.count + resp.count) tokens, beyond the context length \(contextLength)")
            }
        }
        if !(weight.isFinite && weight >= 0) { throw bad("weight", "must be a finite number ≥ 0, got \(weight)") }
    }
}

/// A prompt as TRL datasets carry it: plain text or a list of chat messages.
public enum PromptInput: Sendable, Equatable {
    case text(String)
    case messages([(role: String, content: String)])

    public static func == (a: PromptInput, b: PromptInput) -> Bool {
        switch (a, b) {
        case let (.text(x), .text(y)): return x == y
        case let (.messages(x), .messages(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.role == $1.role && $0.content == $1.content }
        default: return false
        }
    }
}

/// Turns text rows into token ids the way TRL does: the chat template (with the generation prompt)
/// is applied to the prompt; each response is tokenized on its own and EOS is appended.
public protocol PreferenceTextEncoder {
    func encodePrompt(_ prompt: PromptInput) throws -> [Int32]
    func encodeResponse(_ text: String) throws -> [Int32]
}

/// Reads preference rows from JSONL: either text rows
/// `{"prompt", "chosen", "rejected", "reference_response"?, "weight"?}` (prompt a string or a list of
/// `{"role","content"}` messages; responses strings, or TRL's conversational form — a list whose last
/// message is the assistant's) or token-id rows `{"prompt_ids", "chosen_ids", "rejected_ids",
/// "reference_ids"?, "weight"?}` taken as they are. The whole file is parsed and checked before
/// anything is returned: a malformed row is an error naming its line.
public enum PreferenceData {
    public static func load(path: String, encoder: PreferenceTextEncoder?, vocabSize: Int, contextLength: Int) throws -> [PreferencePair] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw LearnerError.io(file: path, reason: "cannot read: \(error.localizedDescription)")
        }
        var pairs: [PreferencePair] = []
        var lineNo = 0
        for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNo += 1
            let line = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw[...]
            if line.allSatisfy({ $0 == 32 || $0 == 9 }) { continue }
            let place = "\(path):\(lineNo)"
            guard let obj = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
                throw LearnerError.badRow(place: place, field: "", reason: "not a JSON object")
            }
            let pair = try parse(obj, place: place, encoder: encoder)
            try pair.validate(vocabSize: vocabSize, contextLength: contextLength, at: place)
            pairs.append(pair)
        }
        if pairs.isEmpty { throw LearnerError.badRow(place: path, field: "", reason: "no preference rows") }
        return pairs
    }

    /// Parses one row object (text or ids).
    public static func parse(_ obj: [String: Any], place: String, encoder: PreferenceTextEncoder?) throws -> PreferencePair {
        func bad(_ f: String, _ r: String) -> LearnerError { .badRow(place: place, field: f, reason: r) }
        var weight: Float = 1
        if let w = obj["weight"], !(w is NSNull) {
            guard let n = w as? NSNumber, !isJSONBoolean(w) else { throw bad("weight", "must be a number") }
            weight = n.floatValue
        }
        if obj["prompt_ids"] != nil || obj["chosen_ids"] != nil {
            func ids(_ k: String, required: Bool = true) throws -> [Int32]? {
                guard let v = obj[k], !(v is NSNull) else {
                    if required { throw bad(k, "is missing") }
                    return nil
                }
                guard let a = v as? [Any] else { throw bad(k, "must be an array of token ids") }
                return try a.enumerated().map { i, x in
                    guard let n = jsonInteger(x), abs(n) < 1 << 31 else { throw bad("\(k)[\(i)]", "must be an integer token id") }
                    return Int32(n)
                }
            }
            return PreferencePair(prompt: try ids("prompt_ids")!, chosen: try ids("chosen_ids")!,
                                  rejected: try ids("rejected_ids")!, reference: try ids("reference_ids", required: false),
                                  weight: weight)
        }
        guard let encoder else { throw bad("prompt", "text rows need a tokenizer") }
        guard let p = obj["prompt"] else { throw bad("prompt", "is missing (expected prompt/chosen/rejected or prompt_ids/chosen_ids/rejected_ids)") }
        let prompt: PromptInput
        if let s = p as? String {
            prompt = .text(s)
        } else if let list = p as? [Any] {
            prompt = .messages(try messages(list, field: "prompt", bad: bad))
        } else { throw bad("prompt", "must be a string or a list of messages") }
        func response(_ k: String, required: Bool = true) throws -> String? {
            guard let v = obj[k], !(v is NSNull) else {
                if required { throw bad(k, "is missing") }
                return nil
            }
            if let s = v as? String {
                if s.isEmpty { throw bad(k, "is empty") }
                return s
            }
            if let list = v as? [Any] {
                let ms = try messages(list, field: k, bad: bad)
                guard let last = ms.last, last.role == "assistant", !last.content.isEmpty else {
                    throw bad(k, "conversational responses must end with a non-empty assistant message")
                }
                return last.content
            }
            throw bad(k, "must be a string")
        }
        let chosen = try response("chosen")!, rejected = try response("rejected")!
        let reference = try response("reference_response", required: false)
        do {
            return PreferencePair(prompt: try encoder.encodePrompt(prompt), chosen: try encoder.encodeResponse(chosen),
                                  rejected: try encoder.encodeResponse(rejected),
                                  reference: try reference.map { try encoder.encodeResponse($0) }, weight: weight)
        } catch let e as LearnerError { throw e } catch {
            throw bad("prompt", "\(error)")
        }
    }

    static func messages(_ list: [Any], field: String, bad: (String, String) -> LearnerError) throws -> [(role: String, content: String)] {
        try list.enumerated().map { i, m in
            guard let d = m as? [String: Any], let role = d["role"] as? String, let content = d["content"] as? String else {
                throw bad("\(field)[\(i)]", "must be an object with string 'role' and 'content'")
            }
            return (role, content)
        }
    }
}

/// Errors of the learner; each names the file, row or field concerned.
public enum LearnerError: Error, CustomStringConvertible, Equatable {
    /// A file could not be read or written.
    case io(file: String, reason: String)
    /// A preference row is malformed (`place` is "file:line" or a request field path).
    case badRow(place: String, field: String, reason: String)
    /// A preference row does not fit the model: a token id outside its vocabulary, a prompt +
    /// response beyond its context (`place` and `field` as for `badRow`).
    case outOfRange(place: String, field: String, reason: String)
    /// A training option is out of range.
    case badOption(name: String, reason: String)
    /// A checkpoint to resume from is missing parts or does not match the model.
    case badCheckpoint(path: String, reason: String)

    public var description: String {
        switch self {
        case let .io(file, reason): return "\(file): \(reason)"
        case let .badRow(place, field, reason), let .outOfRange(place, field, reason):
            return field.isEmpty ? "\(place): \(reason)" : "\(place): field '\(field)': \(reason)"
        case let .badOption(name, reason): return "--\(name): \(reason)"
        case let .badCheckpoint(path, reason): return "\(path): \(reason)"
        }
    }
}

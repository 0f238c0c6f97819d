import Foundation
import Model
import Tokenizer

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

extension PreferencePair {
    /// The pair of a row encoded by `PromptResponseEncoder` (or given in ids).
    public init(_ row: EncodedRow, weight: Float) {
        self.init(prompt: row.prompt, chosen: row.chosen, rejected: row.rejected, reference: row.reference, weight: weight)
    }
}

/// Reads preference rows from JSONL for `selm train` / `selm loss`: the rows TRL datasets carry
/// (`TRLRow`, the shared parser: prompt/chosen/rejected/reference_response as text or
/// conversations, or their `_ids` forms; weight) encoded by the shared `PromptResponseEncoder` with
/// the chat template applied to text prompts (conversational responses as TRL encodes them). The
/// whole file is parsed and checked before anything is returned: a malformed row is an error
/// naming its line and field.
public enum PreferenceData {
    /// - Parameter encoder: the model's text encoder; nil for a model without a tokenizer (rows
    ///   must then be token ids).
    /// - Throws: `LearnerError.io` (unreadable file), `.badRow` / `.outOfRange` naming "path:line"
    ///   and the field.
    public static func load(path: String, encoder: PromptResponseEncoder?, vocabSize: Int, contextLength: Int) throws -> [PreferencePair] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw LearnerError.io(file: path, reason: "cannot read: \(error.localizedDescription)")
        }
        let rows: [(row: TRLRow, line: Int)]
        do { rows = try TRLRow.read(jsonl: data, name: path) } catch {
            throw LearnerError.badRow(place: error.place, field: error.field, reason: error.reason)
        }
        var pairs: [PreferencePair] = []
        for (row, line) in rows {
            let place = "\(path):\(line)"
            let pair: PreferencePair
            if let ids = row.idsOnly {
                pair = PreferencePair(ids, weight: row.weight)
            } else {
                guard let encoder else { throw LearnerError.badRow(place: place, field: "prompt", reason: "text rows need a tokenizer") }
                do { pair = PreferencePair(try encoder.encode(row, textPromptsAsChat: true), weight: row.weight) } catch {
                    throw LearnerError.badRow(place: place, field: "prompt", reason: "\(error)")
                }
            }
            try pair.validate(vocabSize: vocabSize, contextLength: contextLength, at: place)
            pairs.append(pair)
        }
        if pairs.isEmpty { throw LearnerError.badRow(place: path, field: "", reason: "no preference rows") }
        return pairs
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

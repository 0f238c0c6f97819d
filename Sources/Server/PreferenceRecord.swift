import Foundation
import Learner
import PreferenceLog
import Wire

/// One durable record of the preference log as the server writes it: the rows of one accepted
/// `SubmitPreferences` batch, in token ids.
///
/// Its payload (the bytes `PreferenceLog` frames) is a serialized `selm.v1.Envelope` whose `id` is
/// the record's sequence number and whose body is a `SubmitPreferences` holding the rows with every
/// prompt and response as token ids (text rows were tokenized when accepted) — so any protobuf
/// runtime can read a log. A row's weight 0 is not representable (proto3 reads it as 1); the server
/// never stores 0.
public struct PreferenceRecord: Sendable, Equatable {
    /// The record's sequence number (consecutive, the first record of a fresh log is 1).
    public var sequence: UInt64
    /// The rows, in the order they were submitted.
    public var pairs: [PreferencePair]
    /// Each row's free-form provenance (`PreferenceRow.source`), parallel to `pairs`.
    public var sources: [String]

    /// A record; `sources` defaults to empty strings.
    public init(sequence: UInt64, pairs: [PreferencePair], sources: [String]? = nil) {
        self.sequence = sequence
        self.pairs = pairs
        self.sources = sources ?? Array(repeating: "", count: pairs.count)
    }

    /// The payload of a record: an `Envelope{id: sequence, submit_preferences: rows as ids}`.
    static func encodePayload(_ pairs: [PreferencePair], sources: [String], sequence: UInt64) -> [UInt8] {
        func ids(_ a: [Int32]) -> [UInt32] { a.map { UInt32(bitPattern: $0) } }
        let rows = pairs.enumerated().map { i, p in
            PreferenceRow(prompt: .ids(ids(p.prompt)), chosen: .ids(ids(p.chosen)), rejected: .ids(ids(p.rejected)),
                          reference: p.reference.map { .ids(ids($0)) }, weight: p.weight,
                          source: i < sources.count ? sources[i] : "")
        }
        return Frame.encodeBody(Envelope(id: sequence, body: .submitPreferences(SubmitPreferences(rows: rows))))
    }

    /// Decodes a record's payload.
    /// - Throws: `ServerError.log` naming the log and the record.
    static func decodePayload(_ payload: [UInt8], sequence: UInt64, path: String) throws(ServerError) -> PreferenceRecord {
        func bad(_ r: String) -> ServerError { .log(path: path, reason: "record \(sequence): \(r)") }
        let env: Envelope<ClientMessage>
        do { env = try Frame.decodeClient(payload) } catch { throw bad("undecodable payload (\(error))") }
        guard env.id == sequence, case let .submitPreferences(sp) = env.body else { throw bad("payload is not this record's batch") }
        var pairs: [PreferencePair] = []
        var sources: [String] = []
        func ids(_ r: Response) throws(ServerError) -> [Int32] {
            guard case let .ids(a) = r else { throw bad("a response is not stored as token ids") }
            return a.map { Int32(bitPattern: $0) }
        }
        for row in sp.rows {
            guard case let .ids(prompt) = row.prompt else { throw bad("a prompt is not stored as token ids") }
            pairs.append(PreferencePair(prompt: prompt.map { Int32(bitPattern: $0) }, chosen: try ids(row.chosen),
                                        rejected: try ids(row.rejected), reference: try row.reference.map { r throws(ServerError) in try ids(r) },
                                        weight: row.weight))
            sources.append(row.source)
        }
        return PreferenceRecord(sequence: sequence, pairs: pairs, sources: sources)
    }
}

extension PreferenceLog {
    /// Queues one batch of rows as one record (`PreferenceRecord`'s payload). `completion` runs on
    /// the log thread once it is on disk, with its sequence number, or with the failure
    /// (`ServerError.log`). Any thread; never blocks on I/O.
    public func append(_ pairs: [PreferencePair], sources: [String]? = nil,
                       completion: @escaping @Sendable (Result<UInt64, ServerError>) -> Void) {
        let sources = sources ?? Array(repeating: "", count: pairs.count)
        append({ sequence in PreferenceRecord.encodePayload(pairs, sources: sources, sequence: sequence) }) { result in
            completion(result.mapError { ServerError($0) })
        }
    }

    /// The durable records after `sequence`, decoded, in order, at most `limit`. Any thread.
    /// - Throws: `ServerError.log` when a record cannot be read back or decoded.
    public func records(after sequence: UInt64, limit: Int = .max) throws(ServerError) -> [PreferenceRecord] {
        let entries: [LogEntry]
        do { entries = try self.entries(after: sequence, limit: limit) } catch { throw ServerError(error) }
        var out: [PreferenceRecord] = []
        out.reserveCapacity(entries.count)
        for e in entries { out.append(try PreferenceRecord.decodePayload(e.payload, sequence: e.sequence, path: path)) }
        return out
    }
}

/// The preference log is where `OnlineLearner` reads acknowledged rows from.
extension PreferenceLog: PreferenceSource {
    /// Up to 64 durable records after `after`, in order, at once (empty when there are none, or if
    /// a record cannot be read back, which is logged). Thread: the learner's.
    public func batches(after: UInt64) -> [(sequence: UInt64, pairs: [PreferencePair])] {
        do {
            return try records(after: after, limit: 64).map { ($0.sequence, $0.pairs) }
        } catch {
            serverLog("learner cannot read the preference log: \(error)", level: .error)
            return []
        }
    }
}

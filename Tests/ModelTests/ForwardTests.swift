import Foundation
import XCTest
@testable import Model

/// The forward pass against transformers (fixtures from scripts/make_reference.py) and against
/// itself across batching and KV caching.
final class ForwardTests: XCTestCase {
    /// SmolLM2 loaded from the Q4_1 GGUF gives transformers' logits for the same file (which also
    /// checks the dequantisation and the undoing of llama.cpp's Q/K row permutation).
    func testSmolLM2LogitsMatchTransformers() throws {
        let model = try TestSupport.smol()
        let ref = try TestSupport.json("smollm2.logits.json") as! [String: Any]
        let idx = (ref["sample_indices"] as! [NSNumber]).map { $0.intValue }
        let lastAll = try Data(contentsOf: TestSupport.fixture("smollm2.last-logits.f32"))
        let V = model.config.vocabSize
        var worst: Float = 0
        for (s, seq) in (ref["sequences"] as! [[String: Any]]).enumerated() {
            let ids = TestSupport.ints(seq["ids"]!)
            let logits = try model.logits(ids)
            let sampled = (seq["sampled"] as! [[NSNumber]]).map { $0.map { $0.floatValue } }
            let lse = TestSupport.floats(seq["logsumexp"]!)
            let argmax = TestSupport.ints(seq["argmax"]!)
            for t in ids.indices {
                let row = Array(logits[t * V ..< (t + 1) * V])
                let mine = idx.map { row[$0] }
                let err = TestSupport.relativeError(mine, sampled[t])
                worst = max(worst, err)
                XCTAssertLessThanOrEqual(err, 1e-4, "sequence \(s) position \(t)")
                var l: Float = 0
                var m = -Float.infinity
                for x in row { m = max(m, x) }
                for x in row { l += expf(x - m) }
                XCTAssertEqual(m + logf(l), lse[t], accuracy: 1e-3 * max(1, abs(lse[t])), "logsumexp \(s)/\(t)")
                XCTAssertEqual(Int32(row.indices.max { row[$0] < row[$1] }!), argmax[t], "argmax \(s)/\(t)")
            }
            let refLast: [Float] = lastAll.withUnsafeBytes { raw in
                Array(raw.bindMemory(to: Float.self)[s * V ..< (s + 1) * V])
            }
            let err = TestSupport.relativeError(Array(logits[(ids.count - 1) * V ..< ids.count * V]), refLast)
            XCTAssertLessThanOrEqual(err, 1e-4, "full last row of sequence \(s)")
            worst = max(worst, err)
        }
        print("SmolLM2 worst logits relative error vs transformers: \(worst)")
    }

    /// Several sequences of different lengths in one forward equal each run alone.
    func testBatchedPrefillEqualsSeparate() throws {
        let model = try TestSupport.smol()
        let V = model.config.vocabSize
        let seqs: [[Int32]] = [[1, 504, 3458, 282], Array(100..<137).map(Int32.init), [9, 8, 7, 6, 5, 4, 3, 2000, 31000]]
        var b = ForwardBatch()
        for (i, s) in seqs.enumerated() { b.append(s, startPos: 0, slot: i, logits: .all) }
        let acts = Activations(config: model.config)
        let p = try model.forward(b, kv: nil, acts: acts)
        let batched = Array(UnsafeBufferPointer(start: p, count: b.logitRows.count * V))
        var row = 0
        for s in seqs {
            let alone = try model.logits(s)
            let mine = Array(batched[row * V ..< (row + s.count) * V])
            XCTAssertLessThanOrEqual(TestSupport.relativeError(mine, alone), 2e-5)
            row += s.count
        }
    }

    /// Prefill then one-token decode steps through a KV store — with prefill chunks and decodes of
    /// different sequences mixed in one batch — equal the full-sequence logits.
    func testKVCachedDecodeEqualsFullSequence() throws {
        let model = try TestSupport.smol()
        let V = model.config.vocabSize
        let full: [[Int32]] = [Array(200..<230).map(Int32.init), Array(1000..<1012).map(Int32.init)]
        let reference = try full.map { try model.logits($0) }
        let kv = ContiguousKVStore(config: model.config, slots: 2, capacity: 64)
        let acts = Activations(config: model.config)
        // Step 1: prefill 20 tokens of seq 0 and 5 of seq 1.
        var pos = [20, 5]
        var b = ForwardBatch()
        b.append(Array(full[0][0..<20]), startPos: 0, slot: 0, logits: .last)
        b.append(Array(full[1][0..<5]), startPos: 0, slot: 1, logits: .all)
        var out = try model.forward(b, kv: kv, acts: acts)
        XCTAssertLessThanOrEqual(TestSupport.relativeError(Array(UnsafeBufferPointer(start: out, count: V)),
                                                           Array(reference[0][19 * V ..< 20 * V])), 2e-5)
        for t in 0..<5 {
            XCTAssertLessThanOrEqual(TestSupport.relativeError(Array(UnsafeBufferPointer(start: out + (1 + t) * V, count: V)),
                                                               Array(reference[1][t * V ..< (t + 1) * V])), 2e-5)
        }
        // Then: seq 0 decodes one token per step while seq 1 prefills chunks of 3, then decodes.
        while pos[0] < full[0].count {
            b = ForwardBatch()
            b.append([full[0][pos[0]]], startPos: pos[0], slot: 0, logits: .last)
            let n1 = min(pos[1] < 8 ? 3 : 1, full[1].count - pos[1])
            if n1 > 0 { b.append(Array(full[1][pos[1] ..< pos[1] + n1]), startPos: pos[1], slot: 1, logits: .last) }
            out = try model.forward(b, kv: kv, acts: acts)
            XCTAssertLessThanOrEqual(TestSupport.relativeError(Array(UnsafeBufferPointer(start: out, count: V)),
                                                               Array(reference[0][pos[0] * V ..< (pos[0] + 1) * V])), 2e-5,
                                     "seq 0 position \(pos[0])")
            if n1 > 0 {
                let last = pos[1] + n1 - 1
                XCTAssertLessThanOrEqual(TestSupport.relativeError(Array(UnsafeBufferPointer(start: out + V, count: V)),
                                                                   Array(reference[1][last * V ..< (last + 1) * V])), 2e-5,
                                         "seq 1 position \(last)")
            }
            pos[0] += 1; pos[1] += n1
        }
    }

    func testBadTokensAndPositionsAreRefused() throws {
        let model = try TestSupport.smol()
        let acts = Activations(config: model.config)
        var b = ForwardBatch()
        b.append([1, 49152], startPos: 0, slot: 0, logits: .last)
        XCTAssertThrowsError(try model.forward(b, kv: nil, acts: acts)) { e in
            XCTAssertTrue("\(e)".contains("tokens[1]"), "\(e)")
        }
        b = ForwardBatch()
        b.append([1, -3], startPos: 0, slot: 0, logits: .last)
        XCTAssertThrowsError(try model.forward(b, kv: nil, acts: acts)) { e in XCTAssertTrue("\(e)".contains("tokens[1]")) }
        let kv = ContiguousKVStore(config: model.config, slots: 1, capacity: 4)
        b = ForwardBatch()
        b.append([1], startPos: model.config.contextLength, slot: 0, logits: .last)
        XCTAssertThrowsError(try model.forward(b, kv: kv, acts: acts)) { e in
            XCTAssertTrue("\(e)".contains("context length"), "\(e)")
        }
    }
}

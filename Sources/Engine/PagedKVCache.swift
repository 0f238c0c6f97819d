import Foundation
import Kernels
import Model

/// The paged KV cache: one pool of fixed-size blocks for keys and values of every layer, a block
/// table per sequence slot, reference counts so blocks can be shared (the n samples of a prompt,
/// the prefix cache), and the prefix cache itself.
///
/// Implements `KVStore` for the forward pass. The pool holds keys and values in `precision`:
/// - `f32`: `attend` writes the new rows into the slot's blocks and returns contiguous keys/values
///   for positions 0 ..< L — directly from the pool when the slot's blocks are consecutive (the
///   allocator tries for that), else gathered into a scratch buffer; attention through OpenBLAS
///   (`attention_forward`), bit-for-bit the contiguous store's results.
/// - `f16` (IEEE half, half the bytes): `attention` stores the batch's rows converted, then runs
///   the decoding sequences (≤ 8 query rows per KV group) in one `ck_paged_attention_f16` call that
///   reads their blocks in place on the compact pool's threads, and each prefill chunk through
///   `attention_forward` over its keys and values converted to f32.
///
/// Invariant: a block is written only by the one slot that holds it alone (refcount 1, not in the
/// prefix cache); shared blocks are full blocks of a prompt and never written again.
///
/// Thread: the engine's step thread only.
final class PagedKVCache: KVStore {
    let config: LlamaConfig
    let blockSize: Int
    let blockCount: Int
    private let kvDim: Int
    private let nLayers: Int
    let precision: KVCachePrecision
    private let elementBytes: Int
    private let kRaw: UnsafeMutableRawPointer  // (layer, block, blockSize, kvDim) of `precision`
    private let vRaw: UnsafeMutableRawPointer
    private var k: UnsafeMutablePointer<Float> { kRaw.assumingMemoryBound(to: Float.self) }
    private var v: UnsafeMutablePointer<Float> { vRaw.assumingMemoryBound(to: Float.self) }
    private var kHalf: UnsafeMutablePointer<UInt16> { kRaw.assumingMemoryBound(to: UInt16.self) }
    private var vHalf: UnsafeMutablePointer<UInt16> { vRaw.assumingMemoryBound(to: UInt16.self) }
    /// Block tables of the decoding sequences of one `attention` call, end to end.
    private var tableScratch: [Int32] = []
    private let gatherK: UnsafeMutablePointer<Float>  // (contextLength, kvDim)
    private let gatherV: UnsafeMutablePointer<Float>  // (contextLength, kvDim)

    /// (block) holders: slot tables plus one for the prefix cache.
    private(set) var refs: [Int32]
    /// (block) prefix-cache entry holding it, or 0.
    private var cacheEntry: [UInt64]
    private(set) var freeCount: Int
    /// Blocks held by the prefix cache alone (evictable).
    private(set) var evictableCount = 0

    /// (slot) block ids; empty for a free slot.
    private var tables: [[Int32]] = []
    /// (slot) how many leading blocks of the table are consecutive ids.
    private var runLength: [Int] = []
    private var freeSlots: [Int] = []

    /// Seconds spent inside `attend` (writing rows and gathering).
    var attendSeconds: Double = 0
    /// Gathers done (attend calls that could not return pool memory directly).
    var gathers = 0

    /// Bytes of one block (keys and values, all layers).
    static func bytesPerBlock(config c: LlamaConfig, blockSize: Int, precision: KVCachePrecision = .f32) -> Int {
        2 * c.nLayers * blockSize * c.kvDim * precision.bytes
    }

    init(config: LlamaConfig, blockSize: Int, blockCount: Int, precision: KVCachePrecision = .f32) {
        self.config = config
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.precision = precision
        elementBytes = precision.bytes
        kvDim = config.kvDim
        nLayers = config.nLayers
        let n = max(1, nLayers * blockCount * blockSize * kvDim)
        kRaw = .allocate(byteCount: n * elementBytes, alignment: 64)
        vRaw = .allocate(byteCount: n * elementBytes, alignment: 64)
        gatherK = .allocate(capacity: config.contextLength * kvDim)
        gatherV = .allocate(capacity: config.contextLength * kvDim)
        refs = [Int32](repeating: 0, count: blockCount)
        cacheEntry = [UInt64](repeating: 0, count: blockCount)
        freeCount = blockCount
    }

    deinit {
        kRaw.deallocate(); vRaw.deallocate(); gatherK.deallocate(); gatherV.deallocate()
    }

    /// A cache for one sequence of up to `capacity` positions, and its slot: what the offline
    /// tools (`SingleSequenceGenerator`, the precision contract) run on, so they compute what the
    /// engine computes in the same precisions.
    static func single(config: LlamaConfig, capacity: Int, precision: KVCachePrecision) -> (cache: PagedKVCache, slot: Int) {
        let bs = 16
        let cache = PagedKVCache(config: config, blockSize: bs, blockCount: max(1, (capacity + bs - 1) / bs), precision: precision)
        let slot = cache.openSlot(cache.allocate(cache.blockCount)!)
        return (cache, slot)
    }

    /// Blocks held by sequences (not counting those only the prefix cache holds).
    var usedCount: Int { blockCount - freeCount - evictableCount }

    /// Blocks a new sequence could get now (free plus evictable).
    var availableCount: Int { freeCount + evictableCount }

    /// Blocks covering `tokens` positions.
    func blocks(for tokens: Int) -> Int { (tokens + blockSize - 1) / blockSize }

    @inline(__always) private func offset(layer: Int, block: Int32) -> Int {
        (layer * blockCount + Int(block)) * blockSize * kvDim
    }

    // MARK: blocks

    private func retain(_ b: Int32) {
        let r = refs[Int(b)]
        if r == 1 && cacheEntry[Int(b)] != 0 { evictableCount -= 1 }
        refs[Int(b)] = r + 1
    }

    private func release(_ b: Int32) {
        let r = refs[Int(b)] - 1
        precondition(r >= 0, "KV block \(b) released too often")
        refs[Int(b)] = r
        if r == 0 {
            freeCount += 1
        } else if r == 1 && cacheEntry[Int(b)] != 0 {
            evictableCount += 1
        }
    }

    /// `n` fresh blocks (refcount 1), consecutive if a free run that long exists, evicting
    /// least-recently-used prefix-cache blocks when free ones are short. Nil when even eviction
    /// cannot supply them (nothing is taken then).
    func allocate(_ n: Int) -> [Int32]? {
        guard n > 0 else { return [] }
        guard n <= availableCount else { return nil }
        if n > freeCount { evict(n - freeCount) }
        var out: [Int32] = []
        out.reserveCapacity(n)
        // First fit for a run of n consecutive free blocks.
        var runStart = -1, run = 0
        for b in 0..<blockCount {
            if refs[b] == 0 {
                if run == 0 { runStart = b }
                run += 1
                if run == n { break }
            } else {
                run = 0
            }
        }
        if run == n {
            for b in runStart..<runStart + n { out.append(Int32(b)) }
        } else {
            for b in 0..<blockCount where refs[b] == 0 {
                out.append(Int32(b))
                if out.count == n { break }
            }
        }
        for b in out { refs[Int(b)] = 1 }
        freeCount -= n
        return out
    }

    // MARK: slots

    /// Takes one more hold on each block (a sequence sharing them).
    func retainBlocks(_ blocks: [Int32]) { for b in blocks { retain(b) } }

    /// Lets go of one hold on each block.
    func releaseBlocks(_ blocks: [Int32]) { for b in blocks { release(b) } }

    /// A new slot with block table `table`, whose blocks the caller already holds (from `allocate`
    /// or `retainBlocks`); the slot now owns those holds. Returns the index for `BatchSequence.slot`.
    func openSlot(_ table: [Int32]) -> Int {
        let slot: Int
        if let s = freeSlots.popLast() {
            slot = s
            tables[s] = table
        } else {
            slot = tables.count
            tables.append(table)
            runLength.append(0)
        }
        var run = table.isEmpty ? 0 : 1
        while run < table.count && table[run] == table[0] + Int32(run) { run += 1 }
        runLength[slot] = run
        return slot
    }

    /// Releases every block of the slot and frees the slot.
    func closeSlot(_ slot: Int) {
        for b in tables[slot] { release(b) }
        tables[slot] = []
        runLength[slot] = 0
        freeSlots.append(slot)
    }

    /// The block table of a slot.
    func table(_ slot: Int) -> [Int32] { tables[slot] }

    /// Copies positions 0 ..< rows of block `src` to block `dst`, keys and values of every layer
    /// (a sample taking its own copy of a shared prompt's partial last block).
    func copyRows(from src: Int32, to dst: Int32, rows: Int) {
        precondition(refs[Int(dst)] == 1 && cacheEntry[Int(dst)] == 0, "copy into a shared block")
        let bytes = rows * kvDim * elementBytes
        for l in 0..<nLayers {
            let d = offset(layer: l, block: dst) * elementBytes, s = offset(layer: l, block: src) * elementBytes
            (kRaw + d).copyMemory(from: kRaw + s, byteCount: bytes)
            (vRaw + d).copyMemory(from: vRaw + s, byteCount: bytes)
        }
    }

    // MARK: KVStore

    func attend(layer: Int, slot: Int, startPos: Int, count: Int,
                newK: UnsafePointer<Float>, newV: UnsafePointer<Float>)
        -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>, stride: Int) {
        if precision == .f16 { return attendHalf(layer: layer, slot: slot, startPos: startPos, count: count, newK: newK, newV: newV) }
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer { attendSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9 }
        let kv = kvDim, bs = blockSize
        let L = startPos + count
        return tables[slot].withUnsafeBufferPointer { table in
            precondition(L <= table.count * bs, "slot \(slot) has \(table.count) blocks for \(L) positions")
            // Store the new rows, one run per block.
            var pos = startPos, src = 0
            while pos < L {
                let b = table[pos / bs], off = pos % bs
                assert(refs[Int(b)] == 1 && cacheEntry[Int(b)] == 0, "write into shared KV block \(b)")
                let n = min(bs - off, L - pos)
                let dst = offset(layer: layer, block: b) + off * kv
                (k + dst).update(from: newK + src * kv, count: n * kv)
                (v + dst).update(from: newV + src * kv, count: n * kv)
                pos += n; src += n
            }
            let nb = (L + bs - 1) / bs
            if runLength[slot] >= nb {
                let o = offset(layer: layer, block: table[0])
                return (UnsafePointer(k + o), UnsafePointer(v + o), kv)
            }
            gathers += 1
            for j in 0..<nb {
                let rows = min(bs, L - j * bs)
                let o = offset(layer: layer, block: table[j])
                (gatherK + j * bs * kv).update(from: k + o, count: rows * kv)
                (gatherV + j * bs * kv).update(from: v + o, count: rows * kv)
            }
            return (UnsafePointer(gatherK), UnsafePointer(gatherV), kv)
        }
    }

    /// f16 pool: stores the new rows (converted) and returns positions 0 ..< startPos + count
    /// converted to f32 in the gather buffers.
    private func attendHalf(layer: Int, slot: Int, startPos: Int, count: Int,
                            newK: UnsafePointer<Float>, newV: UnsafePointer<Float>)
        -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>, stride: Int) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer { attendSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9 }
        storeHalf(layer: layer, slot: slot, startPos: startPos, count: count, newK: newK, newV: newV)
        let kv = kvDim, bs = blockSize, L = startPos + count
        gathers += 1
        tables[slot].withUnsafeBufferPointer { table in
            for j in 0..<(L + bs - 1) / bs {
                let rows = min(bs, L - j * bs), o = offset(layer: layer, block: table[j])
                ck_f16_to_f32(kHalf + o, gatherK + j * bs * kv, rows * kv)
                ck_f16_to_f32(vHalf + o, gatherV + j * bs * kv, rows * kv)
            }
        }
        return (UnsafePointer(gatherK), UnsafePointer(gatherV), kv)
    }

    /// f16 pool: writes rows startPos ..< startPos + count of the slot, converted.
    private func storeHalf(layer: Int, slot: Int, startPos: Int, count: Int,
                           newK: UnsafePointer<Float>, newV: UnsafePointer<Float>) {
        let kv = kvDim, bs = blockSize, L = startPos + count
        tables[slot].withUnsafeBufferPointer { table in
            precondition(L <= table.count * bs, "slot \(slot) has \(table.count) blocks for \(L) positions")
            var pos = startPos, src = 0
            while pos < L {
                let b = table[pos / bs], off = pos % bs
                assert(refs[Int(b)] == 1 && cacheEntry[Int(b)] == 0, "write into shared KV block \(b)")
                let n = min(bs - off, L - pos)
                let dst = offset(layer: layer, block: b) + off * kv
                ck_f32_to_f16(newK + src * kv, kHalf + dst, n * kv)
                ck_f32_to_f16(newV + src * kv, vHalf + dst, n * kv)
                pos += n; src += n
            }
        }
    }

    /// Query rows per KV group up to which a sequence's attention reads the pool in place.
    static let pagedRows = 8

    func attention(layer: Int, batch: ForwardBatch, q: UnsafePointer<Float>, k newK: UnsafePointer<Float>,
                   v newV: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, acts: Activations) {
        guard precision == .f16 else {
            attendContiguous(layer: layer, batch: batch, sequences: batch.sequences.indices, q: q, k: newK, v: newV, out: out, acts: acts)
            return
        }
        let c = config, G = c.nHeads / c.nKVHeads
        var paged: [Int] = [], prefill: [Int] = []
        for (i, s) in batch.sequences.enumerated() {
            if s.count * G <= Self.pagedRows { paged.append(i) } else { prefill.append(i) }
        }
        if !paged.isEmpty {
            let t0 = DispatchTime.now().uptimeNanoseconds
            tableScratch.removeAll(keepingCapacity: true)
            var starts: [Int] = []
            for i in paged {
                let s = batch.sequences[i]
                storeHalf(layer: layer, slot: s.slot, startPos: s.startPos, count: s.count,
                          newK: newK + s.tokenStart * kvDim, newV: newV + s.tokenStart * kvDim)
                starts.append(tableScratch.count)
                tableScratch.append(contentsOf: tables[s.slot])
            }
            attendSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
            let base = offset(layer: layer, block: 0)
            tableScratch.withUnsafeBufferPointer { tb in
                var seqs = [ck_paged_seq](repeating: ck_paged_seq(), count: paged.count)
                for (j, i) in paged.enumerated() {
                    let s = batch.sequences[i]
                    seqs[j] = ck_paged_seq(blocks: tb.baseAddress! + starts[j], p0: Int32(s.startPos), n: Int32(s.count),
                                           row0: Int32(s.tokenStart))
                }
                ck_paged_attention_f16(out, Int32(c.qDim), q, Int32(c.qDim), kHalf + base, vHalf + base, Int32(blockSize),
                                       Int32(c.nHeads), Int32(c.nKVHeads), Int32(c.headDim), seqs, Int32(seqs.count))
            }
        }
        if !prefill.isEmpty {
            attendContiguous(layer: layer, batch: batch, sequences: prefill, q: q, k: newK, v: newV, out: out, acts: acts)
        }
    }

    // MARK: prefix cache

    /// A full prompt block's identity: the weights that computed it, the chain of blocks before it
    /// (by entry id, never reused) and its tokens.
    struct PrefixKey: Hashable {
        var version: UInt64
        var parent: UInt64
        var tokens: [Int32]
    }

    private struct PrefixEntry {
        var key: PrefixKey
        var block: Int32
        var lastUse: UInt64
    }

    private var entries: [UInt64: PrefixEntry] = [:]
    private var entryByKey: [PrefixKey: UInt64] = [:]
    private var nextEntryID: UInt64 = 1
    private var useClock: UInt64 = 0

    /// Number of blocks in the prefix cache (shared or not).
    var cachedBlockCount: Int { entries.count }

    /// The longest chain of cached blocks starting the prompt under `version`, at most `maxBlocks`
    /// long: (entry id, block) per block. Marks them used.
    func lookup(version: UInt64, prompt: [Int32], maxBlocks: Int) -> [(entry: UInt64, block: Int32)] {
        var out: [(UInt64, Int32)] = []
        var parent: UInt64 = 0
        useClock += 1
        for j in 0..<maxBlocks {
            let key = PrefixKey(version: version, parent: parent, tokens: Array(prompt[j * blockSize ..< (j + 1) * blockSize]))
            guard let id = entryByKey[key] else { break }
            entries[id]!.lastUse = useClock
            out.append((id, entries[id]!.block))
            parent = id
        }
        return out
    }

    /// How many of these blocks only the prefix cache holds (they stop being evictable when a
    /// sequence takes them).
    func evictableAmong(_ blocks: [Int32]) -> Int {
        blocks.reduce(0) { $0 + (refs[Int($1)] == 1 && cacheEntry[Int($1)] != 0 ? 1 : 0) }
    }

    /// Records `block` (full, computed under `version`, following entry `parent`) in the cache and
    /// returns its entry id. If the same key is already cached, the existing entry is returned and
    /// `block` is not added.
    func register(version: UInt64, parent: UInt64, tokens: [Int32], block: Int32) -> UInt64 {
        let key = PrefixKey(version: version, parent: parent, tokens: tokens)
        useClock += 1
        if let id = entryByKey[key] {
            entries[id]!.lastUse = useClock
            return id
        }
        guard cacheEntry[Int(block)] == 0 else { return cacheEntry[Int(block)] }
        let id = nextEntryID
        nextEntryID += 1
        entries[id] = PrefixEntry(key: key, block: block, lastUse: useClock)
        entryByKey[key] = id
        cacheEntry[Int(block)] = id
        refs[Int(block)] += 1   // held by a slot too, so not evictable yet
        return id
    }

    /// Frees `n` evictable blocks, least recently used first.
    private func evict(_ n: Int) {
        var candidates = entries.filter { refs[Int($0.value.block)] == 1 }.map { ($0.key, $0.value.lastUse) }
        candidates.sort { $0.1 < $1.1 }
        for (id, _) in candidates.prefix(n) { drop(entry: id) }
    }

    private func drop(entry id: UInt64) {
        guard let e = entries.removeValue(forKey: id) else { return }
        entryByKey.removeValue(forKey: e.key)
        cacheEntry[Int(e.block)] = 0
        let r = refs[Int(e.block)] - 1
        refs[Int(e.block)] = r
        if r == 0 { freeCount += 1; evictableCount -= 1 }
    }

    /// Drops every entry (blocks still used by sequences stay with them).
    func clearPrefixCache() {
        for id in Array(entries.keys) { drop(entry: id) }
    }
}

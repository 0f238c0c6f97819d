import Foundation

/// Byte-level BPE over one pre-tokenized word: start from one token per byte, then repeatedly apply
/// the best-ranked merge of two neighbours, lowest rank first and leftmost first among equals (the
/// order of Hugging Face `tokenizers`' `Word::merge_all`).
struct BPE: Sendable {
    /// Merge of the pair (left id << 32 | right id) → its rank (0 = best) and the merged token's id.
    let merges: [UInt64: Merge]
    /// Token id of each single byte, -1 when the vocabulary lacks it.
    let byteIds: [Int32]
    /// With `ignoreMerges`: raw bytes of every normal vocabulary entry → its id.
    let wholeWords: [[UInt8]: Int32]?
    let unkId: Int32?
    let cache = WordCache()

    struct Merge: Sendable {
        var rank: Int32
        var id: Int32
    }

    @inline(__always)
    static func key(_ left: Int32, _ right: Int32) -> UInt64 { UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right)) }

    /// Appends the token ids of the word `bytes` to `out`.
    func encode(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [Int32]) {
        if bytes.count == 1 {
            appendByte(bytes[0], into: &out)
            return
        }
        let word = [UInt8](bytes)
        if let hit = cache[word] {
            out.append(contentsOf: hit)
            return
        }
        var ids: [Int32] = []
        if let wholeWords, let id = wholeWords[word] {
            ids = [id]
        } else {
            ids = mergeAll(word)
        }
        out.append(contentsOf: ids)
        cache[word] = ids
    }

    @inline(__always)
    private func appendByte(_ b: UInt8, into out: inout [Int32]) {
        let id = byteIds[Int(b)]
        if id >= 0 {
            out.append(id)
        } else if let unkId {
            out.append(unkId)
        }   // else dropped, as Hugging Face's BPE does without an unk token
    }

    private struct Symbol {
        var id: Int32
        var prev: Int
        var next: Int
        var length: Int   // bytes covered; 0 once merged into its left neighbour
    }

    /// A pending merge of the symbol at `position` with its right neighbour.
    private struct Candidate: Comparable {
        var rank: Int32
        var position: Int
        var id: Int32
        static func < (a: Self, b: Self) -> Bool { a.rank != b.rank ? a.rank < b.rank : a.position < b.position }
    }

    private func mergeAll(_ word: [UInt8]) -> [Int32] {
        var symbols: [Symbol] = []
        symbols.reserveCapacity(word.count)
        for b in word {
            let id = byteIds[Int(b)]
            if id >= 0 {
                symbols.append(Symbol(id: id, prev: symbols.count - 1, next: symbols.count + 1, length: 1))
            } else if let unkId {
                symbols.append(Symbol(id: unkId, prev: symbols.count - 1, next: symbols.count + 1, length: 1))
            }
        }
        guard symbols.count > 1 else { return symbols.map(\.id) }
        symbols[symbols.count - 1].next = -1

        var heap = MinHeap<Candidate>()
        for i in 0..<symbols.count - 1 {
            if let m = merges[Self.key(symbols[i].id, symbols[i + 1].id)] {
                heap.push(Candidate(rank: m.rank, position: i, id: m.id))
            }
        }
        while let top = heap.pop() {
            let left = top.position
            guard symbols[left].length > 0, symbols[left].next >= 0 else { continue }
            let right = symbols[left].next
            // The pair may have changed since this candidate was queued.
            guard let m = merges[Self.key(symbols[left].id, symbols[right].id)], m.id == top.id else { continue }

            symbols[left].id = top.id
            symbols[left].length += symbols[right].length
            symbols[left].next = symbols[right].next
            symbols[right].length = 0
            let after = symbols[left].next
            if after >= 0 { symbols[after].prev = left }

            let before = symbols[left].prev
            if before >= 0, let m = merges[Self.key(symbols[before].id, top.id)] {
                heap.push(Candidate(rank: m.rank, position: before, id: m.id))
            }
            if after >= 0, let m = merges[Self.key(top.id, symbols[after].id)] {
                heap.push(Candidate(rank: m.rank, position: left, id: m.id))
            }
        }
        var out: [Int32] = []
        var i = 0
        while i >= 0 {
            out.append(symbols[i].id)
            i = symbols[i].next
        }
        return out
    }
}

/// Binary min-heap.
struct MinHeap<Element: Comparable> {
    private var items: [Element] = []

    mutating func push(_ x: Element) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i] < items[parent] else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Element? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        guard !items.isEmpty else { return first }
        items[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var smallest = i
            if l < items.count, items[l] < items[smallest] { smallest = l }
            if r < items.count, items[r] < items[smallest] { smallest = r }
            if smallest == i { break }
            items.swapAt(i, smallest)
            i = smallest
        }
        return first
    }
}

/// Thread-safe cache of BPE results per word, shared by every caller of one tokenizer. Bounded: it is
/// emptied when it reaches `capacity` entries; words longer than `maxWordBytes` are not kept.
final class WordCache: @unchecked Sendable {
    private let lock = NSLock()
    private var map: [[UInt8]: [Int32]] = [:]
    private let capacity = 1 << 16
    private let maxWordBytes = 256

    subscript(word: [UInt8]) -> [Int32]? {
        get {
            lock.lock()
            defer { lock.unlock() }
            return map[word]
        }
        set {
            guard word.count <= maxWordBytes, let newValue else { return }
            lock.lock()
            defer { lock.unlock() }
            if map.count >= capacity { map.removeAll(keepingCapacity: true) }
            map[word] = newValue
        }
    }
}

import Model

/// The `k` most likely tokens of a logits row (vocab) with their log-probabilities `logit - lse`,
/// best first; ties go to the lower id.
func topAlternatives(_ logits: UnsafePointer<Float>, vocab: Int, k: Int, lse: Float) -> [TokenLogprob] {
    guard k > 0 else { return [] }
    var ids: [Int32] = []   // (≤ k) sorted by value, descending
    var vals: [Float] = []
    ids.reserveCapacity(k + 1); vals.reserveCapacity(k + 1)
    var floor = -Float.infinity
    for i in 0..<vocab {
        let x = logits[i]
        guard ids.count < k || x > floor else { continue }
        var j = vals.count
        while j > 0 && vals[j - 1] < x { j -= 1 }
        vals.insert(x, at: j); ids.insert(Int32(i), at: j)
        if vals.count > k { vals.removeLast(); ids.removeLast() }
        if vals.count == k { floor = vals[k - 1] }
    }
    return zip(ids, vals).map { TokenLogprob(id: $0, logprob: $1 - lse) }
}

/// FNV-1a over token ids: the prompt's part of a sample's random stream.
func hashTokens(_ tokens: [Int32]) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for t in tokens {
        var x = UInt32(bitPattern: t)
        for _ in 0..<4 { h = (h ^ UInt64(x & 0xFF)) &* 0x100_0000_01B3; x >>= 8 }
    }
    return h
}

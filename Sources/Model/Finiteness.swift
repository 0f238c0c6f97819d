import Kernels

/// A NaN or ±Inf found in a parameter set: the tensor (Hugging Face name), the flat index inside
/// it and the value.
public struct NonFiniteValue: Sendable, Equatable, CustomStringConvertible {
    public let tensor: String
    public let index: Int
    public let value: Float

    public var description: String { "\(value) in tensor \(tensor) at index \(index)" }
}

extension ParameterSet {
    /// The first non-finite value (NaN or ±Inf) in layout order, or nil when every weight is finite.
    /// One vectorised pass over the slab (`first_nonfinite`, bandwidth bound: ≈ 20 ms for the 134.5M
    /// floats of SmolLM2-135M on this machine). Thread: any (reads only; the caller keeps the set
    /// alive and unmodified meanwhile).
    public func firstNonFinite() -> NonFiniteValue? {
        let i = first_nonfinite(data, count)
        guard i >= 0 else { return nil }
        let at = Int(i)
        for e in layout.entries where at >= e.offset && at < e.offset + e.count {
            return NonFiniteValue(tensor: e.name, index: at - e.offset, value: data[at])
        }
        return NonFiniteValue(tensor: "?", index: at, value: data[at])
    }
}

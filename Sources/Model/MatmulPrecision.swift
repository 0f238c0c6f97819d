import Kernels

/// The number format of the learner's large products — the linear layers q, k, v, o, gate, up,
/// down and the output head, in the forward pass and in both products of their backward (input
/// gradient and weight gradient) — when the weights are the f32 `ParameterSet` the learner trains.
/// `selm train --precision` and `selm serve --precision` choose it.
///
/// - `f32`: OpenBLAS sgemm (`matmul_forward` / `matmul_backward`): today's learner, bit for bit.
/// - `bf16`: mixed precision: both operands rounded to bfloat16 (nearest even), products
///   accumulated in f32 (`matmul_forward_bf16` / `matmul_backward_bf16`: the project's kernels,
///   vdpbf16ps on AVX-512 BF16, an AVX2 or scalar path elsewhere; compact.h states the bound).
///   Everything else stays f32: master weights, gradients, AdamW moments, embeddings, RMSNorm,
///   RoPE, attention (scores, softmax, weighted sums), SwiGLU, log-softmax, losses and log-prob
///   sums.
///
/// A compact inference model (`EnginePrecision` bf16/q8) ignores it: its weights are packed already.
public enum MatmulPrecision: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case f32, bf16

    /// The default of `selm train` and `selm serve` (README "Learner precision"): bf16 halves the
    /// step and follows f32's online reward curve; library callers default to f32.
    public static let learnerDefault: MatmulPrecision = .bf16

    public var description: String { rawValue }

    /// out (T, OC) = inp (T, C) · weight (OC, C)ᵀ, or += with `accumulate`.
    @inline(__always)
    func forward(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>,
                 T: Int, C: Int, OC: Int, accumulate: Bool) {
        switch self {
        case .f32: matmul_forward(out, inp, weight, Int32(T), Int32(C), Int32(OC), accumulate ? 1 : 0)
        case .bf16: matmul_forward_bf16(out, inp, weight, Int32(T), Int32(C), Int32(OC), accumulate ? 1 : 0)
        }
    }

    /// dinp (T, C) += dout (T, OC) · weight;  dweight (OC, C) += doutᵀ · inp.
    @inline(__always)
    func backward(_ dinp: UnsafeMutablePointer<Float>?, _ dweight: UnsafeMutablePointer<Float>?, _ dout: UnsafePointer<Float>,
                  _ inp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, T: Int, C: Int, OC: Int) {
        switch self {
        case .f32: matmul_backward(dinp, dweight, dout, inp, weight, Int32(T), Int32(C), Int32(OC))
        case .bf16: matmul_backward_bf16(dinp, dweight, dout, inp, weight, Int32(T), Int32(C), Int32(OC))
        }
    }
}

// Hand-written conveniences on the generated value types (Generated/Messages.swift), for what the
// generator cannot derive from Proto/selm.proto. Keep this file small: every entry says why it exists.

extension SamplingParams {
    /// True when no field is set — the value an absent `sampling` message decodes to, and the one
    /// the encoder leaves out (gen_wire.py rule 8). Public API that callers use to ask "any
    /// sampling override?" without spelling out `SamplingParams()`.
    public var isEmpty: Bool { self == SamplingParams() }
}

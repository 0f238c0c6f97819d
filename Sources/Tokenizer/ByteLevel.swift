/// GPT-2's byte-level alphabet (`bytes_to_unicode` in openai/gpt-2 `encoder.py`): every byte gets a
/// printable character, so a vocabulary of strings can hold arbitrary bytes. Printable ASCII and most
/// of Latin-1 stand for themselves; the other 68 bytes (controls, space, soft hyphen, ...) map to
/// U+0100 onwards in byte order (space → `Ġ` U+0120, newline → `Ċ` U+010A).
enum ByteLevel {
    /// Character (as a Unicode scalar value) standing for each byte.
    static let scalarForByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            let printable = (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte)
            if printable {
                table[byte] = UInt32(byte)
            } else {
                table[byte] = next
                next += 1
            }
        }
        return table
    }()

    /// Inverse of `scalarForByte`, indexed by scalar value (all are below 0x144); -1 where no byte maps.
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (byte, scalar) in scalarForByte.enumerated() { table[Int(scalar)] = Int16(byte) }
        return table
    }()

    /// Byte-level spelling of raw bytes.
    static func encode<S: Sequence<UInt8>>(_ bytes: S) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(Unicode.Scalar(scalarForByte[Int(b)])!) }
        return String(s)
    }

    /// Raw bytes a byte-level spelled token stands for. A character outside the alphabet stands for
    /// its own UTF-8 bytes (as in Hugging Face's ByteLevel decoder).
    static func decode(_ token: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(token.utf8.count)
        for scalar in token.unicodeScalars {
            let v = Int(scalar.value)
            if v < byteForScalar.count, byteForScalar[v] >= 0 {
                out.append(UInt8(byteForScalar[v]))
            } else {
                out.append(contentsOf: String(scalar).utf8)
            }
        }
        return out
    }
}

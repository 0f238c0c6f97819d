// Module Wire: the selm.v1 protocol (Proto/selm.proto) in Swift — value types, frames, the request
// checks that need no model. It owns the only use of the protobuf-c code (SelmProtoC) and imports
// nothing else (SelmProtoC, CProtobufC; both `internal import`, so no C type leaks into its API).
//
//   Generated/          value types + encode/decode, written by scripts/gen_wire.py (`make proto`)
//   Codec.swift         this file: the hand-written runtime under the generated code — the arena
//                       the encoders build protobuf-c structs in, the decoders' entry points and
//                       conversions of protobuf-c values, a scanner of damaged envelopes
//   Frame.swift         framing (length prefix, FrameDecoder) and the public encode/decode calls
//   WireError.swift     errors
//   Validation.swift    the request checks, each rule once
//   Conveniences.swift  the few helpers the generator cannot derive

internal import SelmProtoC
internal import CProtobufC

/// A bump allocator holding every protobuf-c struct, array and string of one envelope being
/// encoded; everything is freed at once when the arena is released.
final class Arena {
    private static let chunkSize = 4096
    private var blocks: [UnsafeMutableRawPointer] = []
    private var cursor: UnsafeMutableRawPointer? = nil
    private var remaining = 0

    deinit {
        for block in blocks { block.deallocate() }
    }

    /// `byteCount` uninitialised bytes aligned to `alignment` (≤ 16).
    private func raw(_ byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer {
        if let c = cursor {
            let pad = (alignment - Int(bitPattern: c) & (alignment - 1)) & (alignment - 1)
            if pad + byteCount <= remaining {
                let p = c + pad
                cursor = p + byteCount
                remaining -= pad + byteCount
                return p
            }
        }
        if byteCount > Self.chunkSize / 4 {
            let p = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 16)
            blocks.append(p)
            return p
        }
        let c = UnsafeMutableRawPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
        blocks.append(c)
        cursor = c + byteCount
        remaining = Self.chunkSize - byteCount
        return c
    }

    /// Room for one `T`, uninitialised (initialise it with the generated `*__init`).
    func new<T>(_: T.Type) -> UnsafeMutablePointer<T> {
        raw(MemoryLayout<T>.stride, alignment: MemoryLayout<T>.alignment).bindMemory(to: T.self, capacity: 1)
    }

    /// A copy of `values` (trivial element types only), or nil when empty.
    func array<T: BitwiseCopyable>(_ values: [T]) -> UnsafeMutablePointer<T>? {
        if values.isEmpty { return nil }
        let p = raw(MemoryLayout<T>.stride * values.count, alignment: MemoryLayout<T>.alignment)
            .bindMemory(to: T.self, capacity: values.count)
        values.withUnsafeBufferPointer { p.initialize(from: $0.baseAddress!, count: $0.count) }
        return p
    }

    /// An array of `count` message pointers filled by `make`, or nil when `count` is 0.
    func pointers<T, E>(_ elements: [E], _ make: (E) -> UnsafeMutablePointer<T>) -> UnsafeMutablePointer<UnsafeMutablePointer<T>?>? {
        if elements.isEmpty { return nil }
        let p = raw(MemoryLayout<UnsafeMutablePointer<T>?>.stride * elements.count,
                    alignment: MemoryLayout<UnsafeMutablePointer<T>?>.alignment)
            .bindMemory(to: UnsafeMutablePointer<T>?.self, capacity: elements.count)
        for (i, e) in elements.enumerated() { (p + i).initialize(to: make(e)) }
        return p
    }

    /// A copy of `string`'s UTF-8 as a protobuf-c `bytes` value (every string field of the generated
    /// C code is `bytes`, see scripts/gen_proto.sh): the exact length travels, NULs included.
    func string(_ string: String) -> ProtobufCBinaryData {
        var s = string
        return s.withUTF8 { utf8 in
            guard let base = utf8.baseAddress, utf8.count > 0 else { return ProtobufCBinaryData(len: 0, data: nil) }
            let p = raw(utf8.count, alignment: 1).bindMemory(to: UInt8.self, capacity: utf8.count)
            UnsafeMutableRawPointer(p).copyMemory(from: base, byteCount: utf8.count)
            return ProtobufCBinaryData(len: utf8.count, data: p)
        }
    }

    /// A copy of `bytes` (a `bytes` field), or an empty value.
    func bytes(_ bytes: [UInt8]) -> ProtobufCBinaryData {
        guard !bytes.isEmpty else { return ProtobufCBinaryData(len: 0, data: nil) }
        let p = raw(bytes.count, alignment: 1).bindMemory(to: UInt8.self, capacity: bytes.count)
        bytes.withUnsafeBytes { UnsafeMutableRawPointer(p).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return ProtobufCBinaryData(len: bytes.count, data: p)
    }

    /// A NUL-terminated copy of `string`'s UTF-8, for map keys (the one `string` left in the C code;
    /// a key is cut at a NUL — the server's metric names have none).
    func cString(_ string: String) -> UnsafeMutablePointer<CChar> {
        var s = string
        return s.withUTF8 { utf8 in
            let p = raw(utf8.count + 1, alignment: 1).bindMemory(to: CChar.self, capacity: utf8.count + 1)
            if let base = utf8.baseAddress {
                UnsafeMutableRawPointer(p).copyMemory(from: base, byteCount: utf8.count)
            }
            p[utf8.count] = 0
            return p
        }
    }

    /// Copies of `strings` as protobuf-c `bytes` values, or nil when empty (repeated `string`).
    func strings(_ strings: [String]) -> UnsafeMutablePointer<ProtobufCBinaryData>? {
        if strings.isEmpty { return nil }
        let list = raw(MemoryLayout<ProtobufCBinaryData>.stride * strings.count,
                       alignment: MemoryLayout<ProtobufCBinaryData>.alignment)
            .bindMemory(to: ProtobufCBinaryData.self, capacity: strings.count)
        for (i, s) in strings.enumerated() { (list + i).initialize(to: string(s)) }
        return list
    }

    /// Map entries sorted by key, so equal dictionaries encode to equal bytes.
    func mapEntries<Entry, Value>(_ map: [String: Value], init initialise: (UnsafeMutablePointer<Entry>) -> Void,
                                  set: (UnsafeMutablePointer<Entry>, UnsafeMutablePointer<CChar>, Value) -> Void)
        -> UnsafeMutablePointer<UnsafeMutablePointer<Entry>?>? {
        pointers(map.sorted { $0.key < $1.key }) { kv in
            let p = new(Entry.self)
            initialise(p)
            set(p, cString(kv.key), kv.value)
            return p
        }
    }
}

/// Decoding of unpacked envelopes: the entry points here, one generated `decode…` per message
/// (Generated/Decode.swift). Every unpacked envelope is freed with `selm__v1__envelope__free_unpacked`
/// before the entry point returns, error or not.
enum Unpacked {
    /// The allocator protobuf-c unpacks and frees with; nil = malloc/free. A test hook (leak
    /// counting): set it only while no decode runs on any thread.
    nonisolated(unsafe) static var allocator: UnsafeMutablePointer<ProtobufCAllocator>? = nil

    static func decodeClient(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> Envelope<ClientMessage> {
        let env = try unpack(bytes)
        defer { selm__v1__envelope__free_unpacked(env, allocator) }
        let e = env.pointee
        let number = UInt32(e.body_case.rawValue)
        if number == 0 { throw bodyless(env) }
        let body: ClientMessage?
        do throws(FieldError) {
            body = try decodeClientBody(e)
        } catch {
            throw .invalidField(id: e.id, field: error.field, reason: error.reason)
        }
        guard let body else { throw .unexpectedBody(id: e.id, body: bodyName(number)) }
        return Envelope(id: e.id, body: body)
    }

    static func decodeServer(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> Envelope<ServerMessage> {
        let env = try unpack(bytes)
        defer { selm__v1__envelope__free_unpacked(env, allocator) }
        let e = env.pointee
        let number = UInt32(e.body_case.rawValue)
        if number == 0 { throw bodyless(env) }
        guard let body = decodeServerBody(e) else { throw .unexpectedBody(id: e.id, body: bodyName(number)) }
        return Envelope(id: e.id, body: body)
    }

    /// Unpacks an envelope (caller frees it) or throws `.malformed` with the id if readable.
    private static func unpack(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> UnsafeMutablePointer<Selm__V1__Envelope> {
        guard let base = bytes.baseAddress, bytes.count > 0 else { throw .missingBody(id: 0) }
        guard let env = selm__v1__envelope__unpack(allocator, bytes.count, base.assumingMemoryBound(to: UInt8.self)) else {
            throw .malformed(id: scanEnvelopeID(bytes))
        }
        return env
    }

    /// The error for an envelope without a known body: an unknown field in the body range
    /// (≥ 10) means a body from a newer peer, otherwise there is no body at all.
    private static func bodyless(_ env: UnsafeMutablePointer<Selm__V1__Envelope>) -> WireError {
        let base = env.pointee.base
        for i in 0..<Int(base.n_unknown_fields) {
            let tag = base.unknown_fields[i].tag
            if tag >= 10 { return .unknownBody(id: env.pointee.id, fieldNumber: tag) }
        }
        return .missingBody(id: env.pointee.id)
    }

    /// The proto field name of an envelope body field, from the generated descriptor.
    static func bodyName(_ number: UInt32) -> String {
        knownBodyName(number) ?? "field \(number)"
    }

    /// The proto field name of envelope field `number`, nil when the descriptor has none.
    static func knownBodyName(_ number: UInt32) -> String? {
        withUnsafePointer(to: selm__v1__envelope__descriptor) { desc in
            guard let field = protobuf_c_message_descriptor_get_field(desc, number) else { return nil }
            return String(cString: field.pointee.name)
        }
    }

    // MARK: protobuf-c values → Swift (called by the generated decoders)

    /// A request's string field (a protobuf-c `bytes`, see scripts/gen_proto.sh) as Swift, exactly: a
    /// value holding a NUL byte (which C code, file names and the auth check would cut) or ill-formed
    /// UTF-8 (which protobuf requires of `string`) is refused naming `field`.
    static func text(_ b: ProtobufCBinaryData, _ field: @autoclosure () -> String) throws(FieldError) -> String {
        guard b.len > 0, let data = b.data else { return "" }
        let bytes = UnsafeBufferPointer(start: data, count: b.len)
        if let nul = bytes.firstIndex(of: 0) {
            throw FieldError(field(), "contains a NUL byte (at byte \(nul)); strings must not contain U+0000")
        }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw FieldError(field(), "is not valid UTF-8")
        }
        return s
    }

    /// A reply's string field as Swift, NULs kept, ill-formed UTF-8 repaired with U+FFFD (replies are
    /// not validated).
    @inline(__always)
    static func string(_ b: ProtobufCBinaryData) -> String {
        guard b.len > 0, let data = b.data else { return "" }
        return String(decoding: UnsafeBufferPointer(start: data, count: b.len), as: UTF8.self)
    }

    /// A `bytes` field's bytes, as they are.
    @inline(__always)
    static func binary(_ b: ProtobufCBinaryData) -> [UInt8] {
        guard b.len > 0, let data = b.data else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: b.len))
    }

    /// A map key (the only C string left in the generated code); NULL → "".
    @inline(__always)
    static func cString(_ p: UnsafeMutablePointer<CChar>?) -> String {
        guard let p else { return "" }
        return String(cString: p)
    }

    /// A copy of a protobuf-c repeated scalar field.
    @inline(__always)
    static func array<T>(_ p: UnsafeMutablePointer<T>?, _ count: Int) -> [T] {
        guard let p, count > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: p, count: count))
    }
}

// MARK: - Damaged envelopes

/// Reads the top-level field 1 (the envelope id, a varint) from bytes protobuf-c refused, stopping
/// at the first damaged field; nil when no id precedes the damage. The last occurrence wins, as in
/// protobuf.
func scanEnvelopeID(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
    scanEnvelope(bytes).id
}

/// The envelope id (field 1) and the number of the last length-delimited field ≥ 10 (the body)
/// found in possibly damaged envelope bytes, reading fields until the first damaged one. A body
/// field whose key is intact counts even when its length or contents are damaged.
func scanEnvelope(_ bytes: UnsafeRawBufferPointer) -> (id: UInt64?, body: UInt32?) {
    let n = bytes.count
    var i = 0
    var id: UInt64? = nil
    var body: UInt32? = nil

    func varint() -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while i < n, shift < 64 {
            let b = bytes[i]
            i += 1
            value |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    scan: while i < n {
        guard let key = varint(), key >> 3 != 0 else { break }
        switch key & 7 {
        case 0:
            guard let v = varint() else { break scan }
            if key >> 3 == 1 { id = v }
        case 1:
            guard n - i >= 8 else { break scan }
            i += 8
        case 2:
            if key >> 3 >= 10, key >> 3 <= UInt64(UInt32.max) { body = UInt32(key >> 3) }
            guard let length = varint(), length <= UInt64(n - i) else { break scan }
            i += Int(length)
        case 5:
            guard n - i >= 4 else { break scan }
            i += 4
        default:
            break scan
        }
    }
    return (id, body)
}

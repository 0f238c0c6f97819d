import CProtobufC
import Foundation
import SelmProtoC
import Wire
import XCTest

/// The generated Swift mirror (Sources/Wire/Generated, scripts/gen_wire.py) carries every field of
/// every message. Envelopes are built on the C side from protobuf-c's own descriptors — every field
/// of every message reachable from each `Envelope.body` member set to a valid non-default value,
/// each oneof member in turn — packed by protobuf-c, decoded into the Swift types and encoded back:
/// the bytes must come back unchanged. A field the generator drops, a oneof case wired to the wrong
/// member, or a body number on the wrong side of the request/reply split fails here, and a field
/// added to Proto/selm.proto is covered without editing this test.
final class GeneratedMirrorTests: XCTestCase {
    /// Blocks allocated for the C messages of one test, freed at its end.
    private var blocks: [UnsafeMutableRawPointer] = []

    override func tearDown() {
        for b in blocks { free(b) }
        blocks = []
    }

    private func alloc(_ size: Int) -> UnsafeMutableRawPointer {
        let p = calloc(1, max(size, 1))!
        blocks.append(p)
        return p
    }

    /// `selm.v1.Envelope`'s descriptor, read from an unpacked envelope (the C global's address).
    private func envelopeDescriptor() -> UnsafePointer<ProtobufCMessageDescriptor> {
        let bytes: [UInt8] = [0x08, 0x01]  // id: 1
        let env = bytes.withUnsafeBufferPointer { selm__v1__envelope__unpack(nil, $0.count, $0.baseAddress!) }!
        defer { selm__v1__envelope__free_unpacked(env, nil) }
        return env.pointee.base.descriptor
    }

    private func fields(_ d: UnsafePointer<ProtobufCMessageDescriptor>) -> [ProtobufCFieldDescriptor] {
        (0..<Int(d.pointee.n_fields)).map { d.pointee.fields[$0] }
    }

    private func isOneofMember(_ f: ProtobufCFieldDescriptor) -> Bool {
        f.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0
    }

    /// A C message of type `d` with every field set; of each oneof, member `variant % members`.
    /// Values are valid for the request checks (strings "x", ids [1], numbers 1, floats 0.5).
    private func filled(_ d: UnsafePointer<ProtobufCMessageDescriptor>, variant: Int) -> UnsafeMutableRawPointer {
        let m = alloc(Int(d.pointee.sizeof_message))
        protobuf_c_message_init(d, m)
        let all = fields(d)
        for f in all {
            if isOneofMember(f) {
                let members = all.filter { isOneofMember($0) && $0.quantifier_offset == f.quantifier_offset }
                guard members[variant % members.count].id == f.id else { continue }
                (m + Int(f.quantifier_offset)).storeBytes(of: f.id, as: UInt32.self)
            }
            if f.label == PROTOBUF_C_LABEL_REPEATED {
                let size = valueSize(f)
                let array = alloc(size)
                store(f, at: array, variant: variant)
                (m + Int(f.quantifier_offset)).storeBytes(of: 1, as: Int.self)  // size_t n_<field>
                (m + Int(f.offset)).storeBytes(of: array, as: UnsafeMutableRawPointer.self)
            } else {
                XCTAssertEqual(f.label, PROTOBUF_C_LABEL_NONE, "\(String(cString: f.name)): proto3 fields only")
                store(f, at: m + Int(f.offset), variant: variant)
            }
        }
        return m
    }

    private func valueSize(_ f: ProtobufCFieldDescriptor) -> Int {
        switch f.type {
        case PROTOBUF_C_TYPE_INT64, PROTOBUF_C_TYPE_SINT64, PROTOBUF_C_TYPE_SFIXED64, PROTOBUF_C_TYPE_UINT64,
             PROTOBUF_C_TYPE_FIXED64, PROTOBUF_C_TYPE_DOUBLE: 8
        case PROTOBUF_C_TYPE_BYTES: MemoryLayout<ProtobufCBinaryData>.stride
        case PROTOBUF_C_TYPE_STRING, PROTOBUF_C_TYPE_MESSAGE: MemoryLayout<UnsafeMutableRawPointer>.stride
        default: 4
        }
    }

    private func store(_ f: ProtobufCFieldDescriptor, at p: UnsafeMutableRawPointer, variant: Int) {
        switch f.type {
        case PROTOBUF_C_TYPE_INT32, PROTOBUF_C_TYPE_SINT32, PROTOBUF_C_TYPE_SFIXED32, PROTOBUF_C_TYPE_ENUM:
            p.storeBytes(of: 1, as: Int32.self)
        case PROTOBUF_C_TYPE_UINT32, PROTOBUF_C_TYPE_FIXED32:
            p.storeBytes(of: 1, as: UInt32.self)
        case PROTOBUF_C_TYPE_INT64, PROTOBUF_C_TYPE_SINT64, PROTOBUF_C_TYPE_SFIXED64:
            p.storeBytes(of: 1, as: Int64.self)
        case PROTOBUF_C_TYPE_UINT64, PROTOBUF_C_TYPE_FIXED64:
            p.storeBytes(of: 1, as: UInt64.self)
        case PROTOBUF_C_TYPE_FLOAT:
            p.storeBytes(of: 0.5, as: Float.self)
        case PROTOBUF_C_TYPE_DOUBLE:
            p.storeBytes(of: 0.5, as: Double.self)
        case PROTOBUF_C_TYPE_BOOL:
            p.storeBytes(of: 1, as: protobuf_c_boolean.self)
        case PROTOBUF_C_TYPE_STRING:  // map keys (every other string is `bytes` in the C code)
            let s = alloc(2).assumingMemoryBound(to: CChar.self)
            s[0] = 0x78; s[1] = 0
            p.storeBytes(of: s, as: UnsafeMutablePointer<CChar>.self)
        case PROTOBUF_C_TYPE_BYTES:
            let data = alloc(1).assumingMemoryBound(to: UInt8.self)
            data[0] = 0x78  // "x"
            p.storeBytes(of: ProtobufCBinaryData(len: 1, data: data), as: ProtobufCBinaryData.self)
        case PROTOBUF_C_TYPE_MESSAGE:
            let d = f.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
            p.storeBytes(of: filled(d, variant: variant), as: UnsafeMutableRawPointer.self)
        default:
            XCTFail("\(String(cString: f.name)): protobuf-c type \(f.type) not handled by this test")
        }
    }

    private func packed(_ m: UnsafeMutableRawPointer) -> [UInt8] {
        let message = m.assumingMemoryBound(to: ProtobufCMessage.self)
        let size = protobuf_c_message_get_packed_size(message)
        var out = [UInt8](repeating: 0, count: size)
        out.withUnsafeMutableBufferPointer { _ = protobuf_c_message_pack(message, $0.baseAddress!) }
        return out
    }

    func testEveryFieldOfEveryBodyRoundTripsThroughTheSwiftTypes() throws {
        let env = envelopeDescriptor()
        let body = fields(env).filter(isOneofMember)
        XCTAssertEqual(body.count, 28, "Envelope.body members (12 requests, 16 replies); update when the .proto adds one")
        for member in body {
            let name = String(cString: member.name)
            // Three variants pick each member of every nested oneof (Prompt has three) at least once.
            for variant in 0..<3 {
                let e = alloc(Int(env.pointee.sizeof_message))
                protobuf_c_message_init(env, e)
                for f in fields(env) where f.id == 1 { (e + Int(f.offset)).storeBytes(of: 7, as: UInt64.self) }
                (e + Int(member.quantifier_offset)).storeBytes(of: member.id, as: UInt32.self)
                let d = member.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
                (e + Int(member.offset)).storeBytes(of: filled(d, variant: variant), as: UnsafeMutableRawPointer.self)
                let bytes = packed(e)
                if member.id < 40 {
                    let decoded = try Frame.decodeClient(bytes)
                    XCTAssertEqual(decoded.id, 7)
                    XCTAssertEqual(decoded.body.name, name)
                    XCTAssertEqual(Frame.encodeBody(decoded), bytes, "\(name), variant \(variant): \(decoded)")
                    XCTAssertThrowsError(try Frame.decodeServer(bytes), name)
                } else {
                    let decoded = try Frame.decodeServer(bytes)
                    XCTAssertEqual(decoded.id, 7)
                    XCTAssertEqual(decoded.body.name, name)
                    XCTAssertEqual(Frame.encodeBody(decoded), bytes, "\(name), variant \(variant): \(decoded)")
                    XCTAssertThrowsError(try Frame.decodeClient(bytes), name)
                }
            }
        }
    }

    /// Every `ErrorCode` value's generated `protoName` is the .proto's name without the enum prefix,
    /// read from protobuf-c's enum descriptor (reached through `Envelope.error.code`).
    func testEnumProtoNamesAreTheProtoNames() throws {
        let env = envelopeDescriptor()
        let errorField = try XCTUnwrap(fields(env).first { String(cString: $0.name) == "error" })
        let errorMessage = errorField.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        let codeField = try XCTUnwrap(fields(errorMessage).first { String(cString: $0.name) == "code" })
        let e = codeField.descriptor.assumingMemoryBound(to: ProtobufCEnumDescriptor.self)
        XCTAssertGreaterThan(e.pointee.n_values, 10)
        for i in 0..<Int(e.pointee.n_values) {
            let v = e.pointee.values[i]
            let name = String(cString: v.name)
            XCTAssertEqual(ErrorCode(rawValue: v.value).protoName, String(name.dropFirst("ERROR_CODE_".count)), name)
        }
        XCTAssertEqual(ErrorCode(rawValue: 999).protoName, "ERROR_CODE_999")
    }
}

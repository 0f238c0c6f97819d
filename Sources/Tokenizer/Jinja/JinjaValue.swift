import Foundation

/// A value inside the Jinja interpreter, with Python's semantics as Jinja2 gives them to chat
/// templates: `none`, booleans, ints, floats, strings, lists (Python lists and tuples), ordered
/// dicts with string keys, namespaces (`namespace()`, mutable by `set ns.x = …`), callables
/// (globals, methods, macros) and Jinja2's default `Undefined` (prints as "", is false, iterates
/// as empty, fails on attribute access or arithmetic).
public enum JinjaValue {
    /// Jinja2's default Undefined; `hint` says what was missing, for errors.
    case undefined(hint: String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case callable(JinjaCallable)

    /// A string-keyed dict value from Swift pairs, keeping their order.
    public static func object(_ pairs: KeyValuePairs<String, JinjaValue>) -> JinjaValue {
        var d = JinjaDict()
        for (k, v) in pairs { d[k] = v }
        return .dict(d)
    }

    /// A value from JSONSerialization's output (NSNull, NSNumber, String, arrays, dictionaries; dict
    /// keys sorted, as JSONSerialization does not keep their order).
    public init(json: Any) {
        switch json {
        case is NSNull: self = .none
        case let s as String: self = .string(s)
        case let n as NSNumber:
            switch String(cString: n.objCType) {
            case "c", "B": self = .bool(n.boolValue)
            case "f", "d": self = .double(n.doubleValue)
            default: self = .int(n.intValue)
            }
        case let a as [Any]: self = .list(a.map { JinjaValue(json: $0) })
        case let d as [String: Any]:
            var out = JinjaDict()
            for k in d.keys.sorted() { out[k] = JinjaValue(json: d[k]!) }
            self = .dict(out)
        default: self = .string("\(json)")
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// Python truthiness (Undefined is false).
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case let .bool(b): return b
        case let .int(i): return i != 0
        case let .double(d): return d != 0
        case let .string(s): return !s.isEmpty
        case let .list(l): return !l.isEmpty
        case let .dict(d): return !d.isEmpty
        case .namespace, .callable: return true
        }
    }

    /// Python's type name, for error messages.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .list: return "list"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .callable: return "function"
        }
    }

    /// Python's `str()` as Jinja prints values (`{{ x }}`, `~`, `|string`); Undefined prints as "".
    public var text: String {
        switch self {
        case .undefined: return ""
        case let .string(s): return s
        default: return repr
        }
    }

    /// Python's `repr()` (strings quoted), as lists and dicts print their items.
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case let .bool(b): return b ? "True" : "False"
        case let .int(i): return String(i)
        case let .double(d): return Self.pythonFloat(d)
        case let .string(s): return Self.pythonRepr(s)
        case let .list(l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case let .dict(d): return "{" + d.pairs.map { Self.pythonRepr($0.0) + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case let .namespace(n): return "<Namespace " + n.storage.pairs.map { "\($0.0)=\($0.1.repr)" }.joined(separator: ", ") + ">"
        case let .callable(c): return "<function \(c.name)>"
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        return "\(d)"   // Swift's shortest round-trip form matches Python's repr (1.0, 0.1, 1e-05, 1e+16)
    }

    static func pythonRepr(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(u) == quote { out += "\\" + String(quote) }
                else if u.value < 0x20 || u.value == 0x7F { out += String(format: "\\x%02x", u.value) }
                else { out.unicodeScalars.append(u) }
            }
        }
        out.append(quote)
        return out
    }
}

/// An ordered dict with string keys (Python dicts keep insertion order).
public struct JinjaDict {
    private(set) var keys: [String] = []
    private var values: [String: JinjaValue] = [:]

    public init() {}

    public subscript(key: String) -> JinjaValue? {
        get { values[key] }
        set {
            if let newValue {
                if values.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if values.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    var isEmpty: Bool { keys.isEmpty }
    var count: Int { keys.count }
    var pairs: [(String, JinjaValue)] { keys.map { ($0, values[$0]!) } }
}

/// Jinja's `namespace()`: the one mutable object a template can assign attributes of.
public final class JinjaNamespace {
    var storage = JinjaDict()
    init() {}
}

/// A function a template can call: a global (`range`, `namespace`, `raise_exception`…), a bound
/// method (`'a b'.split`), or a macro.
public final class JinjaCallable {
    let name: String
    let call: ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue
    init(_ name: String, _ call: @escaping ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue) {
        self.name = name
        self.call = call
    }
}

extension JinjaValue {
    /// Parses JSON text, keeping the order of object keys (which `tojson` and `items()` show).
    /// - Throws: `JinjaError` (`.syntax`) with the line and column of the first error.
    public init(jsonText: String) throws(JinjaError) {
        var p = JSONReader(Array(jsonText.utf8))
        self = try p.document()
    }
}

/// A small JSON reader for `JinjaValue(jsonText:)`.
private struct JSONReader {
    let b: [UInt8]
    var i = 0
    init(_ b: [UInt8]) { self.b = b }

    func fail(_ m: String) -> JinjaError {
        var line = 1, col = 1
        for c in b[..<min(i, b.count)] { if c == 10 { line += 1; col = 1 } else { col += 1 } }
        return JinjaError(.syntax, "JSON: \(m)", line: line, column: col)
    }

    mutating func skip() { while i < b.count, [32, 9, 10, 13].contains(b[i]) { i += 1 } }

    mutating func document() throws(JinjaError) -> JinjaValue {
        let v = try value()
        skip()
        guard i == b.count else { throw fail("unexpected text after the value") }
        return v
    }

    mutating func literal(_ s: String, _ v: JinjaValue) throws(JinjaError) -> JinjaValue {
        let u = Array(s.utf8)
        guard i + u.count <= b.count, Array(b[i..<(i + u.count)]) == u else { throw fail("unexpected character") }
        i += u.count
        return v
    }

    mutating func value() throws(JinjaError) -> JinjaValue {
        skip()
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"):
            i += 1
            var d = JinjaDict()
            skip()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .dict(d) }
            while true {
                skip()
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                let k = try string()
                skip()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                d[k] = try value()
                skip()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                guard b[i] == UInt8(ascii: "}") else { throw fail("expected ',' or '}'") }
                i += 1
                return .dict(d)
            }
        case UInt8(ascii: "["):
            i += 1
            var l: [JinjaValue] = []
            skip()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .list(l) }
            while true {
                l.append(try value())
                skip()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                guard b[i] == UInt8(ascii: "]") else { throw fail("expected ',' or ']'") }
                i += 1
                return .list(l)
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .none)
        default:
            let start = i
            while i < b.count, "+-0123456789.eE".utf8.contains(b[i]) { i += 1 }
            let text = String(decoding: b[start..<i], as: UTF8.self)
            if let n = Int(text) { return .int(n) }
            if let d = Double(text) { return .double(d) }
            i = start
            throw fail("unexpected character")
        }
    }

    mutating func string() throws(JinjaError) -> String {
        i += 1
        var out: [UInt8] = []
        while i < b.count, b[i] != UInt8(ascii: "\"") {
            guard b[i] == UInt8(ascii: "\\") else { out.append(b[i]); i += 1; continue }
            i += 1
            guard i < b.count else { break }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "b"): out.append(8)
            case UInt8(ascii: "f"): out.append(12)
            case UInt8(ascii: "u"):
                func hex4() throws(JinjaError) -> UInt32 {
                    guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<(i + 4)], as: UTF8.self), radix: 16) else {
                        throw fail("bad \\u escape")
                    }
                    i += 4
                    return v
                }
                var v = try hex4()
                if (0xD800..<0xDC00).contains(v), i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") {
                    i += 2
                    let lo = try hex4()
                    v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00)
                }
                out.append(contentsOf: Array(String(Unicode.Scalar(v).map(Character.init) ?? "\u{FFFD}").utf8))
            default: out.append(e)
            }
        }
        guard i < b.count else { throw fail("the string is not closed") }
        i += 1
        return String(decoding: out, as: UTF8.self)
    }
}

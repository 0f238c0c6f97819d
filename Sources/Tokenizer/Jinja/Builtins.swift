import Foundation

/// Jinja2's filters, tests and globals, Python's operators and the methods chat templates call, with
/// Python's semantics (and the sandbox's refusals of methods that modify lists and dicts).
enum JinjaBuiltins {
    private static func fail(_ m: String) -> JinjaFailure { JinjaFailure(message: m) }

    // MARK: globals

    static func globals() -> [String: JinjaValue] {
        var g: [String: JinjaValue] = [:]
        g["range"] = .callable(JinjaCallable("range") { args, _ in
            let ints = try args.map { v -> Int in
                guard case let .int(i) = v else { throw fail("range() takes integers, got \(v.typeName)") }
                return i
            }
            var start = 0, stop = 0, step = 1
            switch ints.count {
            case 1: stop = ints[0]
            case 2: start = ints[0]; stop = ints[1]
            case 3: start = ints[0]; stop = ints[1]; step = ints[2]
            default: throw fail("range() takes 1 to 3 arguments, got \(ints.count)")
            }
            guard step != 0 else { throw fail("range() step must not be zero") }
            let values = Array(stride(from: start, to: stop, by: step))
            guard values.count <= 100_000 else { throw fail("range too big (the sandbox allows 100000 items)") }
            return .list(values.map { .int($0) })
        })
        g["namespace"] = .callable(JinjaCallable("namespace") { args, kwargs in
            let ns = JinjaNamespace()
            for a in args {
                guard case let .dict(d) = a else { throw fail("namespace() takes a dict or keyword arguments") }
                for (k, v) in d.pairs { try checkNamespaceName(k); ns.storage[k] = v }
            }
            for (k, v) in kwargs { try checkNamespaceName(k); ns.storage[k] = v }
            return .namespace(ns)
        })
        g["dict"] = .callable(JinjaCallable("dict") { args, kwargs in
            var d = JinjaDict()
            for a in args {
                switch a {
                case let .dict(other): for (k, v) in other.pairs { d[k] = v }
                default:
                    for pair in try iterate(a) {
                        let kv = try iterate(pair)
                        guard kv.count == 2, case let .string(k) = kv[0] else { throw fail("dict() takes key/value pairs") }
                        d[k] = kv[1]
                    }
                }
            }
            for (k, v) in kwargs { d[k] = v }
            return .dict(d)
        })
        g["raise_exception"] = .callable(JinjaCallable("raise_exception") { args, _ in
            throw JinjaRaised(message: args.first?.text ?? "")
        })
        g["strftime_now"] = .callable(JinjaCallable("strftime_now") { args, _ in
            guard case let .string(format)? = args.first else { throw fail("strftime_now() takes a format string") }
            return .string(strftimeNow(format))
        })
        return g
    }

    /// `datetime.now().strftime(format)` in local time.
    static func strftimeNow(_ format: String) -> String {
        var t = time(nil)
        var tmv = tm()
        localtime_r(&t, &tmv)
        var buffer = [CChar](repeating: 0, count: 512)
        let n = strftime(&buffer, buffer.count, format, &tmv)
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// transformers' namespace refuses underscore-prefixed attributes.
    static func checkNamespaceName(_ name: String) throws {
        if name.hasPrefix("_") {
            throw fail("chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(name)'")
        }
    }

    // MARK: access

    static func call(_ f: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue {
        switch f {
        case let .callable(c): return try c.call(args, kwargs)
        case let .undefined(hint): throw fail(hint)
        default: throw fail("'\(f.typeName)' object is not callable")
        }
    }

    private static let dictMethods: Set<String> = ["items", "keys", "values", "get", "copy", "pop", "popitem", "setdefault", "update", "clear", "fromkeys"]
    private static let listMethods: Set<String> = ["index", "count", "copy", "append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"]
    private static let stringMethods: Set<String> = [
        "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "splitlines", "upper", "lower", "title",
        "capitalize", "replace", "find", "rfind", "index", "rindex", "count", "join", "format", "isdigit", "isalpha", "isalnum",
        "isspace", "isupper", "islower", "isnumeric", "isdecimal", "removeprefix", "removesuffix", "swapcase", "zfill",
        "center", "ljust", "rjust", "partition", "rpartition", "casefold", "expandtabs",
    ]

    /// `obj.name`: Jinja2's getattr (an attribute or method, else the item), Undefined when absent.
    static func attribute(_ obj: JinjaValue, _ name: String) throws -> JinjaValue {
        switch obj {
        case let .undefined(hint): throw fail(hint)
        case let .dict(d):
            if dictMethods.contains(name) { return method(obj, name) }
            return d[name] ?? .undefined(hint: "'dict object' has no attribute '\(name)'")
        case let .namespace(ns):
            return ns.storage[name] ?? .undefined(hint: "'Namespace object' has no attribute '\(name)'")
        case .string:
            if stringMethods.contains(name) { return method(obj, name) }
        case .list:
            if listMethods.contains(name) { return method(obj, name) }
        default: break
        }
        return .undefined(hint: "'\(obj.typeName) object' has no attribute '\(name)'")
    }

    /// `obj[index]`: Jinja2's getitem (the item, else the attribute), Undefined when absent.
    static func item(_ obj: JinjaValue, _ index: JinjaValue) throws -> JinjaValue {
        switch (obj, index) {
        case let (.undefined(hint), _): throw fail(hint)
        case let (.dict(d), .string(k)):
            return d[k] ?? .undefined(hint: "'dict object' has no attribute '\(k)'")
        case let (.list(l), _):
            if let i = intValue(index) {
                let j = i < 0 ? i + l.count : i
                return l.indices.contains(j) ? l[j] : .undefined(hint: "'list object' has no element \(i)")
            }
        case let (.string(s), _):
            if let i = intValue(index) {
                let u = Array(s.unicodeScalars)
                let j = i < 0 ? i + u.count : i
                return u.indices.contains(j) ? .string(String(u[j])) : .undefined(hint: "'str object' has no element \(i)")
            }
        default: break
        }
        if case let .string(name) = index { return try attribute(obj, name) }
        return .undefined(hint: "'\(obj.typeName) object' has no element \(index.repr)")
    }

    private static func intValue(_ v: JinjaValue) -> Int? {
        switch v {
        case let .int(i): return i
        case let .bool(b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Python's slice `obj[start:stop:step]` of a list or string.
    static func slice(_ obj: JinjaValue, _ start: JinjaValue?, _ stop: JinjaValue?, _ step: JinjaValue?) throws -> JinjaValue {
        func bound(_ v: JinjaValue?) throws -> Int? {
            guard let v, !(v.isNone) else { return nil }
            guard let i = intValue(v) else { throw fail("slice indices must be integers or None, got \(v.typeName)") }
            return i
        }
        let st = try bound(step) ?? 1
        guard st != 0 else { throw fail("slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            func clamp(_ i: Int?, _ def: Int) -> Int {
                guard var i else { return def }
                if i < 0 { i += n }
                return st > 0 ? min(max(i, 0), n) : min(max(i, -1), n - 1)
            }
            let a = clamp(try bound(start), st > 0 ? 0 : n - 1)
            let b = clamp(try bound(stop), st > 0 ? n : -1)
            return Array(stride(from: a, to: b, by: st))
        }
        switch obj {
        case let .list(l): return .list(try indices(l.count).map { l[$0] })
        case let .string(s):
            let u = Array(s.unicodeScalars)
            return .string(String(String.UnicodeScalarView(try indices(u.count).map { u[$0] })))
        case let .undefined(hint): throw fail(hint)
        default: throw fail("'\(obj.typeName)' object is not subscriptable")
        }
    }

    /// The items a `for` loop (or a filter) goes through: a list's items, a dict's keys, a string's
    /// characters; nothing for Undefined.
    static func iterate(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case .undefined: return []
        case let .list(l): return l
        case let .dict(d): return d.keys.map { .string($0) }
        case let .string(s): return s.unicodeScalars.map { .string(String($0)) }
        default: throw fail("'\(v.typeName)' object is not iterable")
        }
    }

    static func length(_ v: JinjaValue) throws -> Int {
        switch v {
        case .undefined: return 0
        case let .list(l): return l.count
        case let .dict(d): return d.count
        case let .string(s): return s.unicodeScalars.count
        case let .namespace(ns): return ns.storage.count
        default: throw fail("object of type '\(v.typeName)' has no len()")
        }
    }

    // MARK: operators

    private static func number(_ v: JinjaValue) -> Double? {
        switch v {
        case let .int(i): return Double(i)
        case let .double(d): return d
        case let .bool(b): return b ? 1 : 0
        default: return nil
        }
    }

    private static func isInteger(_ v: JinjaValue) -> Bool {
        switch v {
        case .int, .bool: return true
        default: return false
        }
    }

    static func equal(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
        if let x = number(a), let y = number(b) {
            if let i = intValue(a), let j = intValue(b) { return i == j }
            return x == y
        }
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case let (.string(x), .string(y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case let (.list(x), .list(y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case let (.dict(x), .dict(y)):
            return x.count == y.count && x.pairs.allSatisfy { k, v in y[k].map { equal(v, $0) } ?? false }
        case let (.namespace(x), .namespace(y)): return x === y
        case let (.callable(x), .callable(y)): return x === y
        default: return false
        }
    }

    /// Python's ordering (`<`): numbers, strings (by code point), lists; else a TypeError.
    static func less(_ a: JinjaValue, _ b: JinjaValue, _ op: String = "<") throws -> Bool {
        if let x = number(a), let y = number(b) {
            if let i = intValue(a), let j = intValue(b) { return i < j }
            return x < y
        }
        switch (a, b) {
        case let (.string(x), .string(y)): return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars)
        case let (.list(x), .list(y)):
            for (u, v) in zip(x, y) where !equal(u, v) { return try less(u, v, op) }
            return x.count < y.count
        case let (.undefined(hint), _), let (_, .undefined(hint)): throw fail(hint)
        default: throw fail("'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
        }
    }

    static func contains(_ container: JinjaValue, _ item: JinjaValue) throws -> Bool {
        switch container {
        case let .string(s):
            guard case let .string(sub) = item else {
                throw fail("'in <string>' requires string as left operand, not \(item.typeName)")
            }
            return sub.isEmpty || s.unicodeScalars.firstRange(of: sub.unicodeScalars) != nil
        case let .list(l): return l.contains { equal($0, item) }
        case let .dict(d):
            if case let .string(k) = item { return d[k] != nil }
            return false
        case .undefined: return false
        case let .namespace(ns):
            if case let .string(k) = item { return ns.storage[k] != nil }
            return false
        default: throw fail("argument of type '\(container.typeName)' is not iterable")
        }
    }

    static func compare(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> Bool {
        switch op {
        case "==": return equal(a, b)
        case "!=": return !equal(a, b)
        case "<": return try less(a, b, op)
        case ">": return try less(b, a, op)
        case "<=": return try !less(b, a, op)
        case ">=": return try !less(a, b, op)
        case "in": return try contains(b, a)
        case "not in": return try !contains(b, a)
        default: throw fail("unknown comparison \(op)")
        }
    }

    static func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        if op == "~" { return .string(a.text + b.text) }
        if case let .undefined(hint) = a { throw fail(hint) }
        if case let .undefined(hint) = b { throw fail(hint) }
        func unsupported() -> JinjaFailure {
            if op == "+", case .string = a { return fail("can only concatenate str (not \"\(b.typeName)\") to str") }
            if op == "+", case .list = a { return fail("can only concatenate list (not \"\(b.typeName)\") to list") }
            return fail("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
        }
        switch (op, a, b) {
        case let ("+", .string(x), .string(y)): return .string(x + y)
        case let ("+", .list(x), .list(y)): return .list(x + y)
        case let ("*", .string(x), _) where isInteger(b): return .string(String(repeating: x, count: max(0, intValue(b)!)))
        case let ("*", _, .string(y)) where isInteger(a): return .string(String(repeating: y, count: max(0, intValue(a)!)))
        case let ("*", .list(x), _) where isInteger(b): return .list(Array(repeating: x, count: max(0, intValue(b)!)).flatMap { $0 })
        case let ("%", .string(format), _): return .string(try percentFormat(format, b))
        default: break
        }
        guard let x = number(a), let y = number(b) else { throw unsupported() }
        if let i = intValue(a), let j = intValue(b) {
            switch op {
            case "+", "-", "*":
                let (r, o) = op == "+" ? i.addingReportingOverflow(j) : op == "-" ? i.subtractingReportingOverflow(j) : i.multipliedReportingOverflow(by: j)
                if o { throw fail("integer overflow in \(op)") }
                return .int(r)
            case "//", "%":
                guard j != 0 else { throw fail("integer division or modulo by zero") }
                var q = i / j, r = i % j
                if r != 0, (r < 0) != (j < 0) { q -= 1; r += j }
                return .int(op == "//" ? q : r)
            case "**":
                if j >= 0 {
                    var r = 1
                    for _ in 0..<j {
                        let (m, o) = r.multipliedReportingOverflow(by: i)
                        if o { throw fail("integer overflow in **") }
                        r = m
                    }
                    return .int(r)
                }
                return .double(pow(x, y))
            default: break
            }
        }
        switch op {
        case "+": return .double(x + y)
        case "-": return .double(x - y)
        case "*": return .double(x * y)
        case "/":
            guard y != 0 else { throw fail("division by zero") }
            return .double(x / y)
        case "//":
            guard y != 0 else { throw fail("float floor division by zero") }
            return .double((x / y).rounded(.down))
        case "%":
            guard y != 0 else { throw fail("float modulo") }
            let r = x - y * (x / y).rounded(.down)
            return .double(r)
        case "**": return .double(pow(x, y))
        default: throw unsupported()
        }
    }

    /// Python's `format % values` for %s, %r, %d, %i, %f and %%.
    static func percentFormat(_ format: String, _ values: JinjaValue) throws -> String {
        var args: [JinjaValue]
        if case let .list(l) = values { args = l } else { args = [values] }
        var out = ""
        var it = Array(format.unicodeScalars)[...]
        while let c = it.popFirst() {
            guard c == "%" else { out.unicodeScalars.append(c); continue }
            guard let spec = it.popFirst() else { throw fail("incomplete format") }
            if spec == "%" { out += "%"; continue }
            guard !args.isEmpty else { throw fail("not enough arguments for format string") }
            let v = args.removeFirst()
            switch spec {
            case "s": out += v.text
            case "r": out += v.repr
            case "d", "i":
                guard let n = number(v) else { throw fail("%d format: a real number is required, not \(v.typeName)") }
                out += String(Int(n))
            case "f":
                guard let n = number(v) else { throw fail("%f format: a real number is required, not \(v.typeName)") }
                out += String(format: "%f", n)
            default: throw fail("unsupported format character '\(spec)'")
            }
        }
        if !args.isEmpty, case .list = values { throw fail("not all arguments converted during string formatting") }
        return out
    }

    // MARK: methods

    private static func method(_ obj: JinjaValue, _ name: String) -> JinjaValue {
        .callable(JinjaCallable(name) { args, kwargs in try callMethod(obj, name, Arguments(args, kwargs)) })
    }

    /// Positional and keyword arguments of a call, looked up by position or name.
    struct Arguments {
        let args: [JinjaValue]
        let kwargs: [(String, JinjaValue)]
        init(_ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) { self.args = args; self.kwargs = kwargs }
        func get(_ i: Int, _ name: String) -> JinjaValue? {
            if i < args.count { return args[i] }
            return kwargs.first { $0.0 == name }?.1
        }
        func string(_ i: Int, _ name: String) throws -> String? {
            guard let v = get(i, name), !v.isNone else { return nil }
            guard case let .string(s) = v else { throw JinjaFailure(message: "argument '\(name)' must be a string, not \(v.typeName)") }
            return s
        }
        func int(_ i: Int, _ name: String) throws -> Int? {
            guard let v = get(i, name), !v.isNone else { return nil }
            guard let n = JinjaBuiltins.intValue(v) else { throw JinjaFailure(message: "argument '\(name)' must be an integer, not \(v.typeName)") }
            return n
        }
        func bool(_ i: Int, _ name: String, _ def: Bool) -> Bool { get(i, name)?.truthy ?? def }
    }

    private static func callMethod(_ obj: JinjaValue, _ name: String, _ a: Arguments) throws -> JinjaValue {
        switch obj {
        case let .dict(d):
            switch name {
            case "items": return .list(d.pairs.map { .list([.string($0.0), $0.1]) })
            case "keys": return .list(d.keys.map { .string($0) })
            case "values": return .list(d.pairs.map(\.1))
            case "get":
                guard case let .string(k)? = a.get(0, "key") else { return a.get(1, "default") ?? .none }
                return d[k] ?? a.get(1, "default") ?? .none
            case "copy": return obj
            default: throw fail("access to attribute '\(name)' of 'dict' object is unsafe")
            }
        case let .list(l):
            switch name {
            case "index":
                guard let x = a.get(0, "value"), let i = l.firstIndex(where: { equal($0, x) }) else { throw fail("value is not in list") }
                return .int(i)
            case "count":
                guard let x = a.get(0, "value") else { throw fail("count() takes exactly one argument") }
                return .int(l.filter { equal($0, x) }.count)
            case "copy": return obj
            default: throw fail("access to attribute '\(name)' of 'list' object is unsafe")
            }
        case let .string(s):
            return try stringMethod(s, name, a)
        default:
            throw fail("'\(obj.typeName)' object has no attribute '\(name)'")
        }
    }

    static func strip(_ s: String, _ chars: String?, leading: Bool, trailing: Bool) -> String {
        let set = chars.map { Set($0.unicodeScalars) }
        func strip(_ c: Unicode.Scalar) -> Bool { set?.contains(c) ?? isPythonSpace(c) }
        var u = Array(s.unicodeScalars)[...]
        if leading { while let f = u.first, strip(f) { u.removeFirst() } }
        if trailing { while let l = u.last, strip(l) { u.removeLast() } }
        return String(String.UnicodeScalarView(u))
    }

    /// Python's `str.split(sep, maxsplit)` (runs of whitespace when `sep` is nil).
    static func split(_ s: String, _ sep: String?, _ maxsplit: Int) throws -> [String] {
        let u = Array(s.unicodeScalars)
        var parts: [String] = []
        if let sep {
            let p = Array(sep.unicodeScalars)
            guard !p.isEmpty else { throw fail("empty separator") }
            var start = 0, i = 0
            while i + p.count <= u.count, maxsplit < 0 || parts.count < maxsplit {
                if Array(u[i..<(i + p.count)]) == p {
                    parts.append(String(String.UnicodeScalarView(u[start..<i])))
                    i += p.count
                    start = i
                } else {
                    i += 1
                }
            }
            parts.append(String(String.UnicodeScalarView(u[start...])))
            return parts
        }
        var i = 0
        while i < u.count {
            while i < u.count, isPythonSpace(u[i]) { i += 1 }
            guard i < u.count else { break }
            if maxsplit >= 0, parts.count == maxsplit {
                var end = u.count
                while end > i, isPythonSpace(u[end - 1]) { end -= 1 }
                parts.append(String(String.UnicodeScalarView(u[i..<end])))
                break
            }
            let start = i
            while i < u.count, !isPythonSpace(u[i]) { i += 1 }
            parts.append(String(String.UnicodeScalarView(u[start..<i])))
        }
        return parts
    }

    private static func capitalize(_ s: String) -> String {
        guard let f = s.unicodeScalars.first else { return s }
        return String(f).uppercased() + String(String.UnicodeScalarView(s.unicodeScalars.dropFirst())).lowercased()
    }

    private static func stringMethod(_ s: String, _ name: String, _ a: Arguments) throws -> JinjaValue {
        func affixes(_ v: JinjaValue?) throws -> [String] {
            switch v {
            case let .string(x)?: return [x]
            case let .list(l)?: return try l.map { v in
                guard case let .string(x) = v else { throw fail("\(name) first arg must be str or a tuple of str") }
                return x
            }
            default: throw fail("\(name) first arg must be str or a tuple of str")
            }
        }
        func find(_ reverse: Bool) throws -> Int {
            guard let sub = try a.string(0, "sub") else { throw fail("\(name)() takes a substring") }
            let u = Array(s.unicodeScalars), p = Array(sub.unicodeScalars)
            guard p.count <= u.count else { return -1 }
            let range = Array(0...(u.count - p.count))
            for i in reverse ? range.reversed() : range where Array(u[i..<(i + p.count)]) == p { return i }
            return -1
        }
        switch name {
        case "strip", "lstrip", "rstrip":
            return .string(strip(s, try a.string(0, "chars"), leading: name != "rstrip", trailing: name != "lstrip"))
        case "startswith", "endswith":
            let list = try affixes(a.get(0, "prefix"))
            let u = Array(s.unicodeScalars)
            return .bool(list.contains { p in
                let pu = Array(p.unicodeScalars)
                return name == "startswith" ? u.starts(with: pu) : u.reversed().starts(with: pu.reversed())
            })
        case "split":
            return .list(try split(s, try a.string(0, "sep"), try a.int(1, "maxsplit") ?? -1).map { .string($0) })
        case "rsplit":
            let maxsplit = try a.int(1, "maxsplit") ?? -1
            let sep = try a.string(0, "sep")
            if maxsplit < 0 { return .list(try split(s, sep, -1).map { .string($0) }) }
            let rev = String(String.UnicodeScalarView(s.unicodeScalars.reversed()))
            let revSep = sep.map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }
            return .list(try split(rev, revSep, maxsplit).reversed().map { .string(String(String.UnicodeScalarView($0.unicodeScalars.reversed()))) })
        case "splitlines":
            var lines = s.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            if lines.last == "" { lines.removeLast() }
            return .list(lines.map { .string($0) })
        case "upper": return .string(s.uppercased())
        case "lower", "casefold": return .string(s.lowercased())
        case "title": return .string(title(s))
        case "capitalize": return .string(capitalize(s))
        case "swapcase":
            return .string(String(s.map { c in c.isUppercase ? Character(c.lowercased()) : Character(c.uppercased()) }))
        case "replace":
            guard let old = try a.string(0, "old"), let new = try a.string(1, "new") else { throw fail("replace() takes two strings") }
            return .string(replace(s, old, new, try a.int(2, "count") ?? -1))
        case "find": return .int(try find(false))
        case "rfind": return .int(try find(true))
        case "index", "rindex":
            let i = try find(name == "rindex")
            guard i >= 0 else { throw fail("substring not found") }
            return .int(i)
        case "count":
            guard let sub = try a.string(0, "sub") else { throw fail("count() takes a substring") }
            if sub.isEmpty { return .int(s.unicodeScalars.count + 1) }
            return .int(try split(s, sub, -1).count - 1)
        case "join":
            guard let items = a.get(0, "iterable") else { throw fail("join() takes an iterable") }
            return .string(try iterate(items).map { v in
                guard case let .string(x) = v else { throw fail("sequence item: expected str instance, \(v.typeName) found") }
                return x
            }.joined(separator: s))
        case "format": return .string(try pythonFormat(s, a))
        case "isdigit", "isnumeric", "isdecimal":
            return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType != nil })
        case "isalpha": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic })
        case "isalnum":
            return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
        case "isspace": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(isPythonSpace))
        case "isupper": return .bool(s.contains { $0.isCased } && !s.contains { $0.isLowercase })
        case "islower": return .bool(s.contains { $0.isCased } && !s.contains { $0.isUppercase })
        case "removeprefix":
            guard let p = try a.string(0, "prefix") else { throw fail("removeprefix() takes a string") }
            return .string(s.unicodeScalars.starts(with: p.unicodeScalars)
                ? String(String.UnicodeScalarView(s.unicodeScalars.dropFirst(p.unicodeScalars.count))) : s)
        case "removesuffix":
            guard let p = try a.string(0, "suffix") else { throw fail("removesuffix() takes a string") }
            return .string(!p.isEmpty && s.unicodeScalars.reversed().starts(with: p.unicodeScalars.reversed())
                ? String(String.UnicodeScalarView(s.unicodeScalars.dropLast(p.unicodeScalars.count))) : s)
        case "zfill":
            let w = try a.int(0, "width") ?? 0
            let n = s.unicodeScalars.count
            guard w > n else { return .string(s) }
            if let f = s.first, f == "-" || f == "+" { return .string(String(f) + String(repeating: "0", count: w - n) + s.dropFirst()) }
            return .string(String(repeating: "0", count: w - n) + s)
        case "center", "ljust", "rjust":
            let w = try a.int(0, "width") ?? 0
            let fill = try a.string(1, "fillchar") ?? " "
            let n = s.unicodeScalars.count
            guard w > n else { return .string(s) }
            let pad = w - n
            switch name {
            case "ljust": return .string(s + String(repeating: fill, count: pad))
            case "rjust": return .string(String(repeating: fill, count: pad) + s)
            default:
                let left = pad / 2 + (pad & w & 1)
                return .string(String(repeating: fill, count: left) + s + String(repeating: fill, count: pad - left))
            }
        case "partition", "rpartition":
            guard let sep = try a.string(0, "sep"), !sep.isEmpty else { throw fail("empty separator") }
            let r = name == "partition" ? s.range(of: sep) : s.range(of: sep, options: .backwards)
            guard let r else { return name == "partition" ? .list([.string(s), .string(""), .string("")]) : .list([.string(""), .string(""), .string(s)]) }
            return .list([.string(String(s[..<r.lowerBound])), .string(sep), .string(String(s[r.upperBound...]))])
        case "expandtabs": return .string(s.replacingOccurrences(of: "\t", with: String(repeating: " ", count: try a.int(0, "tabsize") ?? 8)))
        default: throw fail("'str' object has no attribute '\(name)'")
        }
    }

    static func replace(_ s: String, _ old: String, _ new: String, _ count: Int) -> String {
        if count == 0 { return s }
        if old.isEmpty {
            var out = "", n = 0
            for u in s.unicodeScalars {
                if count < 0 || n < count { out += new; n += 1 }
                out.unicodeScalars.append(u)
            }
            if count < 0 || n < count { out += new }
            return out
        }
        let parts = (try? split(s, old, count)) ?? [s]
        return parts.joined(separator: new)
    }

    /// Python's `str.format` with `{}`, `{0}`, `{name}`, `{name.attr}`/`{name[key]}` and `{{ }}`; format specs are not supported.
    private static func pythonFormat(_ format: String, _ a: Arguments) throws -> String {
        var out = ""
        var auto = 0
        var it = Array(format.unicodeScalars)[...]
        while let c = it.popFirst() {
            if c == "{" {
                if it.first == "{" { it.removeFirst(); out += "{"; continue }
                var field = ""
                while let d = it.first, d != "}" { field.unicodeScalars.append(d); it.removeFirst() }
                guard it.popFirst() == "}" else { throw fail("single '{' encountered in format string") }
                if field.contains(":") || field.contains("!") { throw fail("format specifications in str.format are not supported") }
                var head = field, rest = ""
                if let r = field.firstIndex(where: { $0 == "." || $0 == "[" }) { head = String(field[..<r]); rest = String(field[r...]) }
                var v: JinjaValue
                if head.isEmpty {
                    guard auto < a.args.count else { throw fail("Replacement index \(auto) out of range for positional args tuple") }
                    v = a.args[auto]; auto += 1
                } else if let i = Int(head) {
                    guard i < a.args.count else { throw fail("Replacement index \(i) out of range for positional args tuple") }
                    v = a.args[i]
                } else {
                    guard let kv = a.kwargs.first(where: { $0.0 == head }) else { throw fail("KeyError: '\(head)'") }
                    v = kv.1
                }
                while !rest.isEmpty {
                    if rest.hasPrefix(".") {
                        rest.removeFirst()
                        let end = rest.firstIndex { $0 == "." || $0 == "[" } ?? rest.endIndex
                        v = try attribute(v, String(rest[..<end]))
                        rest = String(rest[end...])
                    } else {
                        rest.removeFirst()
                        guard let end = rest.firstIndex(of: "]") else { throw fail("missing ']' in format string") }
                        let key = String(rest[..<end])
                        v = try item(v, Int(key).map { .int($0) } ?? .string(key))
                        rest = String(rest[rest.index(after: end)...])
                    }
                }
                out += v.text
            } else if c == "}" {
                guard it.popFirst() == "}" else { throw fail("single '}' encountered in format string") }
                out += "}"
            } else {
                out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Jinja2's `title` filter: each word (after `-`, whitespace, `(`, `{`, `[`, `<`) capitalised.
    private static func title(_ s: String) -> String {
        var out = ""
        var word = ""
        func flush() { if !word.isEmpty { out += capitalize(word); word = "" } }
        for u in s.unicodeScalars {
            if u == "-" || u == "(" || u == "{" || u == "[" || u == "<" || isPythonSpace(u) {
                flush()
                out.unicodeScalars.append(u)
            } else {
                word.unicodeScalars.append(u)
            }
        }
        flush()
        return out
    }

    // MARK: filters

    static func filter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue {
        let a = Arguments(args, kwargs)
        func str(_ x: JinjaValue) -> String { x.text }
        switch name {
        case "abs":
            switch v {
            case let .int(i): return .int(abs(i))
            case let .double(d): return .double(abs(d))
            case let .bool(b): return .int(b ? 1 : 0)
            default: throw fail("bad operand type for abs(): '\(v.typeName)'")
            }
        case "attr":
            guard case let .string(n)? = a.get(0, "name") else { throw fail("attr() takes an attribute name") }
            return try attribute(v, n)
        case "capitalize": return .string(capitalize(str(v)))
        case "center":
            return try stringMethod(str(v), "center", Arguments([.int(try a.int(0, "width") ?? 80)], []))
        case "count", "length": return .int(try length(v))
        case "default", "d":
            let def = a.get(0, "default_value") ?? .string("")
            if v.isUndefined || (a.bool(1, "boolean", false) && !v.truthy) { return def }
            return v
        case "dictsort":
            guard case let .dict(d) = v else { throw fail("dictsort() takes a dict, not \(v.typeName)") }
            let byValue = (try a.string(1, "by")) == "value"
            let cs = a.bool(0, "case_sensitive", false)
            let rev = a.bool(2, "reverse", false)
            let sorted = try sortValues(d.pairs.map { JinjaValue.list([.string($0.0), $0.1]) }, key: { p in
                guard case let .list(kv) = p else { return p }
                return byValue ? kv[1] : kv[0]
            }, caseSensitive: cs, reverse: rev)
            return .list(sorted)
        case "escape", "e", "forceescape":
            var out = ""
            for c in str(v).unicodeScalars {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.unicodeScalars.append(c)
                }
            }
            return .string(out)
        case "first":
            if case let .undefined(hint) = v { return .undefined(hint: hint) }
            return try iterate(v).first ?? .undefined(hint: "No first item, sequence was empty.")
        case "last":
            if case let .undefined(hint) = v { return .undefined(hint: hint) }
            return try iterate(v).last ?? .undefined(hint: "No last item, sequence was empty.")
        case "float":
            switch v {
            case let .int(i): return .double(Double(i))
            case let .double(d): return .double(d)
            case let .bool(b): return .double(b ? 1 : 0)
            case let .string(s): if let d = Double(strip(s, nil, leading: true, trailing: true)) { return .double(d) }
            default: break
            }
            return a.get(0, "default") ?? .double(0)
        case "int":
            switch v {
            case let .int(i): return .int(i)
            case let .double(d): return d.isFinite ? .int(Int(d)) : (a.get(0, "default") ?? .int(0))
            case let .bool(b): return .int(b ? 1 : 0)
            case let .string(s):
                let t = strip(s, nil, leading: true, trailing: true)
                if let i = Int(t, radix: try a.int(1, "base") ?? 10) { return .int(i) }
                if let d = Double(t), d.isFinite { return .int(Int(d)) }
            default: break
            }
            return a.get(0, "default") ?? .int(0)
        case "format":
            return .string(try percentFormat(str(v), .list(args)))
        case "indent":
            let widthValue = a.get(0, "width") ?? .int(4)
            let pad: String
            if case let .string(p) = widthValue { pad = p } else { pad = String(repeating: " ", count: intValue(widthValue) ?? 4) }
            var lines = (str(v) + "\n").split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            lines.removeLast()
            var rv: String
            if a.bool(2, "blank", false) {
                rv = lines.joined(separator: "\n" + pad)
            } else {
                rv = lines[0]
                if lines.count > 1 { rv += "\n" + lines[1...].map { $0.isEmpty ? $0 : pad + $0 }.joined(separator: "\n") }
            }
            return .string(a.bool(1, "first", false) ? pad + rv : rv)
        case "items":
            switch v {
            case .undefined: return .list([])
            case let .dict(d): return .list(d.pairs.map { .list([.string($0.0), $0.1]) })
            default: throw fail("can only get item pairs from a mapping, not \(v.typeName)")
            }
        case "join":
            let sep = try a.string(0, "d") ?? ""
            var items = try iterate(v)
            if let attr = try a.string(1, "attribute") { items = try items.map { try attributePath($0, attr) } }
            return .string(items.map(\.text).joined(separator: sep))
        case "list": return .list(try iterate(v))
        case "lower": return .string(str(v).lowercased())
        case "upper": return .string(str(v).uppercased())
        case "map":
            let items = try iterate(v)
            if let attr = kwargs.first(where: { $0.0 == "attribute" }) {
                guard case let .string(path) = attr.1 else { throw fail("map(attribute=…) takes a string") }
                let def = kwargs.first { $0.0 == "default" }?.1
                return .list(try items.map { x in
                    let r = try attributePath(x, path)
                    if r.isUndefined, let def { return def }
                    return r
                })
            }
            guard case let .string(f)? = args.first else { throw fail("map() takes a filter name or attribute=") }
            let rest = Array(args.dropFirst())
            return .list(try items.map { try filter(f, $0, rest, kwargs) })
        case "max", "min":
            var items = try iterate(v)
            if let attr = try a.string(1, "attribute") { items = try items.map { try attributePath($0, attr) } }
            let sorted = try sortValues(items, key: { $0 }, caseSensitive: a.bool(0, "case_sensitive", false), reverse: false)
            guard let r = name == "min" ? sorted.first : sorted.last else { return .undefined(hint: "No aggregated item, sequence was empty.") }
            return r
        case "reject", "select":
            let items = try iterate(v)
            let keep = name == "select"
            guard case let .string(t)? = args.first else { return .list(items.filter { $0.truthy == keep }) }
            let rest = Array(args.dropFirst())
            return .list(try items.filter { try test(t, $0, rest) == keep })
        case "rejectattr", "selectattr":
            let items = try iterate(v)
            let keep = name == "selectattr"
            guard case let .string(path)? = args.first else { throw fail("\(name)() takes an attribute name") }
            let rest = Array(args.dropFirst())
            return .list(try items.filter { x in
                let attrValue = try attributePath(x, path)
                guard case let .string(t)? = rest.first else { return attrValue.truthy == keep }
                return try test(t, attrValue, Array(rest.dropFirst())) == keep
            })
        case "replace":
            guard case let .string(old)? = a.get(0, "old"), case let .string(new)? = a.get(1, "new") else {
                throw fail("replace() takes two strings")
            }
            return .string(replace(str(v), old, new, try a.int(2, "count") ?? -1))
        case "reverse":
            if case let .string(s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .list(try iterate(v).reversed())
        case "round":
            guard let x = number(v) else { throw fail("round() takes a number, not \(v.typeName)") }
            let precision = try a.int(0, "precision") ?? 0
            let method = try a.string(1, "method") ?? "common"
            let scale = pow(10.0, Double(precision))
            let rule: FloatingPointRoundingRule = method == "ceil" ? .up : method == "floor" ? .down : .toNearestOrAwayFromZero
            return .double((x * scale).rounded(rule) / scale)
        case "safe": return v
        case "sort":
            let attr = try a.string(2, "attribute")
            let sorted = try sortValues(try iterate(v), key: { x in attr == nil ? x : ((try? attributePath(x, attr!)) ?? x) },
                                        caseSensitive: a.bool(1, "case_sensitive", false), reverse: a.bool(0, "reverse", false))
            return .list(sorted)
        case "string": return .string(v.text)
        case "sum":
            var items = try iterate(v)
            if let attr = try a.string(0, "attribute") { items = try items.map { try attributePath($0, attr) } }
            return try items.reduce(a.get(1, "start") ?? .int(0)) { try binary("+", $0, $1) }
        case "title": return .string(title(str(v)))
        case "tojson":
            let indent: String?
            switch a.get(0, "indent") {
            case let .int(n)?: indent = String(repeating: " ", count: n)
            case let .string(s)?: indent = s
            default: indent = nil
            }
            var itemSep = indent == nil ? ", " : ",", keySep = ": "
            if case let .list(seps)? = a.get(2, "separators"), seps.count == 2, case let .string(i) = seps[0], case let .string(k) = seps[1] {
                itemSep = i; keySep = k
            }
            var out = ""
            try json(v, indent: indent, level: 0, itemSep: itemSep, keySep: keySep, sortKeys: a.bool(3, "sort_keys", false),
                     asciiOnly: a.bool(1, "ensure_ascii", false), into: &out)
            return .string(out)
        case "trim": return .string(strip(str(v), try a.string(0, "chars"), leading: true, trailing: true))
        case "truncate":
            let s = str(v)
            let length = try a.int(0, "length") ?? 255
            let killwords = a.bool(1, "killwords", false)
            let end = try a.string(2, "end") ?? "..."
            let leeway = try a.int(3, "leeway") ?? 5
            let u = Array(s.unicodeScalars)
            if u.count <= length + leeway { return .string(s) }
            let keep = max(0, length - end.unicodeScalars.count)
            var cut = String(String.UnicodeScalarView(u[..<keep]))
            if !killwords, let sp = cut.lastIndex(of: " ") { cut = String(cut[..<sp]) }
            return .string(cut + end)
        case "unique":
            var seen: [JinjaValue] = []
            let cs = a.bool(0, "case_sensitive", false)
            let attr = try a.string(1, "attribute")
            var out: [JinjaValue] = []
            for x in try iterate(v) {
                var k = attr == nil ? x : try attributePath(x, attr!)
                if !cs, case let .string(s) = k { k = .string(s.lowercased()) }
                if !seen.contains(where: { equal($0, k) }) { seen.append(k); out.append(x) }
            }
            return .list(out)
        case "wordcount": return .int(try split(str(v), nil, -1).count)
        case "batch":
            guard let n = try a.int(0, "linecount"), n > 0 else { throw fail("batch() takes a positive size") }
            let items = try iterate(v)
            var out: [JinjaValue] = []
            var i = 0
            while i < items.count {
                var chunk = Array(items[i..<min(i + n, items.count)])
                if chunk.count < n, let fill = a.get(1, "fill_with") { chunk += Array(repeating: fill, count: n - chunk.count) }
                out.append(.list(chunk))
                i += n
            }
            return .list(out)
        default:
            throw fail("no filter named '\(name)'")
        }
    }

    /// `a.b.c` as Jinja's attribute filters read it (numeric parts index lists).
    private static func attributePath(_ v: JinjaValue, _ path: String) throws -> JinjaValue {
        var x = v
        for part in path.split(separator: ".", omittingEmptySubsequences: false) {
            if x.isUndefined { return x }
            if let i = Int(part) { x = try item(x, .int(i)) } else { x = try item(x, .string(String(part))) }
        }
        return x
    }

    private static func sortValues(_ items: [JinjaValue], key: (JinjaValue) throws -> JinjaValue, caseSensitive: Bool, reverse: Bool) throws -> [JinjaValue] {
        let keyed = try items.map { x -> (JinjaValue, JinjaValue) in
            var k = try key(x)
            if !caseSensitive, case let .string(s) = k { k = .string(s.lowercased()) }
            return (k, x)
        }
        var failure: Error?
        // A stable sort (Python's sort is stable).
        let sorted = keyed.enumerated().sorted { l, r in
            do {
                if try less(l.element.0, r.element.0) { return !reverse }
                if try less(r.element.0, l.element.0) { return reverse }
            } catch { failure = error }
            return l.offset < r.offset
        }
        if let failure { throw failure }
        return sorted.map(\.element.1)
    }

    /// Python's `json.dumps` (as transformers' `tojson` filter calls it).
    static func json(_ v: JinjaValue, indent: String?, level: Int, itemSep: String, keySep: String, sortKeys: Bool, asciiOnly: Bool,
                     into out: inout String) throws {
        func newline(_ l: Int) { if let indent { out += "\n" + String(repeating: indent, count: l) } }
        switch v {
        case .none: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .double(d):
            out += d.isNaN ? "NaN" : d.isInfinite ? (d < 0 ? "-Infinity" : "Infinity") : JinjaValue.pythonFloat(d)
        case let .string(s): jsonString(s, asciiOnly: asciiOnly, into: &out)
        case let .list(l):
            if l.isEmpty { out += "[]"; return }
            out += "["
            for (i, x) in l.enumerated() {
                if i > 0 { out += itemSep }
                newline(level + 1)
                try json(x, indent: indent, level: level + 1, itemSep: itemSep, keySep: keySep, sortKeys: sortKeys, asciiOnly: asciiOnly, into: &out)
            }
            newline(level)
            out += "]"
        case let .dict(d):
            var pairs = d.pairs
            if pairs.isEmpty { out += "{}"; return }
            if sortKeys { pairs.sort { $0.0.unicodeScalars.lexicographicallyPrecedes($1.0.unicodeScalars) } }
            out += "{"
            for (i, (k, x)) in pairs.enumerated() {
                if i > 0 { out += itemSep }
                newline(level + 1)
                jsonString(k, asciiOnly: asciiOnly, into: &out)
                out += keySep
                try json(x, indent: indent, level: level + 1, itemSep: itemSep, keySep: keySep, sortKeys: sortKeys, asciiOnly: asciiOnly, into: &out)
            }
            newline(level)
            out += "}"
        case let .undefined(hint): throw fail("Object of type Undefined is not JSON serializable (\(hint))")
        default: throw fail("Object of type \(v.typeName) is not JSON serializable")
        }
    }

    private static func jsonString(_ s: String, asciiOnly: Bool, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || (asciiOnly && u.value > 0x7E) {
                    if u.value > 0xFFFF {
                        let v = u.value - 0x10000
                        out += String(format: "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
                    } else {
                        out += String(format: "\\u%04x", u.value)
                    }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }

    // MARK: tests

    static func test(_ name: String, _ v: JinjaValue, _ args: [JinjaValue]) throws -> Bool {
        func arg() throws -> JinjaValue {
            guard let a = args.first else { throw fail("the test '\(name)' takes an argument") }
            return a
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": return v.isNone
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "number": return number(v) != nil
        case "string": if case .string = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "iterable":
            switch v {
            case .list, .dict, .string, .undefined: return true
            default: return false
            }
        case "sequence":
            switch v {
            case .list, .dict, .string, .undefined: return true
            default: return false
            }
        case "callable": if case .callable = v { return true } else { return false }
        case "odd", "even":
            guard let i = intValue(v) else { throw fail("the test '\(name)' takes an integer, not \(v.typeName)") }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let i = intValue(v), let n = intValue(try arg()), n != 0 else { throw fail("divisibleby takes integers") }
            return i % n == 0
        case "eq", "equalto", "==": return equal(v, try arg())
        case "ne", "!=": return !equal(v, try arg())
        case "lt", "lessthan", "<": return try less(v, try arg())
        case "le", "<=": return try !less(try arg(), v)
        case "gt", "greaterthan", ">": return try less(try arg(), v)
        case "ge", ">=": return try !less(v, try arg())
        case "in": return try contains(try arg(), v)
        case "sameas":
            let o = try arg()
            switch (v, o) {
            case (.none, .none): return true
            case let (.bool(x), .bool(y)): return x == y
            case let (.namespace(x), .namespace(y)): return x === y
            case let (.callable(x), .callable(y)): return x === y
            default: return false
            }
        case "lower": if case let .string(s) = v { return s == s.lowercased() } else { return false }
        case "upper": if case let .string(s) = v { return s == s.uppercased() } else { return false }
        case "escaped": return false
        case "filter":
            guard case let .string(f) = v else { return false }
            return knownFilters.contains(f)
        case "test":
            guard case let .string(t) = v else { return false }
            return knownTests.contains(t)
        default: throw fail("no test named '\(name)'")
        }
    }

    static let knownFilters: Set<String> = [
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
        "forceescape", "format", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
        "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title",
        "tojson", "trim", "truncate", "unique", "upper", "wordcount",
    ]
    static let knownTests: Set<String> = [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter", "float", "ge",
        "gt", "greaterthan", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none", "number",
        "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper",
    ]
}

extension JinjaValue {
    var isNone: Bool { if case .none = self { return true } else { return false } }
}

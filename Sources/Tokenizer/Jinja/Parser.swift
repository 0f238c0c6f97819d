/// An expression of a Jinja template, with where it starts.
struct JinjaExpr: Sendable {
    indirect enum Kind: Sendable {
        case none, bool(Bool), int(Int), double(Double), string(String)
        case name(String)
        case list([JinjaExpr])
        case dict([(JinjaExpr, JinjaExpr)])
        case attribute(JinjaExpr, String)
        case item(JinjaExpr, JinjaExpr)
        case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
        case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
        case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
        case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
        case not(JinjaExpr)
        case negate(JinjaExpr)
        case plus(JinjaExpr)
        case binary(String, JinjaExpr, JinjaExpr)
        case and(JinjaExpr, JinjaExpr)
        case or(JinjaExpr, JinjaExpr)
        case compare(JinjaExpr, [(String, JinjaExpr)])
        case conditional(then: JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
    }
    let kind: Kind
    let line: Int
    let column: Int
}

/// A statement (node) of a Jinja template.
indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr)
    case forLoop(targets: [String], iterable: JinjaExpr, condition: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode], at: JinjaExpr)
    case ifBlock(branches: [(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode])
    /// `set a = …`, `set a, b = …`.
    case set(targets: [String], value: JinjaExpr)
    /// `set ns.attr = …`.
    case setAttribute(object: JinjaExpr, attribute: String, value: JinjaExpr)
    /// `{% set name %}…{% endset %}`.
    case setBlock(name: String, body: [JinjaNode])
    case macro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode])
    /// `{% call macro(…) %}…{% endcall %}`: the body is the macro's `caller()`.
    case callBlock(call: JinjaExpr, body: [JinjaNode])
    /// `{% filter name(…) %}…{% endfilter %}`.
    case filterBlock(filter: JinjaExpr, body: [JinjaNode])
    case breakLoop, continueLoop
}

/// Parses tokens into nodes with Jinja2's grammar and operator precedence.
struct JinjaParser {
    private let tokens: [JinjaToken]
    private var p = 0

    init(tokens: [JinjaToken]) { self.tokens = tokens }

    private var current: JinjaToken { tokens[p] }
    private func peek(_ n: Int = 1) -> JinjaToken { tokens[min(p + n, tokens.count - 1)] }

    private func fail(_ message: String, _ t: JinjaToken? = nil) -> JinjaError {
        let t = t ?? current
        return JinjaError(.syntax, message, line: t.line, column: t.column)
    }

    private func describe(_ t: JinjaToken) -> String {
        switch t.kind {
        case let .text(s): return "text \(JinjaValue.pythonRepr(String(s.prefix(20))))"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "'}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "'%}'"
        case let .name(n): return "'\(n)'"
        case let .string(s): return "string \(JinjaValue.pythonRepr(s))"
        case let .int(i): return "\(i)"
        case let .float(d): return "\(d)"
        case let .op(o): return "'\(o)'"
        case .eof: return "the end of the template"
        }
    }

    private func isOp(_ o: String, _ t: JinjaToken? = nil) -> Bool {
        if case .op(o) = (t ?? current).kind { return true }
        return false
    }

    private func isName(_ n: String, _ t: JinjaToken? = nil) -> Bool {
        if case .name(n) = (t ?? current).kind { return true }
        return false
    }

    private mutating func expectOp(_ o: String) throws(JinjaError) {
        guard isOp(o) else { throw fail("expected '\(o)', found \(describe(current))") }
        p += 1
    }

    private mutating func expectName() throws(JinjaError) -> String {
        guard case let .name(n) = current.kind else { throw fail("expected a name, found \(describe(current))") }
        p += 1
        return n
    }

    private mutating func expectBlockEnd() throws(JinjaError) {
        guard case .blockEnd = current.kind else { throw fail("expected '%}', found \(describe(current))") }
        p += 1
    }

    // MARK: statements

    mutating func parseTemplate() throws(JinjaError) -> [JinjaNode] {
        try parseBody(until: []).0
    }

    /// Nodes until a block tag named in `until` (whose name is consumed; its `%}` is not) or the end.
    private mutating func parseBody(until: Set<String>) throws(JinjaError) -> ([JinjaNode], String?) {
        var nodes: [JinjaNode] = []
        while true {
            let t = current
            switch t.kind {
            case .eof:
                if !until.isEmpty {
                    throw fail("the template ended inside a block (expected one of: \(until.sorted().joined(separator: ", ")))", t)
                }
                return (nodes, nil)
            case let .text(s):
                nodes.append(.text(s))
                p += 1
            case .variableBegin:
                p += 1
                let e = try parseTuple()
                guard case .variableEnd = current.kind else { throw fail("expected '}}', found \(describe(current))") }
                p += 1
                nodes.append(.output(e))
            case .blockBegin:
                p += 1
                guard case let .name(keyword) = current.kind else { throw fail("expected a tag name, found \(describe(current))") }
                if until.contains(keyword) {
                    p += 1
                    return (nodes, keyword)
                }
                if keyword.hasPrefix("end") || ["elif", "else"].contains(keyword) {
                    throw fail("unexpected '\(keyword)'" + (until.isEmpty ? "" : " (expected one of: \(until.sorted().joined(separator: ", ")))"))
                }
                if let n = try parseStatement(keyword) { nodes.append(n) }
            default:
                throw fail("unexpected \(describe(t))")
            }
        }
    }

    private mutating func parseStatement(_ keyword: String) throws(JinjaError) -> JinjaNode? {
        let start = current
        p += 1
        switch keyword {
        case "for":
            var targets = [try expectName()]
            while isOp(",") { p += 1; targets.append(try expectName()) }
            guard isName("in") else { throw fail("expected 'in' in the for loop, found \(describe(current))") }
            p += 1
            let iterable = try parseOr()
            var condition: JinjaExpr?
            if isName("if") { p += 1; condition = try parseExpression() }
            if isName("recursive") { throw fail("recursive loops are not supported") }
            try expectBlockEnd()
            let (body, end) = try parseBody(until: ["else", "endfor"])
            var otherwise: [JinjaNode] = []
            if end == "else" {
                try expectBlockEnd()
                otherwise = try parseBody(until: ["endfor"]).0
            }
            try expectBlockEnd()
            let at = JinjaExpr(kind: .none, line: start.line, column: start.column)
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body, otherwise: otherwise, at: at)
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try parseTuple()
            var otherwise: [JinjaNode] = []
            while true {
                try expectBlockEnd()
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                if end == "elif" { condition = try parseTuple(); continue }
                if end == "else" {
                    try expectBlockEnd()
                    otherwise = try parseBody(until: ["endif"]).0
                }
                try expectBlockEnd()
                break
            }
            return .ifBlock(branches: branches, otherwise: otherwise)
        case "set":
            let first = try expectName()
            if isOp(".") {
                p += 1
                let attribute = try expectName()
                try expectOp("=")
                let value = try parseTuple()
                try expectBlockEnd()
                return .setAttribute(object: JinjaExpr(kind: .name(first), line: start.line, column: start.column),
                                     attribute: attribute, value: value)
            }
            var targets = [first]
            while isOp(",") { p += 1; targets.append(try expectName()) }
            if isOp("=") {
                p += 1
                let value = try parseTuple()
                try expectBlockEnd()
                return .set(targets: targets, value: value)
            }
            guard targets.count == 1 else { throw fail("expected '=' after the names to set") }
            var filter: JinjaExpr?
            if isOp("|") {
                filter = try parseFilters(JinjaExpr(kind: .name("__block__"), line: start.line, column: start.column))
            }
            try expectBlockEnd()
            var body = try parseBody(until: ["endset"]).0
            try expectBlockEnd()
            if let filter { body = [.filterBlock(filter: filter, body: body)] }
            return .setBlock(name: first, body: body)
        case "macro":
            let name = try expectName()
            try expectOp("(")
            var parameters: [(String, JinjaExpr?)] = []
            while !isOp(")") {
                if !parameters.isEmpty { try expectOp(",") }
                if isOp(")") { break }
                let param = try expectName()
                var value: JinjaExpr?
                if isOp("=") { p += 1; value = try parseExpression() }
                parameters.append((param, value))
            }
            p += 1
            try expectBlockEnd()
            let body = try parseBody(until: ["endmacro"]).0
            try expectBlockEnd()
            return .macro(name: name, parameters: parameters, body: body)
        case "call":
            let call = try parseExpression()
            guard case .call = call.kind else { throw fail("expected a macro call after 'call'", start) }
            try expectBlockEnd()
            let body = try parseBody(until: ["endcall"]).0
            try expectBlockEnd()
            return .callBlock(call: call, body: body)
        case "filter":
            let filter = try parseFilters(JinjaExpr(kind: .name("__block__"), line: start.line, column: start.column), first: true)
            try expectBlockEnd()
            let body = try parseBody(until: ["endfilter"]).0
            try expectBlockEnd()
            return .filterBlock(filter: filter, body: body)
        case "break", "continue":
            try expectBlockEnd()
            return keyword == "break" ? .breakLoop : .continueLoop
        case "generation":
            // transformers' AssistantTracker tag: renders its body.
            try expectBlockEnd()
            let body = try parseBody(until: ["endgeneration"]).0
            try expectBlockEnd()
            return .ifBlock(branches: [(JinjaExpr(kind: .bool(true), line: start.line, column: start.column), body)], otherwise: [])
        default:
            throw fail("unknown tag '\(keyword)'", start)
        }
    }

    // MARK: expressions

    /// An expression, or several separated by commas (a tuple, as a list).
    private mutating func parseTuple() throws(JinjaError) -> JinjaExpr {
        let first = try parseExpression()
        guard isOp(",") else { return first }
        var items = [first]
        while isOp(",") {
            p += 1
            if case .variableEnd = current.kind { break }
            if case .blockEnd = current.kind { break }
            items.append(try parseExpression())
        }
        return JinjaExpr(kind: .list(items), line: first.line, column: first.column)
    }

    mutating func parseExpression() throws(JinjaError) -> JinjaExpr {
        var e = try parseOr()
        while isName("if") {
            p += 1
            let condition = try parseOr()
            var otherwise: JinjaExpr?
            if isName("else") { p += 1; otherwise = try parseExpression() }
            e = JinjaExpr(kind: .conditional(then: e, condition: condition, otherwise: otherwise), line: e.line, column: e.column)
        }
        return e
    }

    private mutating func parseOr() throws(JinjaError) -> JinjaExpr {
        var e = try parseAnd()
        while isName("or") {
            p += 1
            let r = try parseAnd()
            e = JinjaExpr(kind: .or(e, r), line: e.line, column: e.column)
        }
        return e
    }

    private mutating func parseAnd() throws(JinjaError) -> JinjaExpr {
        var e = try parseNot()
        while isName("and") {
            p += 1
            let r = try parseNot()
            e = JinjaExpr(kind: .and(e, r), line: e.line, column: e.column)
        }
        return e
    }

    private mutating func parseNot() throws(JinjaError) -> JinjaExpr {
        if isName("not") {
            let t = current
            p += 1
            return JinjaExpr(kind: .not(try parseNot()), line: t.line, column: t.column)
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws(JinjaError) -> JinjaExpr {
        let e = try parseMath1()
        var ops: [(String, JinjaExpr)] = []
        while true {
            if case let .op(o) = current.kind, ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                p += 1
                ops.append((o, try parseMath1()))
            } else if isName("in") {
                p += 1
                ops.append(("in", try parseMath1()))
            } else if isName("not"), isName("in", peek()) {
                p += 2
                ops.append(("not in", try parseMath1()))
            } else {
                break
            }
        }
        return ops.isEmpty ? e : JinjaExpr(kind: .compare(e, ops), line: e.line, column: e.column)
    }

    private mutating func parseMath1() throws(JinjaError) -> JinjaExpr {
        var e = try parseConcat()
        while case let .op(o) = current.kind, o == "+" || o == "-" {
            p += 1
            let r = try parseConcat()
            e = JinjaExpr(kind: .binary(o, e, r), line: e.line, column: e.column)
        }
        return e
    }

    private mutating func parseConcat() throws(JinjaError) -> JinjaExpr {
        var e = try parseMath2()
        while isOp("~") {
            p += 1
            let r = try parseMath2()
            e = JinjaExpr(kind: .binary("~", e, r), line: e.line, column: e.column)
        }
        return e
    }

    private mutating func parseMath2() throws(JinjaError) -> JinjaExpr {
        var e = try parsePow()
        while case let .op(o) = current.kind, ["*", "/", "//", "%"].contains(o) {
            p += 1
            let r = try parsePow()
            e = JinjaExpr(kind: .binary(o, e, r), line: e.line, column: e.column)
        }
        return e
    }

    private mutating func parsePow() throws(JinjaError) -> JinjaExpr {
        var e = try parseUnary()
        while isOp("**") {
            p += 1
            let r = try parseUnary()
            e = JinjaExpr(kind: .binary("**", e, r), line: e.line, column: e.column)
        }
        return e
    }

    private mutating func parseUnary(withFilter: Bool = true) throws(JinjaError) -> JinjaExpr {
        let t = current
        var e: JinjaExpr
        if isOp("-") {
            p += 1
            e = JinjaExpr(kind: .negate(try parseUnary(withFilter: false)), line: t.line, column: t.column)
        } else if isOp("+") {
            p += 1
            e = JinjaExpr(kind: .plus(try parseUnary(withFilter: false)), line: t.line, column: t.column)
        } else {
            e = try parsePostfix(try parsePrimary())
        }
        return withFilter ? try parseFilters(e) : e
    }

    private mutating func parsePrimary() throws(JinjaError) -> JinjaExpr {
        let t = current
        func make(_ k: JinjaExpr.Kind) -> JinjaExpr { JinjaExpr(kind: k, line: t.line, column: t.column) }
        switch t.kind {
        case let .name(n):
            p += 1
            switch n {
            case "true", "True": return make(.bool(true))
            case "false", "False": return make(.bool(false))
            case "none", "None": return make(.none)
            default: return make(.name(n))
            }
        case var .string(s):
            p += 1
            while case let .string(more) = current.kind { s += more; p += 1 }
            return make(.string(s))
        case let .int(i): p += 1; return make(.int(i))
        case let .float(d): p += 1; return make(.double(d))
        case .op("("):
            p += 1
            if isOp(")") { p += 1; return make(.list([])) }
            let first = try parseExpression()
            if isOp(")") { p += 1; return first }
            var items = [first]
            while isOp(",") {
                p += 1
                if isOp(")") { break }
                items.append(try parseExpression())
            }
            try expectOp(")")
            return make(.list(items))
        case .op("["):
            p += 1
            var items: [JinjaExpr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            p += 1
            return make(.list(items))
        case .op("{"):
            p += 1
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !isOp("}") {
                if !pairs.isEmpty { try expectOp(",") }
                if isOp("}") { break }
                let k = try parseExpression()
                try expectOp(":")
                pairs.append((k, try parseExpression()))
            }
            p += 1
            return make(.dict(pairs))
        default:
            throw fail("expected an expression, found \(describe(t))")
        }
    }

    private mutating func parsePostfix(_ base: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var e = base
        while true {
            let t = current
            func make(_ k: JinjaExpr.Kind) -> JinjaExpr { JinjaExpr(kind: k, line: t.line, column: t.column) }
            if isOp(".") {
                p += 1
                switch current.kind {
                case let .name(n): p += 1; e = make(.attribute(e, n))
                case let .int(i): p += 1; e = make(.item(e, JinjaExpr(kind: .int(i), line: t.line, column: t.column)))
                default: throw fail("expected an attribute name after '.', found \(describe(current))")
                }
            } else if isOp("[") {
                p += 1
                e = try parseSubscript(e, t)
            } else if isOp("(") {
                e = try parseCall(e)
            } else {
                return e
            }
        }
    }

    private mutating func parseSubscript(_ base: JinjaExpr, _ t: JinjaToken) throws(JinjaError) -> JinjaExpr {
        var parts: [JinjaExpr?] = [nil]
        var colons = 0
        while !isOp("]") {
            if isOp(":") {
                colons += 1
                guard colons <= 2 else { throw fail("too many ':' in the subscript") }
                parts.append(nil)
                p += 1
                continue
            }
            guard parts[parts.count - 1] == nil else { throw fail("expected ']' or ':', found \(describe(current))") }
            parts[parts.count - 1] = try parseExpression()
        }
        p += 1
        if colons == 0 {
            guard let index = parts[0] else { throw fail("expected an index inside [ ]", t) }
            return JinjaExpr(kind: .item(base, index), line: t.line, column: t.column)
        }
        while parts.count < 3 { parts.append(nil) }
        return JinjaExpr(kind: .slice(base, parts[0], parts[1], parts[2]), line: t.line, column: t.column)
    }

    private mutating func parseArguments() throws(JinjaError) -> ([JinjaExpr], [(String, JinjaExpr)]) {
        try expectOp("(")
        var args: [JinjaExpr] = []
        var kwargs: [(String, JinjaExpr)] = []
        while !isOp(")") {
            if !args.isEmpty || !kwargs.isEmpty { try expectOp(",") }
            if isOp(")") { break }
            if case let .name(n) = current.kind, isOp("=", peek()) {
                p += 2
                kwargs.append((n, try parseExpression()))
            } else {
                guard kwargs.isEmpty else { throw fail("a positional argument follows a keyword argument") }
                args.append(try parseExpression())
            }
        }
        p += 1
        return (args, kwargs)
    }

    private mutating func parseCall(_ callee: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        let (args, kwargs) = try parseArguments()
        return JinjaExpr(kind: .call(callee, args, kwargs), line: callee.line, column: callee.column)
    }

    /// `| filter(…)`, `is [not] test …` and calls after them. With `first`, the first filter has no `|`.
    private mutating func parseFilters(_ base: JinjaExpr, first: Bool = false) throws(JinjaError) -> JinjaExpr {
        var e = base
        var needBar = !first
        while true {
            let t = current
            if isOp("|") || !needBar {
                if needBar { p += 1 }
                needBar = true
                var name = try expectName()
                while isOp("."), case let .name(n) = peek().kind { p += 2; name += "." + n }
                var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
                if isOp("(") { (args, kwargs) = try parseArguments() }
                e = JinjaExpr(kind: .filter(e, name, args, kwargs), line: t.line, column: t.column)
            } else if isName("is") {
                p += 1
                var negated = false
                if isName("not") { negated = true; p += 1 }
                var name = try expectName()
                while isOp("."), case let .name(n) = peek().kind { p += 2; name += "." + n }
                if name == "none" || name == "true" || name == "false" || name == "True" || name == "False" || name == "None" {
                    name = name.lowercased()
                }
                var args: [JinjaExpr] = []
                if isOp("(") {
                    args = try parseArguments().0
                } else if startsPrimary(current), !isName("else"), !isName("or"), !isName("and") {
                    if isName("is") { throw fail("you cannot chain multiple tests with is") }
                    args = [try parsePostfix(try parsePrimary())]
                }
                e = JinjaExpr(kind: .test(e, name, args, negated: negated), line: t.line, column: t.column)
            } else if isOp("("), case .filter = e.kind {
                e = try parseCall(e)
            } else {
                return e
            }
        }
    }

    private func startsPrimary(_ t: JinjaToken) -> Bool {
        switch t.kind {
        case .name, .string, .int, .float, .op("("), .op("["), .op("{"): return true
        default: return false
        }
    }
}

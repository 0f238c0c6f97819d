/// An error of a Jinja template: a syntax error found when it is parsed, a runtime error while it
/// renders (a type error, an undefined value used), or the template's own `raise_exception(…)`.
/// `line` and `column` (1-based) locate the tag or expression concerned in the template text.
public struct JinjaError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable { case syntax, runtime, raised }
    public let kind: Kind
    public let message: String
    public let line: Int
    public let column: Int

    public init(_ kind: Kind, _ message: String, line: Int, column: Int) {
        self.kind = kind
        self.message = message
        self.line = line
        self.column = column
    }

    public var description: String {
        switch kind {
        case .syntax: return "template syntax error at line \(line), column \(column): \(message)"
        case .runtime: return "template error at line \(line), column \(column): \(message)"
        case .raised: return "the template raised an exception (line \(line), column \(column)): \(message)"
        }
    }
}

/// A lexical token of a Jinja template.
struct JinjaToken: Sendable {
    enum Kind: Sendable, Equatable {
        case text(String)
        case variableBegin, variableEnd, blockBegin, blockEnd
        case name(String), string(String), int(Int), float(Double), op(String)
        case eof
    }
    let kind: Kind
    let line: Int
    let column: Int
}

/// Python's `str.isspace()` for one scalar (what `str.strip()` removes).
func isPythonSpace(_ c: Unicode.Scalar) -> Bool {
    c.properties.isWhitespace || (0x1C...0x1F).contains(c.value)
}

/// Splits template text into tokens as Jinja2's lexer does with the settings transformers'
/// `apply_chat_template` uses: newlines normalised to `\n`, one trailing newline dropped
/// (`keep_trailing_newline=False`), `{%- … -%}` / `{{- … -}}` / `{#- … -#}` strip the whitespace
/// beside them, `trim_blocks` drops the first newline after a block or comment tag, and
/// `lstrip_blocks` drops the spaces and tabs before a block or comment tag that starts a line
/// (`{%+` keeps them, `+%}` keeps the newline). `{% raw %}…{% endraw %}` is text.
struct JinjaLexer {
    let trimBlocks: Bool
    let lstripBlocks: Bool
    private var s: [Unicode.Scalar] = []
    private var lineStarts: [Int] = [0]
    private var out: [JinjaToken] = []

    init(trimBlocks: Bool = true, lstripBlocks: Bool = true) {
        self.trimBlocks = trimBlocks
        self.lstripBlocks = lstripBlocks
    }

    /// 1-based line and column of scalar index `i`.
    private func location(_ i: Int) -> (Int, Int) {
        var lo = 0, hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= i { lo = mid } else { hi = mid - 1 }
        }
        return (lo + 1, i - lineStarts[lo] + 1)
    }

    private func error(_ message: String, at i: Int) -> JinjaError {
        let (l, c) = location(i)
        return JinjaError(.syntax, message, line: l, column: c)
    }

    private mutating func emit(_ kind: JinjaToken.Kind, at i: Int) {
        let (l, c) = location(i)
        out.append(JinjaToken(kind: kind, line: l, column: c))
    }

    private func has(_ literal: String, at i: Int) -> Bool {
        var k = i
        for u in literal.unicodeScalars {
            guard k < s.count, s[k] == u else { return false }
            k += 1
        }
        return true
    }

    mutating func tokenize(_ source: String) throws(JinjaError) -> [JinjaToken] {
        // Newlines normalised (\r\n, \r → \n) and one trailing newline dropped, as Jinja2 does.
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(source.unicodeScalars.count)
        var prevCR = false
        for u in source.unicodeScalars {
            if u == "\r" { scalars.append("\n"); prevCR = true; continue }
            if u == "\n" && prevCR { prevCR = false; continue }
            prevCR = false
            scalars.append(u)
        }
        if scalars.last == "\n" { scalars.removeLast() }
        s = scalars
        lineStarts = [0]
        for (i, u) in s.enumerated() where u == "\n" { lineStarts.append(i + 1) }
        out = []

        var i = 0
        var lineStarting = true
        while i <= s.count {
            // The next tag opening.
            var j = i
            var tag: Unicode.Scalar?
            while j + 1 < s.count {
                if s[j] == "{", s[j + 1] == "{" || s[j + 1] == "%" || s[j + 1] == "#" { tag = s[j + 1]; break }
                j += 1
            }
            guard let tag else {
                if i < s.count { emit(.text(String(String.UnicodeScalarView(s[i...]))), at: i) }
                break
            }
            var text = Array(s[i..<j])
            let modifier: Unicode.Scalar? = j + 2 < s.count ? s[j + 2] : nil
            if modifier == "-" {
                while let last = text.last, isPythonSpace(last) { text.removeLast() }
            } else if modifier != "+", lstripBlocks, tag != "{" {
                let lpos = (text.lastIndex(of: "\n") ?? -1) + 1
                if lpos > 0 || lineStarting, lpos < text.count, text[lpos...].allSatisfy(isPythonSpace) {
                    text.removeSubrange(lpos...)
                }
            }
            if !text.isEmpty { emit(.text(String(String.UnicodeScalarView(text))), at: i) }
            var k = j + 2 + (modifier == "-" || modifier == "+" ? 1 : 0)
            switch tag {
            case "#":
                var e = k
                while e + 1 < s.count, !(s[e] == "#" && s[e + 1] == "}") { e += 1 }
                guard e + 1 < s.count else { throw error("the comment is not closed by #}", at: j) }
                k = afterTagEnd(e + 2, mark: e > j + 2 ? s[e - 1] : nil, block: true)
            case "{":
                emit(.variableBegin, at: j)
                k = try lexExpression(from: k, end: "}", tagStart: j)
                emit(.variableEnd, at: k)
                k = afterTagEnd(k + 2, mark: k > 0 && s[k - 1] == "-" ? "-" : nil, block: false)
            default:
                let begin = out.count
                emit(.blockBegin, at: j)
                k = try lexExpression(from: k, end: "%", tagStart: j)
                emit(.blockEnd, at: k)
                let mark: Unicode.Scalar? = s[k - 1] == "-" || s[k - 1] == "+" ? s[k - 1] : nil
                k = afterTagEnd(k + 2, mark: mark, block: true)
                if out.count == begin + 3, case .name("raw") = out[begin + 1].kind {
                    out.removeSubrange(begin...)
                    k = try lexRaw(from: k, tagStart: j)
                }
            }
            lineStarting = k > 0 && k <= s.count && s[k - 1] == "\n"
            i = k
        }
        emit(.eof, at: s.count)
        return out
    }

    /// Position after a tag's closing (at `end`): `-` skips all whitespace, a block or comment
    /// without `+` skips one newline under trim_blocks.
    private func afterTagEnd(_ end: Int, mark: Unicode.Scalar?, block: Bool) -> Int {
        var k = end
        if mark == "-" {
            while k < s.count, isPythonSpace(s[k]) { k += 1 }
        } else if block, mark != "+", trimBlocks, k < s.count, s[k] == "\n" {
            k += 1
        }
        return k
    }

    /// `{% raw %}` text up to `{% endraw %}`; returns the position after the closing tag.
    private mutating func lexRaw(from start: Int, tagStart: Int) throws(JinjaError) -> Int {
        var j = start
        while j + 1 < s.count {
            if s[j] == "{", s[j + 1] == "%" {
                var k = j + 2
                let open: Unicode.Scalar? = k < s.count && (s[k] == "-" || s[k] == "+") ? s[k] : nil
                if open != nil { k += 1 }
                while k < s.count, isPythonSpace(s[k]) { k += 1 }
                if has("endraw", at: k) {
                    k += 6
                    while k < s.count, isPythonSpace(s[k]) { k += 1 }
                    var mark: Unicode.Scalar?
                    if k < s.count, s[k] == "-" || s[k] == "+" { mark = s[k]; k += 1 }
                    if has("%}", at: k) {
                        var text = Array(s[start..<j])
                        if open == "-" { while let last = text.last, isPythonSpace(last) { text.removeLast() } }
                        if !text.isEmpty { emit(.text(String(String.UnicodeScalarView(text))), at: start) }
                        return afterTagEnd(k + 2, mark: mark, block: true)
                    }
                }
            }
            j += 1
        }
        throw error("{% raw %} is not closed by {% endraw %}", at: tagStart)
    }

    /// Lexes expression tokens from `k` up to the tag's closing (`}}` for `end == "}"`, `%}` for
    /// `"%"`, outside brackets); returns the closing's position (a `-`/`+` before it is consumed).
    private mutating func lexExpression(from start: Int, end: Unicode.Scalar, tagStart: Int) throws(JinjaError) -> Int {
        var k = start
        var depth: [Unicode.Scalar] = []
        while true {
            while k < s.count, isPythonSpace(s[k]) { k += 1 }
            guard k < s.count else {
                throw error(end == "}" ? "the expression is not closed by }}" : "the tag is not closed by %}", at: tagStart)
            }
            let c = s[k]
            if depth.isEmpty {
                if c == end, k + 1 < s.count, s[k + 1] == "}" { return k }
                if c == "-" || (c == "+" && end == "%"), k + 2 < s.count, s[k + 1] == end, s[k + 2] == "}" { return k + 1 }
            }
            if c == "'" || c == "\"" {
                var e = k + 1
                var raw: [Unicode.Scalar] = []
                while e < s.count, s[e] != c {
                    if s[e] == "\\", e + 1 < s.count { raw.append(s[e]); e += 1 }
                    raw.append(s[e])
                    e += 1
                }
                guard e < s.count else { throw error("the string is not closed", at: k) }
                emit(.string(Self.unescape(raw)), at: k)
                k = e + 1
                continue
            }
            if c.properties.numericType != nil, ("0"..."9").contains(c) {
                var e = k
                var digits = ""
                while e < s.count, ("0"..."9").contains(s[e]) || s[e] == "_" {
                    if s[e] != "_" { digits.unicodeScalars.append(s[e]) }
                    e += 1
                }
                var isFloat = false
                let afterDot: Bool
                if case .op(".")? = out.last?.kind { afterDot = true } else { afterDot = false }
                if !afterDot, e + 1 < s.count, s[e] == ".", ("0"..."9").contains(s[e + 1]) {
                    isFloat = true
                    digits += "."
                    e += 1
                    while e < s.count, ("0"..."9").contains(s[e]) || s[e] == "_" {
                        if s[e] != "_" { digits.unicodeScalars.append(s[e]) }
                        e += 1
                    }
                }
                if !afterDot, e < s.count, s[e] == "e" || s[e] == "E" {
                    var x = e + 1
                    var exp = "e"
                    if x < s.count, s[x] == "+" || s[x] == "-" { exp.unicodeScalars.append(s[x]); x += 1 }
                    if x < s.count, ("0"..."9").contains(s[x]) {
                        while x < s.count, ("0"..."9").contains(s[x]) { exp.unicodeScalars.append(s[x]); x += 1 }
                        isFloat = true
                        digits += exp
                        e = x
                    }
                }
                if isFloat {
                    emit(.float(Double(digits) ?? 0), at: k)
                } else {
                    guard let v = Int(digits) else { throw error("the integer \(digits) is too large", at: k) }
                    emit(.int(v), at: k)
                }
                k = e
                continue
            }
            if c == "_" || c.properties.isAlphabetic {
                var e = k
                while e < s.count, s[e] == "_" || s[e].properties.isAlphabetic || ("0"..."9").contains(s[e]) { e += 1 }
                emit(.name(String(String.UnicodeScalarView(s[k..<e]))), at: k)
                k = e
                continue
            }
            var matched: String?
            for op in Self.operators where has(op, at: k) { matched = op; break }
            guard let op = matched else { throw error("unexpected character '\(Character(c))'", at: k) }
            switch op {
            case "(", "[", "{": depth.append(c)
            case ")", "]", "}":
                let want: Unicode.Scalar = op == ")" ? "(" : op == "]" ? "[" : "{"
                guard depth.last == want else { throw error("unexpected '\(op)'", at: k) }
                depth.removeLast()
            default: break
            }
            emit(.op(op), at: k)
            k += op.unicodeScalars.count
        }
    }

    private static let operators = ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=",
                                    "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"]

    /// Python's `unicode-escape` decoding of a string literal's body (unknown escapes kept).
    static func unescape(_ raw: [Unicode.Scalar]) -> String {
        var out = String.UnicodeScalarView()
        var i = 0
        func hex(_ n: Int) -> Unicode.Scalar? {
            guard i + 1 + n <= raw.count else { return nil }
            let digits = String(String.UnicodeScalarView(raw[(i + 1)...(i + n)]))
            guard let v = UInt32(digits, radix: 16) else { return nil }
            return Unicode.Scalar(v)
        }
        while i < raw.count {
            let c = raw[i]
            guard c == "\\", i + 1 < raw.count else { out.append(c); i += 1; continue }
            i += 1
            let e = raw[i]
            switch e {
            case "\\", "'", "\"": out.append(e); i += 1
            case "n": out.append("\n"); i += 1
            case "t": out.append("\t"); i += 1
            case "r": out.append("\r"); i += 1
            case "a": out.append("\u{07}"); i += 1
            case "b": out.append("\u{08}"); i += 1
            case "f": out.append("\u{0C}"); i += 1
            case "v": out.append("\u{0B}"); i += 1
            case "\n": i += 1
            case "x", "u", "U":
                let n = e == "x" ? 2 : e == "u" ? 4 : 8
                if let v = hex(n) { out.append(v); i += 1 + n } else { out.append("\\"); out.append(e); i += 1 }
            case "0"..."7":
                var v: UInt32 = 0, n = 0
                while n < 3, i < raw.count, ("0"..."7").contains(raw[i]) { v = v * 8 + raw[i].value - 48; i += 1; n += 1 }
                out.append(Unicode.Scalar(v)!)
            default: out.append("\\"); out.append(e); i += 1
            }
        }
        return String(out)
    }
}

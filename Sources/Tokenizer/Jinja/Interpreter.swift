import Foundation

/// A parsed Jinja template, rendered as Jinja2 renders it in transformers' `apply_chat_template`
/// (an `ImmutableSandboxedEnvironment` with `trim_blocks` and `lstrip_blocks`, the `loopcontrols`
/// extension, its `tojson`, `raise_exception`, `strftime_now`, `namespace` and `dict` globals).
///
/// Supported: `{{ }}`, `{% %}`, `{# #}`, whitespace control, `for` (tuple targets, `if` filter,
/// `else`, `loop.*`, `break`/`continue`), `if`/`elif`/`else`, `set` (names, tuples, `ns.attr`,
/// blocks), `macro`/`call`, `filter` blocks, `raw`, `generation`; Python's operators, literals,
/// slicing and the string/dict/list methods templates call; Jinja2's filters and tests. Not
/// supported: `include`/`extends`/`import`/`block` and recursive loops (templates carry none).
///
/// Immutable after parsing; any thread.
public struct JinjaTemplate: Sendable {
    public let source: String
    let nodes: [JinjaNode]

    /// Parses `source`. - Throws: `JinjaError` (`.syntax`) naming the line and column.
    public init(_ source: String) throws(JinjaError) {
        self.source = source
        var lexer = JinjaLexer()
        var parser = JinjaParser(tokens: try lexer.tokenize(source))
        nodes = try parser.parseTemplate()
    }

    /// Renders with `context` as the template's variables (on top of the globals).
    /// - Throws: `JinjaError`: `.raised` for the template's `raise_exception(…)`, `.runtime` for an
    ///   error while rendering (a type error, an undefined value used), each naming the line and column.
    public func render(_ context: [String: JinjaValue]) throws(JinjaError) -> String {
        let globals = JinjaScope(parent: nil)
        globals.vars = JinjaBuiltins.globals()
        let scope = JinjaScope(parent: globals)
        scope.vars = context
        var out = ""
        do {
            _ = try JinjaInterpreter().exec(nodes, scope, into: &out)
        } catch let e as JinjaError {
            throw e
        } catch {
            throw JinjaError(.runtime, "\(error)", line: 1, column: 1)
        }
        return out
    }
}

/// A variable scope: the template's, a loop body's, a macro call's.
final class JinjaScope {
    var vars: [String: JinjaValue] = [:]
    let parent: JinjaScope?
    init(parent: JinjaScope?) { self.parent = parent }

    func lookup(_ name: String) -> JinjaValue? {
        var s: JinjaScope? = self
        while let c = s {
            if let v = c.vars[name] { return v }
            s = c.parent
        }
        return nil
    }
}

/// An error of a builtin, located by the expression that called it.
struct JinjaFailure: Error { let message: String }
/// `raise_exception(message)`, located by the call.
struct JinjaRaised: Error { let message: String }

struct JinjaInterpreter {
    func exec(_ nodes: [JinjaNode], _ scope: JinjaScope, into out: inout String) throws -> FlowResult {
        for node in nodes {
            let f = try exec(node, scope, into: &out)
            if f != .normal { return f }
        }
        return .normal
    }

    enum FlowResult { case normal, breakLoop, continueLoop }

    private func exec(_ node: JinjaNode, _ scope: JinjaScope, into out: inout String) throws -> FlowResult {
        switch node {
        case let .text(s):
            out += s
        case let .output(e):
            out += try eval(e, scope).text
        case let .ifBlock(branches, otherwise):
            for (condition, body) in branches where try eval(condition, scope).truthy {
                return try exec(body, scope, into: &out)
            }
            return try exec(otherwise, scope, into: &out)
        case let .forLoop(targets, iterable, condition, body, otherwise, at):
            let seq = try located(at) { try JinjaBuiltins.iterate(try eval(iterable, scope)) }
            var items: [JinjaValue] = []
            if let condition {
                let probe = JinjaScope(parent: scope)
                for item in seq {
                    try located(at) { try bind(targets, item, probe) }
                    if try eval(condition, probe).truthy { items.append(item) }
                }
            } else {
                items = seq
            }
            if items.isEmpty { return try exec(otherwise, scope, into: &out) }
            let loopScope = JinjaScope(parent: scope)
            let n = items.count
            for (i, item) in items.enumerated() {
                try located(at) { try bind(targets, item, loopScope) }
                var loop = JinjaDict()
                loop["index"] = .int(i + 1)
                loop["index0"] = .int(i)
                loop["revindex"] = .int(n - i)
                loop["revindex0"] = .int(n - i - 1)
                loop["first"] = .bool(i == 0)
                loop["last"] = .bool(i == n - 1)
                loop["length"] = .int(n)
                loop["depth"] = .int(1)
                loop["depth0"] = .int(0)
                loop["previtem"] = i > 0 ? items[i - 1] : .undefined(hint: "there is no previous item")
                loop["nextitem"] = i < n - 1 ? items[i + 1] : .undefined(hint: "there is no next item")
                loop["cycle"] = .callable(JinjaCallable("loop.cycle") { args, _ in
                    guard !args.isEmpty else { throw JinjaFailure(message: "no items for cycling given") }
                    return args[i % args.count]
                })
                loopScope.vars["loop"] = .dict(loop)
                if try exec(body, loopScope, into: &out) == .breakLoop { break }
            }
        case let .set(targets, value):
            let v = try eval(value, scope)
            try located(value) { try bind(targets, v, scope) }
        case let .setAttribute(object, attribute, value):
            let target = try eval(object, scope)
            guard case let .namespace(ns) = target else {
                throw JinjaError(.runtime, "cannot assign attribute '\(attribute)' on a \(target.typeName) (only on a namespace())",
                                 line: object.line, column: object.column)
            }
            let v = try eval(value, scope)
            try located(object) { try JinjaBuiltins.checkNamespaceName(attribute) }
            ns.storage[attribute] = v
        case let .setBlock(name, body):
            var s = ""
            _ = try exec(body, scope, into: &s)
            scope.vars[name] = .string(s)
        case let .macro(name, parameters, body):
            scope.vars[name] = .callable(makeMacro(name, parameters, body, scope))
        case let .callBlock(call, body):
            guard case let .call(calleeExpr, argExprs, kwargExprs) = call.kind else { break }
            let callee = try eval(calleeExpr, scope)
            let args = try argExprs.map { try eval($0, scope) }
            var kwargs = try kwargExprs.map { ($0.0, try eval($0.1, scope)) }
            kwargs.append(("caller", .callable(JinjaCallable("caller") { _, _ in
                var s = ""
                _ = try self.exec(body, scope, into: &s)
                return .string(s)
            })))
            out += try located(call) { try JinjaBuiltins.call(callee, args, kwargs) }.text
        case let .filterBlock(filter, body):
            var s = ""
            _ = try exec(body, scope, into: &s)
            let inner = JinjaScope(parent: scope)
            inner.vars["__block__"] = .string(s)
            out += try eval(filter, inner).text
        case .breakLoop:
            return .breakLoop
        case .continueLoop:
            return .continueLoop
        }
        return .normal
    }

    private func bind(_ targets: [String], _ value: JinjaValue, _ scope: JinjaScope) throws {
        if targets.count == 1 { scope.vars[targets[0]] = value; return }
        let items = try JinjaBuiltins.iterate(value)
        guard items.count == targets.count else {
            throw JinjaFailure(message: items.count > targets.count
                ? "too many values to unpack (expected \(targets.count))"
                : "not enough values to unpack (expected \(targets.count), got \(items.count))")
        }
        for (t, v) in zip(targets, items) { scope.vars[t] = v }
    }

    private func makeMacro(_ name: String, _ parameters: [(String, JinjaExpr?)], _ body: [JinjaNode], _ defining: JinjaScope) -> JinjaCallable {
        JinjaCallable(name) { args, kwargs in
            let s = JinjaScope(parent: defining)
            var kw = kwargs
            for (i, (param, def)) in parameters.enumerated() {
                if i < args.count {
                    s.vars[param] = args[i]
                } else if let j = kw.firstIndex(where: { $0.0 == param }) {
                    s.vars[param] = kw[j].1
                    kw.remove(at: j)
                } else if let def {
                    s.vars[param] = try self.eval(def, s)
                } else {
                    s.vars[param] = .undefined(hint: "'\(param)' is undefined (macro '\(name)' called without it)")
                }
            }
            s.vars["varargs"] = .list(Array(args.dropFirst(parameters.count)))
            if let j = kw.firstIndex(where: { $0.0 == "caller" }) {
                s.vars["caller"] = kw[j].1
                kw.remove(at: j)
            }
            var extra = JinjaDict()
            for (k, v) in kw { extra[k] = v }
            s.vars["kwargs"] = .dict(extra)
            var out = ""
            _ = try self.exec(body, s, into: &out)
            return .string(out)
        }
    }

    /// Runs `body`, turning a builtin's failure into a `JinjaError` at `e`.
    private func located<T>(_ e: JinjaExpr, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let f as JinjaFailure {
            throw JinjaError(.runtime, f.message, line: e.line, column: e.column)
        } catch let r as JinjaRaised {
            throw JinjaError(.raised, r.message, line: e.line, column: e.column)
        }
    }

    // MARK: expressions

    func eval(_ e: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        try located(e) { try evalInner(e, scope) }
    }

    private func evalInner(_ e: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        switch e.kind {
        case .none: return .none
        case let .bool(b): return .bool(b)
        case let .int(i): return .int(i)
        case let .double(d): return .double(d)
        case let .string(s): return .string(s)
        case let .name(n): return scope.lookup(n) ?? .undefined(hint: "'\(n)' is undefined")
        case let .list(items): return .list(try items.map { try eval($0, scope) })
        case let .dict(pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                let key = try eval(k, scope)
                guard case let .string(ks) = key else {
                    throw JinjaError(.runtime, "dict keys must be strings here, got \(key.typeName)", line: k.line, column: k.column)
                }
                d[ks] = try eval(v, scope)
            }
            return .dict(d)
        case let .attribute(base, name):
            return try JinjaBuiltins.attribute(try eval(base, scope), name)
        case let .item(base, index):
            return try JinjaBuiltins.item(try eval(base, scope), try eval(index, scope))
        case let .slice(base, start, stop, step):
            return try JinjaBuiltins.slice(try eval(base, scope), start.map { try eval($0, scope) },
                                           stop.map { try eval($0, scope) }, step.map { try eval($0, scope) })
        case let .call(callee, argExprs, kwargExprs):
            let f = try eval(callee, scope)
            let args = try argExprs.map { try eval($0, scope) }
            let kwargs = try kwargExprs.map { ($0.0, try eval($0.1, scope)) }
            return try JinjaBuiltins.call(f, args, kwargs)
        case let .filter(base, name, argExprs, kwargExprs):
            let v = try eval(base, scope)
            let args = try argExprs.map { try eval($0, scope) }
            let kwargs = try kwargExprs.map { ($0.0, try eval($0.1, scope)) }
            return try JinjaBuiltins.filter(name, v, args, kwargs)
        case let .test(base, name, argExprs, negated):
            let v = try eval(base, scope)
            let args = try argExprs.map { try eval($0, scope) }
            let r = try JinjaBuiltins.test(name, v, args)
            return .bool(negated ? !r : r)
        case let .not(x): return .bool(!(try eval(x, scope).truthy))
        case let .negate(x): return try JinjaBuiltins.binary("-", .int(0), try eval(x, scope))
        case let .plus(x): return try JinjaBuiltins.binary("+", .int(0), try eval(x, scope))
        case let .and(a, b):
            let l = try eval(a, scope)
            return l.truthy ? try eval(b, scope) : l
        case let .or(a, b):
            let l = try eval(a, scope)
            return l.truthy ? l : try eval(b, scope)
        case let .binary(op, a, b):
            return try JinjaBuiltins.binary(op, try eval(a, scope), try eval(b, scope))
        case let .compare(first, ops):
            var left = try eval(first, scope)
            for (op, rightExpr) in ops {
                let right = try eval(rightExpr, scope)
                guard try JinjaBuiltins.compare(op, left, right) else { return .bool(false) }
                left = right
            }
            return .bool(true)
        case let .conditional(then, condition, otherwise):
            if try eval(condition, scope).truthy { return try eval(then, scope) }
            return try otherwise.map { try eval($0, scope) } ?? .undefined(hint: "the conditional expression had no else branch")
        }
    }
}

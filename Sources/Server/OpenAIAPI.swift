import Foundation
import Tokenizer
import Wire

/// The OpenAI-compatible HTTP API (`selm serve --http HOST:PORT`), on the HTTP transport
/// (`HTTPTransport.swift`) and the server's own loop:
///
/// - `POST /v1/completions`, `POST /v1/chat/completions`: the JSON body becomes a Wire
///   `GenerateRequest` (`OpenAIRequest`), checked by Wire's own rules (`GenerateRequest.check`),
///   then run exactly as a socket Generate is — `runOnEngine`: tokenized on the thread pool by the
///   same `PromptEncoder` (chat messages through the model's chat template), submitted to the same
///   engine and admission queue under the same limits, bound to the current weight version. Its
///   replies (GenerateChunk, SampleResult, GenerateDone, Error) come back through `send`, which
///   hands them to `httpDeliver`; `APIExchange` turns them into OpenAI's JSON (or server-sent
///   events with `stream: true`, ended by `data: [DONE]`). A client that disconnects cancels its
///   generation (the connection's close cancels its requests, as for a socket).
/// - `GET /v1/models`: the served model. `GET /health`: 200 while serving, 503 otherwise.
/// - Every reply says which weight version produced it: `"selm": {"version": N}` at the top and
///   `"selm": {"version", "first_version"}` per choice, and `system_fingerprint: "selm-vN"`.
/// - With `--auth-token-file`, every path but `/health` wants `Authorization: Bearer <token>`.
/// - Errors: `{"error": {"message", "type", "param", "code"}}` with the status of `APIError`.
///
/// Loop thread only.
extension SelmServer {
    static let apiRoutes: [String: String] = [
        "/v1/completions": "POST", "/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET",
    ]

    func handleAPI(_ conn: Connection, _ h: HTTPSession, _ r: HTTPRequest) {
        let path = r.path
        if path != "/health", let token = config.authToken, !constantTimeEqual(r.bearerToken ?? "", token) {
            metrics.countRequest("http", outcome: "unauthenticated")
            return httpError(conn, h, APIError(status: 401, message: r.bearerToken == nil
                ? "missing the auth token: send Authorization: Bearer <token>" : "wrong auth token", code: "invalid_api_key"),
                             headers: [("WWW-Authenticate", "Bearer realm=\"selm\"")])
        }
        guard let method = Self.apiRoutes[path] else {
            metrics.countRequest("http", outcome: "not_found")
            return httpError(conn, h, APIError(status: 404, message: "no route \(r.method) \(path); the API serves "
                                               + Self.apiRoutes.map { "\($0.value) \($0.key)" }.sorted().joined(separator: ", ")))
        }
        guard r.method == method || (method == "GET" && r.method == "HEAD") else {
            metrics.countRequest("http", outcome: "method_not_allowed")
            return httpError(conn, h, APIError(status: 405, message: "\(path) takes \(method), not \(r.method)"),
                             headers: [("Allow", method == "GET" ? "GET, HEAD" : method)])
        }
        let headOnly = r.method == "HEAD"
        switch path {
        case "/health":
            let (ok, status) = engine == nil ? (false, "no generation engine") : state == .running ? (true, "ok") : (false, "shutting down")
            metrics.countRequest("http_health", outcome: ok ? "ok" : "unavailable")
            httpRespond(conn, h, status: ok ? 200 : 503, body: JSONValue.object([
                ("status", .string(status)), ("model", .string(bundle.name)), ("selm", .object([("version", .number(currentPolicyVersion))])),
            ]).bytes, headOnly: headOnly)
        case "/v1/models":
            metrics.countRequest("http_models", outcome: "ok")
            httpRespond(conn, h, status: 200, body: JSONValue.object([
                ("object", .string("list")),
                ("data", .array([.object([
                    ("id", .string(bundle.name)), ("object", .string("model")), ("created", .number(Int(startTime.timeIntervalSince1970))),
                    ("owned_by", .string("selm")), ("max_model_len", .number(bundle.model.config.contextLength)),
                    ("selm", .object([("version", .number(currentPolicyVersion))])),
                ])])),
            ]).bytes, headOnly: headOnly)
        default:
            startGeneration(conn, h, r, kind: path == "/v1/completions" ? .completion : .chat)
        }
    }

    /// The names a request's `model` may use: the served name (as `/v1/models` and Hello report
    /// it), the model's file or directory name, and that without `.gguf`.
    var servedModelNames: [String] {
        let file = URL(fileURLWithPath: bundle.path).lastPathComponent
        return [bundle.name, file, file.hasSuffix(".gguf") ? String(file.dropLast(5)) : file]
    }

    /// A completion or chat completion: parsed, checked by Wire's rules, then the socket protocol's
    /// Generate path (`runOnEngine`).
    private func startGeneration(_ conn: Connection, _ h: HTTPSession, _ r: HTTPRequest, kind: OpenAIRequest.Kind) {
        let type = kind == .completion ? "http_completions" : "http_chat_completions"
        let request: OpenAIRequest
        do throws(APIError) {
            guard let body = JSONValue.parseObject(r.body) else {
                throw APIError(status: 400, message: "the request body is not a JSON object", code: "invalid_json")
            }
            request = try OpenAIRequest(kind: kind, body: body, modelNames: servedModelNames)
        } catch {
            metrics.countRequest(type, outcome: error.status == 404 ? "not_found" : "invalid_argument")
            return httpError(conn, h, error)
        }
        let id = h.nextRequestID
        h.nextRequestID += 1
        let g = request.generate
        h.exchange = APIExchange(request: request, requestID: id, model: bundle.name, tokenizer: bundle.tokenizerIfAny)
        runOnEngine(conn, id: id, type: type, { encoder throws(ServerError) in try Edge.generationRequest(g, encoder: encoder) },
                    submit: { engine, request in try engine.submit(request) })
    }

    /// Loop thread (`send`): a reply to one of an HTTP connection's requests. Replies of the request
    /// being answered become its response (or its events); anything else has no request to go to.
    func httpDeliver(_ conn: Connection, _ h: HTTPSession, _ envelope: Envelope<ServerMessage>) {
        guard let ex = h.exchange, envelope.id == ex.requestID else { return }
        switch envelope.body {
        case .generateChunk(let c):
            guard ex.request.stream else { return }
            startStreamIfNeeded(conn, h, ex)
            let choice = ex.choice(c.promptIndex, c.sampleIndex)
            ex.streamed[choice, default: ""] += c.textDelta
            httpStreamWrite(conn, h, sse(ex.chunk(choice: choice, text: c.textDelta, ids: c.tokenIDs, logprobs: c.logprobs, top: c.topLogprobs)))
        case .sampleResult(let s):
            let choice = ex.choice(s.promptIndex, s.sampleIndex)
            ex.samples[choice] = s
            guard ex.request.stream else { return }
            startStreamIfNeeded(conn, h, ex)
            // Text the chunks have not carried (a stop string's held-back prefix), if any.
            let sent = ex.streamed[choice] ?? ""
            if s.text.count > sent.count, s.text.hasPrefix(sent) {
                let rest = String(s.text.dropFirst(sent.count))
                ex.streamed[choice] = s.text
                httpStreamWrite(conn, h, sse(ex.chunk(choice: choice, text: rest, ids: [], logprobs: [], top: [])))
            }
            httpStreamWrite(conn, h, sse(ex.finishChunk(choice: choice, s)))
        case .generateDone(let d):
            if ex.request.stream {
                startStreamIfNeeded(conn, h, ex)
                if ex.request.includeUsage { httpStreamWrite(conn, h, sse(ex.usageChunk(d))) }
                httpStreamWrite(conn, h, "data: [DONE]\n\n")
                httpEndStream(conn, h, deferred: true)
            } else {
                httpRespond(conn, h, status: 200, body: ex.response(d).bytes, deferred: true)
            }
        case .error(let e):
            let error = ex.apiError(e)
            if h.streaming {
                httpStreamWrite(conn, h, sse(error.json) + "data: [DONE]\n\n")
                httpEndStream(conn, h, deferred: true)
            } else {
                httpError(conn, h, error, deferred: true)
            }
        default:
            break
        }
    }

    private func startStreamIfNeeded(_ conn: Connection, _ h: HTTPSession, _ ex: APIExchange) {
        guard !h.streaming else { return }
        httpStartStream(conn, h)
        if ex.request.kind == .chat {
            for choice in 0..<ex.choices { httpStreamWrite(conn, h, sse(ex.roleChunk(choice: choice))) }
        }
    }

    private func sse(_ v: JSONValue) -> String { "data: " + v.text + "\n\n" }
}

// MARK: - Errors

/// An HTTP API error: its status and OpenAI's error object
/// (`{"error": {"message", "type", "param", "code"}}`).
struct APIError: Error {
    var status: Int
    var message: String
    /// The request field at fault, by its OpenAI name ("temperature", "messages[1].role").
    var param: String?
    /// A short machine-readable code: the socket protocol's error code in lowercase
    /// ("invalid_argument", "out_of_range") or an HTTP-specific one ("invalid_json", "invalid_api_key",
    /// "model_not_found", "malformed_http", "unsupported_parameter").
    var code: String?

    init(status: Int, message: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.param = param
        self.code = code
    }

    /// A 400 naming `param`.
    static func field(_ param: String, _ reason: String, code: String = "invalid_argument") -> APIError {
        APIError(status: 400, message: "\(param): \(reason)", param: param, code: code)
    }

    /// OpenAI's error type for the status.
    var type: String {
        switch status {
        case 401: "authentication_error"
        case 403: "permission_error"
        case 404: "not_found_error"
        case 429: "rate_limit_error"
        case 500: "server_error"
        case 503: "service_unavailable_error"
        default: "invalid_request_error"
        }
    }

    var json: JSONValue {
        .object([("error", .object([
            ("message", .string(message)), ("type", .string(type)),
            ("param", param.map { .string($0) } ?? .null), ("code", code.map { .string($0) } ?? .null),
        ]))])
    }

    /// The HTTP status of a socket-protocol error code: the request's fault 400 (a value past a
    /// model limit too — e.g. a prompt longer than the context, max_tokens beyond the KV pool),
    /// load 429 / 503, the server's fault 500.
    static func status(of reply: ErrorReply) -> Int {
        switch reply.code {
        case .invalidArgument, .outOfRange, .malformed, .unknownBody, .unsupportedVersion, .unspecified, .unrecognized: 400
        case .unauthenticated: 401
        case .permissionDenied, .failedPrecondition: 403
        case .notFound: 404
        case .frameTooLarge: 413
        // A field's value beyond what the server can hold is the request's fault; without one, load.
        case .resourceExhausted: reply.field.isEmpty ? 429 : 400
        case .unavailable, .cancelled: 503
        case .internal: 500
        }
    }
}

// MARK: - Requests

/// An OpenAI completion or chat-completion request as a Wire `GenerateRequest`, plus what the
/// reply needs (streaming, usage, logprobs). Pure; any thread.
///
/// Fields: `model` (optional; when given it must name the served model — as `/v1/models` lists
/// it, or its file or directory name with or without `.gguf` — else 404 `model_not_found`), `prompt` (completions: a string, a list of strings, a
/// list of token ids or a list of lists of them) or `messages` (chat: `role` + `content`, a string
/// or a list of `{"type": "text"}` parts), `n`, `max_tokens` (chat: or `max_completion_tokens`),
/// `temperature`, `top_p`, `seed`, `stop` (a string or a list), `presence_penalty`,
/// `frequency_penalty`, `logprobs` (completions: the number of alternatives, 0…20; chat: a boolean,
/// with `top_logprobs` 0…20), `stream`, `stream_options.include_usage`; vLLM's `top_k`, `min_p`,
/// `repetition_penalty`, `ignore_eos`. Refused (400 `unsupported_parameter`): `echo`, `suffix`,
/// `best_of` ≠ `n`, a non-empty `logit_bias`, and for chat `tools`, `functions`, a `tool_choice`
/// other than "none", a `response_format` other than text. Other fields (`user`, …) are ignored.
struct OpenAIRequest {
    enum Kind { case completion, chat }
    let kind: Kind
    var generate = GenerateRequest()
    var stream = false
    var includeUsage = false
    /// Report log-probabilities.
    var logprobs = false
    /// The completion's `prompt` was a list (errors then name `prompt[i]`).
    var promptIsList = false

    /// - Parameter modelNames: the names `model` may take: the served name first (`/v1/models`),
    ///   then aliases (the model's file or directory name, with and without `.gguf`).
    init(kind: Kind, body: [String: JSONValue], modelNames: [String]) throws(APIError) {
        self.kind = kind
        let f = Fields(body)
        let servedModel = modelNames.first ?? ""
        if let model = try f.string("model"), !modelNames.contains(model) {
            throw APIError(status: 404, message: "the model `\(model)` is not served here; this server serves `\(servedModel)` (GET /v1/models)",
                           param: "model", code: "model_not_found")
        }
        switch kind {
        case .completion:
            guard let prompt = f.value("prompt") else { throw .field("prompt", "is required") }
            generate.prompts = try Self.prompts(prompt, isList: &promptIsList)
            if try f.bool("echo") == true { throw .field("echo", "is not supported", code: "unsupported_parameter") }
            if let s = try f.string("suffix"), !s.isEmpty { throw .field("suffix", "is not supported", code: "unsupported_parameter") }
            if let k = try f.int("logprobs") {
                guard k >= 0 else { throw .field("logprobs", "must be ≥ 0 (got \(k))") }
                logprobs = true
                generate.topLogprobs = UInt32(clamping: k)
            }
        case .chat:
            guard let messages = f.value("messages") else { throw .field("messages", "is required") }
            generate.prompts = [.messages(try Self.messages(messages))]
            if case .array(let tools)? = f.value("tools"), !tools.isEmpty { throw .field("tools", "tool calls are not supported", code: "unsupported_parameter") }
            if f.value("functions") != nil { throw .field("functions", "function calls are not supported", code: "unsupported_parameter") }
            if let choice = f.value("tool_choice"), choice != .string("none") {
                throw .field("tool_choice", "tool calls are not supported", code: "unsupported_parameter")
            }
            if let format = f.value("response_format") {
                guard case .object(let pairs) = format, pairs.first(where: { $0.0 == "type" })?.1 == .string("text") else {
                    throw .field("response_format", "only {\"type\": \"text\"} is supported", code: "unsupported_parameter")
                }
            }
            logprobs = try f.bool("logprobs") ?? false
            if let k = try f.int("top_logprobs") {
                guard k >= 0 else { throw .field("top_logprobs", "must be ≥ 0 (got \(k))") }
                generate.topLogprobs = UInt32(clamping: k)
                if k > 0 { logprobs = true }
            }
        }
        if case .object(let bias)? = f.value("logit_bias"), !bias.isEmpty {
            throw .field("logit_bias", "is not supported", code: "unsupported_parameter")
        }
        if let n = try f.int("n") {
            guard n >= 1 else { throw .field("n", "must be at least 1 (got \(n))") }
            generate.n = UInt32(clamping: n)
        }
        if let bestOf = try f.int("best_of"), bestOf != Int64(generate.n) {
            throw .field("best_of", "is not supported (only best_of = n)", code: "unsupported_parameter")
        }
        let maxTokensField = kind == .chat && f.value("max_tokens") == nil ? "max_completion_tokens" : "max_tokens"
        if let m = try f.int(maxTokensField) {
            guard m >= 1 else { throw .field(maxTokensField, "must be at least 1 (got \(m))") }
            generate.sampling.maxTokens = UInt32(clamping: m)
        }
        generate.sampling.temperature = try f.float("temperature")
        generate.sampling.topP = try f.float("top_p")
        generate.sampling.minP = try f.float("min_p")
        generate.sampling.presencePenalty = try f.float("presence_penalty")
        generate.sampling.frequencyPenalty = try f.float("frequency_penalty")
        generate.sampling.repetitionPenalty = try f.float("repetition_penalty")
        if let k = try f.int("top_k") {
            guard k >= -1 else { throw .field("top_k", "must be ≥ 0, or -1 for no limit (got \(k))") }
            generate.sampling.topK = UInt32(clamping: max(k, 0))
        }
        if let seed = try f.int("seed") { generate.sampling.seed = UInt64(bitPattern: seed) }
        switch f.value("stop") {
        case nil: break
        case .string(let s)?: generate.stop = [s]
        case .array(let list)?:
            generate.stop = try list.enumerated().map { (i, v) throws(APIError) in
                guard case .string(let s) = v else { throw .field("stop[\(i)]", "must be a string, got \(v.typeName)") }
                return s
            }
        case let v?: throw .field("stop", "must be a string or a list of strings, got \(v.typeName)")
        }
        generate.ignoreEOS = try f.bool("ignore_eos") ?? false
        stream = try f.bool("stream") ?? false
        generate.stream = stream
        if let options = f.value("stream_options") {
            guard case .object(let pairs) = options else { throw .field("stream_options", "must be an object, got \(options.typeName)") }
            let o = Fields(Dictionary(pairs, uniquingKeysWith: { a, _ in a }))
            do throws(APIError) { includeUsage = try o.bool("include_usage") ?? false } catch {
                throw .field("stream_options.include_usage", "must be a boolean")
            }
        }
        // Wire's own rules (n ≤ 64, top_logprobs ≤ 20, temperature ≥ 0, top_p ∈ (0, 1], …), once.
        do throws(WireError) { try generate.check() } catch {
            let reply = error.errorReply
            throw APIError(status: 400, message: renamed(reply.message, reply.field), param: openAIName(reply.field), code: reply.code.metricName)
        }
    }

    /// A completion's `prompt`.
    private static func prompts(_ v: JSONValue, isList: inout Bool) throws(APIError) -> [Prompt] {
        switch v {
        case .string(let s): return [.text(s)]
        case .array(let list):
            guard !list.isEmpty else { throw .field("prompt", "must not be an empty list") }
            if list.allSatisfy({ if case .int = $0 { true } else { false } }) { return [.ids(try tokenIDs(list, field: "prompt"))] }
            isList = true
            return try list.enumerated().map { (i, item) throws(APIError) -> Prompt in
                switch item {
                case .string(let s): return .text(s)
                case .array(let ids): return .ids(try tokenIDs(ids, field: "prompt[\(i)]"))
                default: throw .field("prompt[\(i)]", "must be a string or a list of token ids, got \(item.typeName)")
                }
            }
        default:
            throw .field("prompt", "must be a string, a list of strings or a list of token ids, got \(v.typeName)")
        }
    }

    private static func tokenIDs(_ list: [JSONValue], field: String) throws(APIError) -> [UInt32] {
        try list.enumerated().map { (j, v) throws(APIError) -> UInt32 in
            guard case .int(let id) = v, id >= 0, id <= Int64(UInt32.max) else {
                throw .field("\(field)[\(j)]", "must be a token id (an integer ≥ 0), got \(v.typeName)")
            }
            return UInt32(id)
        }
    }

    /// A chat's `messages`.
    private static func messages(_ v: JSONValue) throws(APIError) -> [ChatMessage] {
        guard case .array(let list) = v else { throw .field("messages", "must be a list of messages, got \(v.typeName)") }
        return try list.enumerated().map { (i, m) throws(APIError) -> ChatMessage in
            guard case .object(let pairs) = m else { throw .field("messages[\(i)]", "must be an object, got \(m.typeName)") }
            let f = Fields(Dictionary(pairs, uniquingKeysWith: { a, _ in a }))
            let role: String
            do throws(APIError) { role = try f.string("role") ?? "" } catch { throw .field("messages[\(i)].role", "must be a string") }
            var content = ""
            switch f.value("content") {
            case nil: break
            case .string(let s)?: content = s
            case .array(let parts)?:
                for (j, part) in parts.enumerated() {
                    guard case .object(let p) = part, p.first(where: { $0.0 == "type" })?.1 == .string("text"),
                          case .string(let text)? = p.first(where: { $0.0 == "text" })?.1 else {
                        throw .field("messages[\(i)].content[\(j)]", "only {\"type\": \"text\", \"text\": …} parts are supported",
                                     code: "unsupported_parameter")
                    }
                    content += text
                }
            case let c?: throw .field("messages[\(i)].content", "must be a string or a list of text parts, got \(c.typeName)")
            }
            return ChatMessage(role: role, content: content)
        }
    }

    /// `message` with the Wire field path `field` in it replaced by its OpenAI name.
    func renamed(_ message: String, _ field: String) -> String {
        guard !field.isEmpty, let name = openAIName(field), name != field else { return message }
        return message.replacingOccurrences(of: field, with: name)
    }

    /// The OpenAI name of a Wire field path ("sampling.top_p" → "top_p").
    func openAIName(_ field: String) -> String? {
        if field.isEmpty { return nil }
        if field.hasPrefix("sampling.") {
            let name = String(field.dropFirst("sampling.".count))
            return name == "max_tokens" && kind == .chat ? "max_tokens" : name
        }
        if field == "top_logprobs" { return kind == .completion ? "logprobs" : "top_logprobs" }
        if field.hasPrefix("stop[") { return "stop" }
        if field == "chat" { return "messages" }
        if field.hasPrefix("prompts[") {
            switch kind {
            case .chat:
                // "prompts[0].messages.messages[1].role" → "messages[1].role"
                if let r = field.range(of: ".messages.messages") { return "messages" + field[r.upperBound...] }
                return "messages"
            case .completion:
                guard promptIsList, let close = field.firstIndex(of: "]") else { return "prompt" }
                return "prompt" + field[field.index(field.startIndex, offsetBy: "prompts".count)...close]
            }
        }
        return field
    }
}

/// Typed reads of a JSON object's fields; `null` counts as absent. A field of the wrong type is a
/// 400 naming it.
private struct Fields {
    let o: [String: JSONValue]
    init(_ o: [String: JSONValue]) { self.o = o }

    func value(_ k: String) -> JSONValue? {
        if case .null? = o[k] { return nil }
        return o[k]
    }

    func string(_ k: String) throws(APIError) -> String? {
        guard let v = value(k) else { return nil }
        guard case .string(let s) = v else { throw .field(k, "must be a string, got \(v.typeName)") }
        return s
    }

    func bool(_ k: String) throws(APIError) -> Bool? {
        guard let v = value(k) else { return nil }
        guard case .bool(let b) = v else { throw .field(k, "must be a boolean, got \(v.typeName)") }
        return b
    }

    func int(_ k: String) throws(APIError) -> Int64? {
        switch value(k) {
        case nil: return nil
        case .int(let i)?: return i
        case .double(let d)? where d == d.rounded() && abs(d) < 9e18: return Int64(d)
        case let v?: throw .field(k, "must be an integer, got \(v.typeName)")
        }
    }

    func float(_ k: String) throws(APIError) -> Float? {
        switch value(k) {
        case nil: return nil
        case .int(let i)?: return Float(i)
        case .double(let d)?: return Float(d)
        case let v?: throw .field(k, "must be a number, got \(v.typeName)")
        }
    }
}

// MARK: - Replies

/// One completion or chat completion being answered: collects the samples (or streams them) and
/// writes OpenAI's shapes. Loop thread only.
final class APIExchange: @unchecked Sendable {
    let request: OpenAIRequest
    /// The id under which it runs in the request machinery (`Connection.requests`).
    let requestID: UInt64
    let id: String
    let created = Int(Date().timeIntervalSince1970)
    let model: String
    let tokenizer: Tokenizer?
    let n: Int
    let choices: Int
    var samples: [Int: SampleResult] = [:]
    /// Text streamed so far per choice.
    var streamed: [Int: String] = [:]

    init(request: OpenAIRequest, requestID: UInt64, model: String, tokenizer: Tokenizer?) {
        self.request = request
        self.requestID = requestID
        self.model = model
        self.tokenizer = tokenizer
        n = Int(request.generate.n)
        choices = request.generate.prompts.count * n
        let hex = (0..<12).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        id = (request.kind == .completion ? "cmpl-" : "chatcmpl-") + hex
    }

    /// OpenAI's choice index: prompt by prompt, n samples each.
    func choice(_ promptIndex: UInt32, _ sampleIndex: UInt32) -> Int { Int(promptIndex) * n + Int(sampleIndex) }

    private var object: String { request.kind == .completion ? "text_completion" : "chat.completion" }
    private var chunkObject: String { request.kind == .completion ? "text_completion" : "chat.completion.chunk" }

    /// The complete (non-streamed) reply.
    func response(_ done: GenerateDone) -> JSONValue {
        let list: [JSONValue] = (0..<choices).map { i in
            guard let s = samples[i] else { return .null }
            var c: [(String, JSONValue)] = [("index", .number(i))]
            switch request.kind {
            case .completion:
                c.append(("text", .string(s.text)))
                c.append(("logprobs", request.logprobs ? completionLogprobs(s.tokenIDs, s.logprobs, s.topLogprobs, offset: 0) : .null))
            case .chat:
                c.append(("message", .object([("role", .string("assistant")), ("content", .string(s.text))])))
                c.append(("logprobs", request.logprobs ? chatLogprobs(s.tokenIDs, s.logprobs, s.topLogprobs) : .null))
            }
            c.append(("finish_reason", .string(Self.finishReason(s.finishReason))))
            c.append(("selm", versions(s)))
            return .object(c)
        }
        let version = samples.values.map(\.version).max() ?? 0
        return .object([
            ("id", .string(id)), ("object", .string(object)), ("created", .number(created)), ("model", .string(model)),
            ("system_fingerprint", .string("selm-v\(version)")), ("choices", .array(list)), ("usage", usage(done)),
            ("selm", .object([("version", .number(version))])),
        ])
    }

    /// A streamed chunk of new text (and its tokens' log-probabilities when asked for).
    func chunk(choice: Int, text: String, ids: [UInt32], logprobs: [Float], top: [TopLogprobs]) -> JSONValue {
        var c: [(String, JSONValue)] = [("index", .number(choice))]
        switch request.kind {
        case .completion:
            c.append(("text", .string(text)))
            let offset = (streamed[choice] ?? "").unicodeScalars.count - text.unicodeScalars.count
            c.append(("logprobs", request.logprobs && !ids.isEmpty ? completionLogprobs(ids, logprobs, top, offset: offset) : .null))
        case .chat:
            c.append(("delta", .object([("content", .string(text))])))
            c.append(("logprobs", request.logprobs && !ids.isEmpty ? chatLogprobs(ids, logprobs, top) : .null))
        }
        c.append(("finish_reason", .null))
        return envelope([.object(c)])
    }

    /// The first chunk of a chat choice: the assistant's role.
    func roleChunk(choice: Int) -> JSONValue {
        envelope([.object([("index", .number(choice)), ("delta", .object([("role", .string("assistant")), ("content", .string(""))])),
                           ("logprobs", .null), ("finish_reason", .null)])])
    }

    /// The last chunk of a choice: its finish reason and the versions that produced it.
    func finishChunk(choice: Int, _ s: SampleResult) -> JSONValue {
        var c: [(String, JSONValue)] = [("index", .number(choice))]
        switch request.kind {
        case .completion: c.append(("text", .string("")))
        case .chat: c.append(("delta", .object([])))
        }
        c += [("logprobs", .null), ("finish_reason", .string(Self.finishReason(s.finishReason))), ("selm", versions(s))]
        return envelope([.object(c)], version: s.version)
    }

    /// The chunk with the usage (`stream_options.include_usage`): no choices.
    func usageChunk(_ done: GenerateDone) -> JSONValue {
        guard case .object(var pairs) = envelope([]) else { return .null }
        pairs.append(("usage", usage(done)))
        return .object(pairs)
    }

    private func envelope(_ choices: [JSONValue], version: UInt64? = nil) -> JSONValue {
        var pairs: [(String, JSONValue)] = [("id", .string(id)), ("object", .string(chunkObject)), ("created", .number(created)),
                                            ("model", .string(model))]
        if let version {
            pairs.append(("system_fingerprint", .string("selm-v\(version)")))
            pairs.append(("selm", .object([("version", .number(version))])))
        }
        pairs.append(("choices", .array(choices)))
        return .object(pairs)
    }

    private func usage(_ d: GenerateDone) -> JSONValue {
        .object([("prompt_tokens", .number(d.promptTokens)), ("completion_tokens", .number(d.completionTokens)),
                 ("total_tokens", .number(d.promptTokens + d.completionTokens))])
    }

    private func versions(_ s: SampleResult) -> JSONValue {
        .object([("version", .number(s.version)), ("first_version", .number(s.firstVersion))])
    }

    static func finishReason(_ r: FinishReason) -> String {
        switch r {
        case .eos, .stop: "stop"
        case .length: "length"
        case .cancelled: "abort"
        case .unspecified, .unrecognized: "stop"
        }
    }

    /// A token's text (special tokens as written; a token that is part of a character decodes to
    /// U+FFFD, its `bytes` are then those of U+FFFD too).
    private func text(_ id: UInt32) -> String { tokenizer?.decode([Int32(bitPattern: id)]) ?? "" }

    /// The completions API's (legacy) log-probabilities: `tokens`, `token_logprobs`, `top_logprobs`
    /// (a token → log-probability map per token) and `text_offset` (characters from the start of
    /// the completion).
    private func completionLogprobs(_ ids: [UInt32], _ lps: [Float], _ top: [TopLogprobs], offset: Int) -> JSONValue {
        let tokens = ids.map(text)
        var offsets: [JSONValue] = []
        var at = offset
        for t in tokens {
            offsets.append(.number(at))
            at += t.unicodeScalars.count
        }
        let tops: JSONValue = top.count == ids.count ? .array(top.map { alt in
            var seen = Set<String>()
            var pairs: [(String, JSONValue)] = []
            for (id, lp) in zip(alt.tokenIDs, alt.logprobs) where seen.insert(text(id)).inserted { pairs.append((text(id), .number(lp))) }
            return .object(pairs)
        }) : .null
        return .object([("tokens", .array(tokens.map { .string($0) })), ("token_logprobs", .array(lps.map { .number($0) })),
                        ("top_logprobs", tops), ("text_offset", .array(offsets))])
    }

    /// The chat API's log-probabilities: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
    private func chatLogprobs(_ ids: [UInt32], _ lps: [Float], _ top: [TopLogprobs]) -> JSONValue {
        func entry(_ id: UInt32, _ lp: Float) -> [(String, JSONValue)] {
            let t = text(id)
            return [("token", .string(t)), ("logprob", .number(lp)), ("bytes", .array(t.utf8.map { .number(Int($0)) }))]
        }
        let content: [JSONValue] = zip(ids, lps).enumerated().map { (i, pair) in
            let alts = i < top.count ? zip(top[i].tokenIDs, top[i].logprobs).map { JSONValue.object(entry($0, $1)) } : []
            return .object(entry(pair.0, pair.1) + [("top_logprobs", .array(alts))])
        }
        return .object([("content", .array(content)), ("refusal", .null)])
    }

    /// The API error for a socket-protocol error reply, its field renamed as the request named it.
    func apiError(_ e: ErrorReply) -> APIError {
        APIError(status: APIError.status(of: e), message: request.renamed(e.message, e.field), param: request.openAIName(e.field),
                 code: e.code.metricName)
    }
}

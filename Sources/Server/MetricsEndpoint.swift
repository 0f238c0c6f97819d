import Foundation

/// The Prometheus endpoint (`--metrics host:port`), on the HTTP transport (`HTTPTransport.swift`,
/// Node's http-parser) like the API. `GET /metrics` answers the exposition text (`HEAD` its head);
/// any other path 404, any other method 405, a request head over 32 KiB 431, a request that is not
/// HTTP/1.x 400. With an auth token (`--auth-token-file`) every request must carry
/// `Authorization: Bearer <token>` (compared in constant time), else 401 — Prometheus sends it with
/// `authorization: {type: Bearer, credentials_file: ...}` in the scrape config. One request per
/// connection (the answer carries `Connection: close`); at most 32 connections at once, each closed
/// after 10 s. Loop thread only.
extension SelmServer {
    func handleMetrics(_ conn: Connection, _ h: HTTPSession, _ r: HTTPRequest) {
        if let token = config.authToken, !constantTimeEqual(r.bearerToken ?? "", token) {
            httpError(conn, h, APIError(status: 401, message: "send Authorization: Bearer <the server's auth token>"),
                      headers: [("WWW-Authenticate", "Bearer realm=\"selm\"")])
        } else if r.method != "GET" && r.method != "HEAD" {
            httpError(conn, h, APIError(status: 405, message: "only GET"), headers: [("Allow", "GET, HEAD")])
        } else if r.path != "/metrics" {
            httpError(conn, h, APIError(status: 404, message: "try /metrics"))
        } else {
            let body = metrics.render(liveFigures()) + renderClusterMetrics()
            httpRespond(conn, h, status: 200, body: Array(body.utf8), contentType: "text/plain; version=0.0.4; charset=utf-8",
                        headOnly: r.method == "HEAD")
        }
    }
}

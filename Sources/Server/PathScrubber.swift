import Foundation
import PreferenceLog

/// Rewrites the server's own paths in text meant for a client: a path inside the data directory
/// becomes relative to it (the directory itself "."), the served model's path its file or directory
/// name. Errors from the file system, the learner or the model loader quote absolute paths; clients
/// only ever name paths relative to the data directory, and need nothing else. Immutable; any thread.
struct PathScrubber: Sendable {
    /// (absolute prefix, replacement), longest prefix first.
    let replacements: [(String, String)]

    init(dataDirectory: DataDirectory, modelPath: String) {
        var r: [(String, String)] = []
        for dir in Set([dataDirectory.realPath, Self.absolute(dataDirectory.path)]) where dir != "/" && !dir.isEmpty {
            r.append((dir + "/", ""))
            r.append((dir, "."))
        }
        let model = Self.absolute(modelPath)
        let name = URL(fileURLWithPath: model).lastPathComponent
        for m in Set([model, DataDirectory.realpath(modelPath) ?? model]) where m != "/" && !m.isEmpty {
            r.append((m, name))
        }
        replacements = r.sorted { $0.0.count > $1.0.count }
    }

    /// `text` with every known server path rewritten. A path not ending in "/" is replaced only
    /// where it ends (not inside a longer name: "/data" is not rewritten in "/data2").
    func scrub(_ text: String) -> String {
        guard text.contains("/") else { return text }
        var out = text
        for (path, replacement) in replacements where out.contains(path) {
            out = path.hasSuffix("/") ? out.replacingOccurrences(of: path, with: replacement)
                                      : Self.replaceWhole(path, with: replacement, in: out)
        }
        return out
    }

    private static func replaceWhole(_ path: String, with replacement: String, in text: String) -> String {
        var out = ""
        var rest = text[...]
        while let r = rest.range(of: path) {
            let next = rest[r.upperBound...].first
            let inside = next.map { $0.isLetter || $0.isNumber || "._-".contains($0) } ?? false
            out += rest[..<r.lowerBound]
            out += inside ? String(rest[r]) : replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }

    /// `path` made absolute against the working directory, "." and ".." resolved, no trailing "/".
    static func absolute(_ path: String) -> String {
        let full = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var s = URL(fileURLWithPath: full).standardizedFileURL.path
        while s.count > 1 && s.hasSuffix("/") { s.removeLast() }
        return s
    }
}

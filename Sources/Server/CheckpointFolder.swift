import Foundation
import Learner
import PreferenceLog

#if canImport(Glibc)
import Glibc
#endif

/// The checkpoint folder of the data directory as the server and the learner use it: the names a
/// client may give (`SaveCheckpoint`), what counts as a checkpoint, and the clean-up after a crash.
extension DataDirectory {
    /// The data directory at `path` whose `checkpoints/` holds the learner's checkpoints
    /// (`isCheckpointDirectory`): what `selm serve` opens.
    /// - Throws: `ServerError.io` when it cannot be created or read.
    public static func serving(_ path: String) throws(ServerError) -> DataDirectory {
        do { return try DataDirectory(path, isCheckpoint: isCheckpointDirectory) } catch { throw ServerError(error) }
    }

    /// Where `SaveCheckpoint{name}` writes: `DATA/checkpoints/NAME` (absolute), a fresh name or an
    /// existing checkpoint to replace. `name` is one path component of 1–100 characters from
    /// `A-Z a-z 0-9 . _ -`, starting with a letter or digit; a leading `checkpoints/` (the path a
    /// save replied) is dropped. `latest` and names with the temporary suffixes of a save
    /// (`.partial-`, `.old-`, `.tmp-`) are reserved. So no name reaches the log, the version file,
    /// the `latest` pointer or anything outside the folder.
    /// - Throws: `ServerError.refused` (field `field`) — `INVALID_ARGUMENT` for a bad or reserved
    ///   name, or when `checkpoints/NAME` exists and is not a checkpoint directory (a real directory
    ///   holding `selm_state.json`, or `trainer_state.json` from older saves): nothing a save
    ///   did not create is ever replaced; `PERMISSION_DENIED` when `checkpoints` leads outside.
    public func checkpointDirectory(named raw: String, field: String) throws(ServerError) -> String {
        let prefix = Self.checkpointsFolder + "/"
        let name = raw.hasPrefix(prefix) ? String(raw.dropFirst(prefix.count)) : raw
        let bytes = Array(name.utf8)
        func isAlnum(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) }
        if bytes.isEmpty { throw ServerError.invalid(field, "names no checkpoint after \"\(prefix)\"") }
        if bytes.count > 100 { throw ServerError.invalid(field, "is longer than 100 characters") }
        if bytes.contains(UInt8(ascii: "/")) {
            throw ServerError.invalid(field, "must be a single name, not a path (checkpoints are saved as \(prefix)NAME)")
        }
        guard isAlnum(bytes[0]), bytes.allSatisfy({ isAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }) else {
            throw ServerError.invalid(field, "must start with a letter or digit and hold only A-Z a-z 0-9 . _ - (got \(String(reflecting: name)))")
        }
        if name == "latest" || (Checkpoint.temporarySuffixes + [".tmp-"]).contains(where: { name.contains($0) }) {
            throw ServerError.invalid(field, "\"\(name)\" is reserved (the resume pointer, or a temporary name of a save)")
        }
        do { _ = try resolveNew(prefix + name, field: field) } catch { throw ServerError(error) }  // the folder (a link?) stays inside
        let dir = checkpointsPath + "/" + name
        var st = stat()
        if lstat(dir, &st) == 0 && !isCheckpoint(dir) {
            throw ServerError.invalid(field, "\(prefix)\(name) exists and is not a checkpoint; choose another name")
        }
        return dir
    }

    /// A real directory (not a link) holding the learner's state file (`Checkpoint.isCheckpoint`):
    /// what the server's data directory counts and lets a save replace.
    public static func isCheckpointDirectory(_ dir: String) -> Bool { Checkpoint.isCheckpoint(dir) }

    /// Cleans `checkpoints/` after saves a crash interrupted (`Checkpoint.recoverInterruptedSaves`).
    /// Call at start, after the preference log is open (its lock proves no other server uses the
    /// directory). Returns lines for the log.
    public func recoverInterruptedSaves() -> [String] {
        let r = Checkpoint.recoverInterruptedSaves(in: checkpointsPath)
        guard !r.actions.isEmpty else { return [] }
        usage.refresh()
        return r.actions.map { "\(Self.checkpointsFolder)/: \($0)" }
            + (r.freedBytes > 0 ? ["\(Self.checkpointsFolder)/: \(byteText(r.freedBytes)) freed"] : [])
    }
}

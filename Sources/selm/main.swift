import ArgumentParser
import Foundation
import Kernels
import Server

/// OpenBLAS picks its kernel core when the library loads, from `OPENBLAS_CORETYPE` or its own CPU
/// detection — and Debian's 0.3.21 falls back to a slow generic core on CPUs it does not know. When
/// the user has not chosen a core and the detected one is weaker than what this CPU supports, start
/// again with the right core set (the environment is the only way to choose it).
func ensureBestBLASCore() {
    let env = ProcessInfo.processInfo.environment
    guard env["OPENBLAS_CORETYPE"] == nil, env["SELM_NO_BLAS_REEXEC"] == nil,
          let best = kernels_best_core_for_cpu() else { return }
    let current = String(cString: kernels_blas_core())
    guard kernels_core_rank(current) < kernels_core_rank(best) else { return }
    setenv("OPENBLAS_CORETYPE", best, 1)
    setenv("SELM_NO_BLAS_REEXEC", "1", 1)
    let argv = CommandLine.unsafeArgv
    execv("/proc/self/exe", argv)
    // exec failed: carry on with the current core.
}

ensureBestBLASCore()

struct Selm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selm",
        abstract: "Online preference learning (SELM) for Llama-architecture language models.",
        version: SelmVersion.string,
        subcommands: [Info.self, Tokenize.self, Detokenize.self, Logits.self, Generate.self, Train.self, Loss.self,
                      Serve.self, Client.self, Version.self])
}

/// `selm version`: the same text as `selm --version`.
struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version (as `selm --version`).")
    func run() { print(SelmVersion.string) }
}

/// Parsing and `validate()` failures are usage errors: ArgumentParser prints the message and the
/// usage text and exits 64. Whatever `run()` throws is a runtime failure: one line on stderr,
/// `Error: …`, exit status 1 (`CLIError` says what failed and where; other errors are folded to one
/// line). `ExitCode`, `CleanExit` and ArgumentParser's own errors keep ArgumentParser's meaning: its
/// built-in `help` command (also what `--help` parses to) asks for the help text by throwing from
/// `run()`.
func runSelm() -> Never {
    var command: ParsableCommand
    do { command = try Selm.parseAsRoot() } catch { Selm.exit(withError: error) }
    // Logging is set up once, before anything logs: `--log-level` of serve and train, else info.
    SelmLogging.bootstrap(level: (command as? LogLevelCommand)?.logOptions.level ?? .info)
    do {
        try command.run()
        Selm.exit()
    } catch let e as ExitCode {
        Selm.exit(withError: e)
    } catch let e as CleanExit {
        Selm.exit(withError: e)
    } catch where String(reflecting: type(of: error)).hasPrefix("ArgumentParser.") {
        Selm.exit(withError: error)
    } catch {
        FileHandle.standardError.write(Data("Error: \(oneLine(error))\n".utf8))
        exit(EXIT_FAILURE)
    }
}

runSelm()

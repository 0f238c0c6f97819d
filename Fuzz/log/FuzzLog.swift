// libFuzzer target for the preference log's recovery scan and record decoder (Fuzz/README.md).
// Built with `-sanitize=fuzzer,address -DFUZZING` (`make fuzz`) it runs libFuzzer on
// `LLVMFuzzerTestOneInput`; built plainly (`make test`) it replays corpus files.
import FuzzChecks

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLogOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzDriver.fuzzOne(data, size, LogProperties.violations)
    return 0
}

@main
enum FuzzLog {
    static func main() {
        #if FUZZING
        // SwiftPM links an executable's entry point as `main`, so libFuzzer is started from here.
        FuzzDriver.runLibFuzzer { data, size in fuzzLogOneInput(data, size) }
        #else
        FuzzDriver.main(target: "log", violations: LogProperties.violations) { _ in try SeedCorpus.log() }
        #endif
    }
}

// libFuzzer target for the frame decoder and the envelope decoders (Fuzz/README.md). Built with
// `-sanitize=fuzzer,address -DFUZZING` (`make fuzz`) it runs libFuzzer on `LLVMFuzzerTestOneInput`;
// built plainly (`make test`) it replays corpus files through the same properties.
import FuzzChecks

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWireOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzDriver.fuzzOne(data, size, WireProperties.violations)
    return 0
}

@main
enum FuzzWire {
    static func main() {
        #if FUZZING
        // SwiftPM links an executable's entry point as `main`, so libFuzzer is started from here.
        FuzzDriver.runLibFuzzer { data, size in fuzzWireOneInput(data, size) }
        #else
        FuzzDriver.main(target: "wire", violations: WireProperties.violations) { args in
            try SeedCorpus.wire(pythonFixture: args.first ?? "Tests/WireTests/Fixtures/python_frames.json")
        }
        #endif
    }
}

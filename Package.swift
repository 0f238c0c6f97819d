// swift-tools-version: 6.1
import PackageDescription

/// Hot numeric code is built optimised even in debug builds, so `swift test` stays fast.
let fastC: [CSetting] = [.unsafeFlags(["-O3", "-fno-math-errno", "-ffp-contract=fast"])]
let fastSwift: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

let package = Package(
    name: "selm-server",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "selm", targets: ["selm"]),
        // Test-only LD_PRELOAD library (Tests/FaultShim): the server tests load it into `selm serve`
        // to count, delay, hold and fail the writes and syncs of one file.
        .library(name: "SelmFaultShim", type: .dynamic, targets: ["SelmFaultShim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries (found through pkg-config; `make deps` installs the apt providers).
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CProtobufC", pkgConfig: "libprotobuf-c", providers: [.apt(["libprotobuf-c-dev"])]),

        // BLAS-backed math on Float buffers: forward/backward kernel pairs, dequantisation.
        .target(name: "Kernels", dependencies: ["CBLAS"], cSettings: fastC),

        // Llama model: config, weights slab, forward pass, GGUF / safetensors I/O.
        .target(name: "Model", dependencies: ["Kernels"], swiftSettings: fastSwift),
        // Byte-level BPE tokenizer, streaming detokenizer, chat templates.
        .target(name: "Tokenizer", swiftSettings: fastSwift),
        // Loads what a user points `--model` at (GGUF file or HF directory): weights, tokenizer, template.
        .target(name: "ModelBundle", dependencies: ["Model", "Tokenizer", "Learner"], swiftSettings: fastSwift),
        // Generation: sampler, sequences, paged KV cache, continuous-batching scheduler, versions.
        .target(name: "Engine", dependencies: ["Model", "Tokenizer"], swiftSettings: fastSwift),
        // SELM / DPO / IPO learner: sequence log-probs, losses, AdamW, reference policy, checkpoints.
        .target(name: "Learner", dependencies: ["Model", "Kernels"], swiftSettings: fastSwift),

        // Wire protocol: protobuf-c code generated from Proto/selm.proto by scripts/gen_proto.sh (committed),
        // and the Swift value types + framing built on it (the only user of the generated C code).
        .target(name: "SelmProtoC", dependencies: ["CProtobufC"]),
        .target(name: "Wire", dependencies: ["SelmProtoC", "CProtobufC"]),
        // The `selm serve` RPC server: libuv loop, connections, routing, preference WAL, metrics HTTP.
        .target(name: "Server", dependencies: ["Wire", "Engine", "Learner", "ModelBundle", "Model", "Tokenizer", "CUV"],
                swiftSettings: fastSwift),

        // Blocking client of `selm serve` (TCP / Unix socket, requests demultiplexed by id); used by `selm client`.
        .target(name: "SelmClient", dependencies: ["Wire"]),

        .executableTarget(
            name: "selm",
            // Wire is named although SelmClient re-exports it: `selm client` builds Wire's types, and only
            // a direct dependency makes an incremental build recompile selm after `make proto` changes them.
            dependencies: [
                "Model", "Tokenizer", "Kernels", "ModelBundle", "Engine", "Learner", "Server", "SelmClient", "Wire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: fastSwift),

        .executableTarget(name: "selm-bench", dependencies: ["Model", "Kernels", "Learner", "Engine", "ModelBundle", "Tokenizer",
                                                           "Server", "Wire"],
                         swiftSettings: fastSwift),

        // Fuzzing (Fuzz/README.md): the properties the fuzzers assert, shared with the corpus replay
        // tests, and one libFuzzer target per decoder (`make fuzz`; a corpus replayer in plain builds).
        .target(name: "FuzzChecks", dependencies: ["Wire", "Server", "Learner"], path: "Fuzz/Checks"),
        .executableTarget(name: "fuzz-wire", dependencies: ["FuzzChecks"], path: "Fuzz/wire"),
        .executableTarget(name: "fuzz-log", dependencies: ["FuzzChecks"], path: "Fuzz/log"),

        .target(name: "SelmFaultShim", path: "Tests/FaultShim"),

        .testTarget(name: "ModelTests", dependencies: ["Model", "Tokenizer", "Kernels"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "SelmProtoC", "CProtobufC", "FuzzChecks"], resources: [.copy("Fixtures")]),
        .testTarget(name: "CLITests", dependencies: ["Model", "Kernels", "selm"]),
        .testTarget(name: "LearnerTests", dependencies: ["Learner", "Model"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ServerTests", dependencies: ["Server", "Wire", "Learner", "ModelBundle", "Model", "Tokenizer", "SelmClient", "selm",
                                                   "FuzzChecks"]),
        .testTarget(name: "SelmClientTests", dependencies: ["SelmClient", "Wire", "selm"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "Model", "Tokenizer", "Learner", "ModelBundle"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "Model", "ModelBundle"],
                    resources: [.copy("Fixtures")]),
    ]
)

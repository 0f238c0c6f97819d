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
        // The Swift client of the socket protocol, for other packages (examples/swift-client depends on it by path).
        .library(name: "SelmClient", targets: ["SelmClient"]),
        // Test-only LD_PRELOAD library (Tests/FaultShim): the server tests load it into `selm serve`
        // to count, delay, hold and fail the writes and syncs of one file.
        .library(name: "SelmFaultShim", type: .dynamic, targets: ["SelmFaultShim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),  // LogHandler.log(event:)
    ],
    targets: [
        // System libraries (found through pkg-config; `make deps` installs the apt providers).
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CProtobufC", pkgConfig: "libprotobuf-c", providers: [.apt(["libprotobuf-c-dev"])]),
        // Node's http-parser, for the HTTP endpoints (OpenAI API, metrics); Debian ships no .pc for it.
        .systemLibrary(name: "CHTTPParser", providers: [.apt(["libhttp-parser-dev"])]),

        // BLAS-backed math on Float buffers: forward/backward kernel pairs, dequantisation; the
        // project's own bf16 / 8-bit products (compact*.c, include/compact.h).
        .target(name: "Kernels", dependencies: ["CBLAS"], exclude: ["README.md"], cSettings: fastC),

        // Crash-safe file writing (temp name, fsync, rename, directory fsync) and the POSIX helpers
        // around it, shared by checkpoints/exports (Model, Learner) and the preference log.
        .target(name: "DurableFile", exclude: ["README.md"]),
        // Llama model: config, weights slab, forward pass, GGUF / safetensors I/O.
        .target(name: "Model", dependencies: ["Kernels", "DurableFile"], exclude: ["README.md"], swiftSettings: fastSwift),
        // Byte-level BPE tokenizer, streaming detokenizer, chat templates; the one text → ids rule for
        // prompts and responses (PromptResponseEncoder) and the one TRL preference-row parser (TRLRow).
        .target(name: "Tokenizer", exclude: ["README.md"], swiftSettings: fastSwift),
        // Loads what a user points `--model` at (GGUF file or HF directory): weights, tokenizer, template.
        .target(name: "ModelBundle", dependencies: ["Model", "Tokenizer"], exclude: ["README.md"], swiftSettings: fastSwift),
        // Generation: sampler, sequences, paged KV cache, continuous-batching scheduler, versions.
        .target(name: "Engine", dependencies: ["Model", "Tokenizer", "Kernels"], exclude: ["README.md"], swiftSettings: fastSwift),
        // SELM / DPO / IPO learner: sequence log-probs, losses, AdamW, reference policy, checkpoints.
        .target(name: "Learner", dependencies: ["Model", "Kernels", "DurableFile", "Tokenizer", .product(name: "Logging", package: "swift-log")], exclude: ["README.md"], swiftSettings: fastSwift),
        // The durable preference log (records, CRC, group commit, replay), the data directory and the
        // version ledger; records are opaque bytes (Foundation and DurableFile only).
        .target(name: "PreferenceLog", dependencies: ["DurableFile", "CRC32CHW"], exclude: ["README.md"]),
        // CRC-32C with the SSE4.2 instruction where the CPU has it (a table elsewhere): log records, weight chunks.
        .target(name: "CRC32CHW", exclude: ["README.md"], cSettings: fastC),

        // Wire protocol: protobuf-c code generated from Proto/selm.proto by scripts/gen_proto.sh (committed),
        // and the Swift value types + framing built on it (the only user of the generated C code).
        .target(name: "SelmProtoC", dependencies: ["CProtobufC"]),
        .target(name: "Wire", dependencies: ["SelmProtoC", "CProtobufC"]),
        // The `selm serve` RPC server: transport (libuv loop, connections, metrics HTTP), routing, the one edge translation.
        .target(name: "Server", dependencies: ["Wire", "Engine", "Learner", "PreferenceLog", "ModelBundle", "Model", "Tokenizer", "CUV", "CHTTPParser", "SelmClient",
                                           .product(name: "Logging", package: "swift-log")],
                exclude: ["README.md"], swiftSettings: fastSwift),

        // Blocking client of `selm serve` (TCP / Unix socket, requests demultiplexed by id); used by `selm client`.
        .target(name: "SelmClient", dependencies: ["Wire"], exclude: ["README.md"]),

        .executableTarget(
            name: "selm",
            // Wire is named although SelmClient re-exports it: `selm client` builds Wire's types, and only
            // a direct dependency makes an incremental build recompile selm after `make proto` changes them.
            dependencies: [
                "Model", "Tokenizer", "Kernels", "ModelBundle", "Engine", "Learner", "PreferenceLog", "DurableFile", "Server", "SelmClient", "Wire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["README.md"],
            swiftSettings: fastSwift),

        .executableTarget(name: "selm-bench", dependencies: ["Model", "Kernels", "Learner", "Engine", "ModelBundle", "Tokenizer",
                                                           "PreferenceLog", "Server", "Wire"],
                         exclude: ["README.md"], swiftSettings: fastSwift),

        // Fuzzing (Fuzz/README.md): the properties the fuzzers assert, shared with the corpus replay
        // tests, and one libFuzzer target per decoder (`make fuzz`; a corpus replayer in plain builds).
        .target(name: "FuzzChecks", dependencies: ["Wire", "PreferenceLog", "Server", "Learner"], path: "Fuzz/Checks"),
        .executableTarget(name: "fuzz-wire", dependencies: ["FuzzChecks"], path: "Fuzz/wire"),
        .executableTarget(name: "fuzz-log", dependencies: ["FuzzChecks"], path: "Fuzz/log"),

        .target(name: "SelmFaultShim", path: "Tests/FaultShim"),

        // The compact-precision kernels (Sources/Kernels/compact*.c) on every instruction-set path.
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "ModelTests", dependencies: ["Model", "Tokenizer", "Kernels"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "SelmProtoC", "CProtobufC", "FuzzChecks"], resources: [.copy("Fixtures")]),
        .testTarget(name: "CLITests", dependencies: ["Model", "Kernels", "selm"]),
        .testTarget(name: "LearnerTests", dependencies: ["Learner", "Model", "DurableFile"], resources: [.copy("Fixtures")]),
        .testTarget(name: "PreferenceLogTests", dependencies: ["PreferenceLog", "DurableFile", "FuzzChecks"]),
        .testTarget(name: "ServerTests", dependencies: ["Server", "Wire", "Learner", "PreferenceLog", "ModelBundle", "Model", "Tokenizer", "SelmClient", "selm",
                                                   "FuzzChecks"]),
        .testTarget(name: "SelmClientTests", dependencies: ["SelmClient", "Wire", "selm"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "Model", "Tokenizer", "Learner", "ModelBundle"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "Model", "ModelBundle"],
                    resources: [.copy("Fixtures")]),
    ]
)

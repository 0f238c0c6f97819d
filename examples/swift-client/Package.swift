// swift-tools-version: 6.1
// A package of its own that depends on selm-server's `SelmClient` library, as any other package would
// (by path here; from Git: `.package(url: "<selm-server repository>", branch: "main")`).
import PackageDescription

let package = Package(
    name: "selm-client-example",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "selm-server", path: "../.."),
    ],
    targets: [
        .executableTarget(name: "selm-client-example",
                          dependencies: [.product(name: "SelmClient", package: "selm-server")]),
    ]
)

// swift-tools-version:6.0
import PackageDescription
import Foundation

// Every target is built for Haswell (AVX2 + FMA + F16C) unless QUANTKIT_PORTABLE=1:
// without it SIMD FMAs and Float16 conversions become library calls (40-100x slower).
let portable = ProcessInfo.processInfo.environment["QUANTKIT_PORTABLE"] == "1"
let cpuFlags: [SwiftSetting] = portable ? [] : [.unsafeFlags(["-target-cpu", "haswell"])]
let settings: [SwiftSetting] = cpuFlags + [.swiftLanguageMode(.v6)]

let package = Package(
    name: "QuantKit",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "quantkit", targets: ["quantkit"]),
        .library(name: "TensorCore", targets: ["TensorCore"]),
        .library(name: "Kernels", targets: ["Kernels"]),
        .library(name: "Tokenization", targets: ["Tokenization"]),
        .library(name: "Datasets", targets: ["Datasets"]),
        .library(name: "Models", targets: ["Models"]),
        .library(name: "Quantization", targets: ["Quantization"]),
        .library(name: "NPU", targets: ["NPU"]),
        .library(name: "Training", targets: ["Training"]),
        .library(name: "Evaluation", targets: ["Evaluation"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
    ],
    targets: [
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .target(name: "TensorCore", dependencies: ["CZstd", "CHints", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: settings),
        .systemLibrary(name: "CHints"),
        // The kernels that need AVX-512 (VNNI): the only module compiled with those features; Kernels calls it only
        // after checking the processor (CPUFeatures), so the binary still runs on any AVX2 machine.
        .target(name: "KernelsVNNI", dependencies: ["CHints"],
                swiftSettings: settings + (portable ? [] : [.unsafeFlags(["-Xcc", "-mavx512f", "-Xcc", "-mavx512bw", "-Xcc", "-mavx512vl",
                                                                          "-Xcc", "-mavx512vnni"])])),
        .target(name: "Kernels", dependencies: ["TensorCore", "CHints", "KernelsVNNI"], swiftSettings: settings),
        .target(name: "Tokenization", dependencies: ["TensorCore"], swiftSettings: settings),
        // The data layer; not named "Data", which would clash with Foundation.Data.
        .target(name: "Datasets", dependencies: ["TensorCore"], swiftSettings: settings),
        .target(name: "Models", dependencies: ["TensorCore", "Kernels", "Tokenization"], swiftSettings: settings),
        .target(name: "Quantization", dependencies: ["TensorCore", "Kernels", "Datasets", "Models"], swiftSettings: settings),
        .target(name: "NPU", dependencies: ["TensorCore", "Kernels", "Models"], swiftSettings: settings),
        .target(name: "Training", dependencies: ["TensorCore", "Kernels", "Models", "Quantization"], swiftSettings: settings),
        .target(name: "Evaluation", dependencies: ["TensorCore", "Kernels", "Tokenization", "Datasets", "Models", "Quantization", "NPU", "Training"],
                swiftSettings: settings),
        .executableTarget(name: "quantkit", dependencies: [
            "TensorCore", "Kernels", "Tokenization", "Datasets", "Models", "Quantization", "NPU", "Training", "Evaluation",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: settings),

        .target(name: "TestSupport", dependencies: ["TensorCore"], path: "Tests/TestSupport", swiftSettings: settings),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore", "TestSupport"], swiftSettings: settings),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "TensorCore", "TestSupport"], exclude: ["Fixtures"], swiftSettings: settings),
        .testTarget(name: "TokenizationTests", dependencies: ["Tokenization", "TensorCore", "TestSupport"], exclude: ["Fixtures"], swiftSettings: settings),
        .testTarget(name: "DatasetsTests", dependencies: ["Datasets", "TensorCore", "TestSupport"], swiftSettings: settings),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "Kernels", "TensorCore", "TestSupport"], exclude: ["Fixtures"], swiftSettings: settings),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization", "Datasets", "Models", "TensorCore", "TestSupport"], exclude: ["Fixtures"], swiftSettings: settings),
        .testTarget(name: "NPUTests", dependencies: ["NPU", "Quantization", "Models", "Kernels", "Tokenization", "TensorCore", "TestSupport"], exclude: ["Fixtures"], swiftSettings: settings),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Quantization", "Models", "Kernels", "TensorCore", "TestSupport"], exclude: ["Fixtures"], swiftSettings: settings),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation", "Datasets", "Quantization", "NPU", "Models", "Tokenization", "TensorCore", "TestSupport"], exclude: ["Fixtures"], swiftSettings: settings),
        .testTarget(name: "CLITests", dependencies: ["TestSupport", "TensorCore"], swiftSettings: settings),
        // The parsers' fuzz targets (Tools/fuzz.sh); the tests run them over the seeds and every past finding.
        .target(name: "FuzzTargets", dependencies: ["TensorCore", "Tokenization", "Datasets", "Models", "Evaluation"],
                path: "Tests/FuzzTargets", swiftSettings: settings),
        .testTarget(name: "FuzzRegressionTests", dependencies: ["FuzzTargets"], swiftSettings: settings),
    ]
)

// Fuzzing (Tools/fuzz.sh): one libFuzzer executable over every parser a user can feed, built only on request so
// that ordinary builds and tests never compile it.
if ProcessInfo.processInfo.environment["QUANTKIT_FUZZ"] == "1" {
    package.targets.append(.executableTarget(
        name: "quantkit-fuzz",
        dependencies: ["FuzzTargets"],
        path: "Tests/Fuzz", exclude: ["Corpus", "Regressions"],
        swiftSettings: settings + [.unsafeFlags(["-parse-as-library"])]))
}

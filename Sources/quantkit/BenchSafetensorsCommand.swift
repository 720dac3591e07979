import ArgumentParser
import Foundation
import TensorCore

/// Opening a large safetensors file must cost milliseconds: the header is parsed and the data area mmapped,
/// never read.
struct BenchSafetensorsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "safetensors", abstract: "Time opening a ~90 MB safetensors file.")
    @Option(help: "Megabytes of tensor data in the generated file.") var megabytes = 90
    @Option(help: "Repetitions (the median is reported).") var repeats = 15
    @Option(help: "Time this existing file instead of a generated one (e.g. MiniLM's 90.9 MB model.safetensors).")
    var file: String?

    func run() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qk-bench-st-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var path = dir + "/model.safetensors"
        if let file { path = file } else {
            // A layout like a real model's: many 2-D tensors.
            let n = max(1, megabytes * 1_000_000 / (768 * 768 * 4))
            let t = Tensor(zeros: .f32, shape: [768, 768])
            try SafetensorsWriter.write((0..<n).map { ("model.layers.\($0 / 7).w\($0 % 7).weight", t) }, to: path)
        }
        let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        var times: [Double] = []
        var rssBefore = 0, rssAfter = 0
        for _ in 0..<repeats {
            rssBefore = residentKB()
            let start = DispatchTime.now().uptimeNanoseconds
            let f = try SafetensorsFile(path: path)
            let first = try f.tensor(f.names[0])
            _ = first.shape
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            rssAfter = residentKB()
        }
        times.sort()
        let n = try SafetensorsFile(path: path).names.count
        print(String(format: "safetensors open: file %.1f MB, %d tensors, median %.3f ms (min %.3f, max %.3f) over %d runs; RSS growth %d KB",
                     Double(size) / 1e6, n, times[times.count / 2], times[0], times[times.count - 1], repeats, rssAfter - rssBefore))
    }
}

/// Current resident set size in KB (Linux /proc), 0 elsewhere.
func residentKB() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let parts = s.split(separator: " ")
    return parts.count > 1 ? (Int(parts[1]) ?? 0) * Int(getpagesize()) / 1024 : 0
}

/// Peak resident set size in KB (getrusage).
func peakRSSKB() -> Int {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return u.ru_maxrss
}

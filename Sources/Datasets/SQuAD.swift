import Foundation
import TensorCore

public struct SquadQuestion: Sendable, Equatable {
    public let id: String
    public let question: String
    public let context: String
    public let title: String
    /// Gold answer texts (duplicates kept, as the official script sees them); empty when unanswerable.
    public let answers: [String]
    public let isImpossible: Bool
}

public struct SquadDataset: Sendable {
    public let questions: [SquadQuestion]
    /// Distinct paragraphs in file order (the retrieval corpus for `rag answers --retriever`).
    public let contexts: [String]
    public let source: SourceFile
}

extension Datasets {
    /// SQuAD v1.1 / v2.0 JSON: data[].paragraphs[].{context, qas[].{id, question, answers[].text, is_impossible}}.
    public static func loadSQuAD(_ path: String) throws -> SquadDataset {
        let data = try readMaybeCompressed(path)
        let articles: [[String: Any]]
        switch squadArticles(data) {
        case .success(let a): articles = a
        case .failure(.malformed): throw QuantKitError(.format, "\(path): malformed JSON")
        case .failure(.notSquad):
            throw QuantKitError(.format, "\(path): expected an object with a \"data\" array (SQuAD format)")
        }
        var qs: [SquadQuestion] = []
        var contexts: [String] = []
        var seen = Set<String>()
        try squadParagraphs(articles, path: path, strict: true) { location, title, context, qas in
            contexts.append(context)
            for (qi, q) in qas.enumerated() {
                guard let id = q["id"] as? String, let question = q["question"] as? String else {
                    throw QuantKitError(.format, "\(path): \(location).qas[\(qi)]: needs \"id\" and \"question\"")
                }
                guard seen.insert(id).inserted else {
                    throw QuantKitError(.format, "\(path): duplicate question id \"\(id)\"")
                }
                // Answers are strict: a non-string "text" (a number, null) would otherwise drop out silently and
                // change the gold set.
                var answers: [String] = []
                if let raw = q["answers"], !(raw is NSNull) {
                    guard let list = raw as? [Any] else {
                        throw QuantKitError(.format, "\(path): question \"\(id)\": \"answers\" must be an array of {\"text\": string} objects")
                    }
                    for (k, a) in list.enumerated() {
                        guard let obj = a as? [String: Any], let text = obj["text"] as? String else {
                            let found = (a as? [String: Any])?["text"].map { "\($0)" } ?? "no \"text\""
                            throw QuantKitError(.format, "\(path): question \"\(id)\": answers[\(k)].text must be a string (found \(found))")
                        }
                        answers.append(text)
                    }
                }
                var impossible = answers.isEmpty
                if let raw = q["is_impossible"] {
                    guard let b = raw as? Bool else {
                        throw QuantKitError(.format, "\(path): question \"\(id)\": \"is_impossible\" must be true or false")
                    }
                    impossible = b
                }
                qs.append(SquadQuestion(id: id, question: question, context: context, title: title,
                                        answers: impossible ? [] : answers, isImpossible: impossible))
            }
        }
        if qs.isEmpty { throw QuantKitError(.input, "\(path): no questions") }
        return SquadDataset(questions: qs, contexts: contexts,
                            source: SourceFile(path: path, sha256: Digest.sha256(data), bytes: data.count))
    }

    /// Every paragraph context of a SQuAD JSON in file order, read leniently for calibration text: articles
    /// without paragraphs and paragraphs without a context are skipped, questions are not read.
    static func squadContexts(_ data: Data, path: String) throws -> [String] {
        guard case .success(let articles) = squadArticles(data) else {
            throw QuantKitError(.format, "\(path): expected a SQuAD JSON object with a 'data' list")
        }
        var out: [String] = []
        try squadParagraphs(articles, path: path, strict: false) { _, _, context, _ in out.append(context) }
        return out
    }

    enum SquadShapeError: Error { case malformed, notSquad }

    /// The "data" articles of a SQuAD JSON.
    static func squadArticles(_ data: Data) -> Result<[[String: Any]], SquadShapeError> {
        guard let root = try? JSONSerialization.jsonObject(with: data) else { return .failure(.malformed) }
        guard let top = root as? [String: Any], let articles = top["data"] as? [[String: Any]] else { return .failure(.notSquad) }
        return .success(articles)
    }

    /// The one walk over data[].paragraphs[]: `body(location, title, context, qas)` for each paragraph in file
    /// order. `strict` makes a missing "paragraphs", "context" or "qas" an error naming where; otherwise an article
    /// without paragraphs or a paragraph without a context is skipped and missing qas read as none.
    static func squadParagraphs(_ articles: [[String: Any]], path: String, strict: Bool,
                                _ body: (String, String, String, [[String: Any]]) throws -> Void) throws {
        for (ai, a) in articles.enumerated() {
            let title = a["title"] as? String ?? ""
            guard let paragraphs = a["paragraphs"] as? [[String: Any]] else {
                if strict { throw QuantKitError(.format, "\(path): data[\(ai)]: missing \"paragraphs\"") }
                continue
            }
            for (pi, p) in paragraphs.enumerated() {
                let qas = p["qas"] as? [[String: Any]]
                guard let context = p["context"] as? String, qas != nil || !strict else {
                    if strict { throw QuantKitError(.format, "\(path): data[\(ai)].paragraphs[\(pi)]: needs \"context\" and \"qas\"") }
                    continue
                }
                try body("data[\(ai)].paragraphs[\(pi)]", title, context, qas ?? [])
            }
        }
    }
}

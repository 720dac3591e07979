import Datasets
import Foundation
import TensorCore

/// A text generator for `rag answers`: greedy continuation of a prompt, stopped at a newline or EOS or after
/// `maxTokens` tokens. The engine's causal models are adapted to this in the CLI.
public protocol AnswerGenerator: AnyObject {
    var name: String { get }
    func generate(prompt: String, maxTokens: Int) throws -> String
}

/// The prompt QuantKit builds for extractive QA (documented in `quantkit rag answers --help`).
public enum AnswerPrompt {
    public static let template = """
    Answer the question with a short span from the context. If the context does not contain the answer, reply "unanswerable".

    Context: {context}

    Question: {question}
    Answer:
    """

    public static func build(question: String, passages: [String]) -> String {
        template.replacingOccurrences(of: "{context}", with: passages.joined(separator: "\n\n"))
            .replacingOccurrences(of: "{question}", with: question)
    }

    /// The generated continuation up to the first newline, trimmed.
    public static func extractAnswer(_ generated: String) -> String {
        let line = generated.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return line.trimmingCharacters(in: .whitespaces)
    }

    /// An answer that declines: empty after normalisation, or the word "unanswerable".
    public static func isAbstention(_ answer: String) -> Bool {
        let n = SquadMetrics.normalize(answer)
        return n.isEmpty || n == "unanswerable" || n.hasPrefix("unanswerable ")
    }
}

/// Coarse answer types of the gold answers, the one rule every answers report uses (a four-digit year is a date).
public enum AnswerType: String, CaseIterable, Sendable {
    case unanswerable, date, number, name, shortPhrase = "short phrase", longPhrase = "long phrase"

    static let months = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
                         "october", "november", "december"]

    public static func of(_ q: SquadQuestion) -> AnswerType {
        guard !q.isImpossible, let gold = q.answers.first else { return .unanswerable }
        let lower = gold.lowercased()
        let words = gold.split(whereSeparator: { $0.isWhitespace })
        if months.contains(where: { lower.contains($0) }) || words.contains(where: { w in
            w.count == 4 && w.allSatisfy(\.isNumber) && (w.hasPrefix("1") || w.hasPrefix("2")) }) || lower.contains("century") {
            return .date
        }
        if gold.contains(where: \.isNumber) { return .number }
        if !words.isEmpty && words.allSatisfy({ $0.first?.isUppercase ?? false || ["of", "the", "and", "de"].contains($0.lowercased()) }) {
            return .name
        }
        return words.count <= 3 ? .shortPhrase : .longPhrase
    }
}

public struct AnswerRecord: Sendable {
    public let id: String
    public let type: AnswerType
    public let answer: String
    public let em: Double
    public let f1: Double
    public let abstained: Bool
}

extension AnswerType: Codable {}

/// A partial `rag answers` result carries its records this way: EM and F1 by bit pattern (ExactDouble), so the
/// merged means add exactly the numbers the shards computed.
extension AnswerRecord: Codable {
    enum CodingKeys: String, CodingKey { case id, type, answer, em, f1, abstained }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(id: try c.decode(String.self, forKey: .id), type: try c.decode(AnswerType.self, forKey: .type),
                  answer: try c.decode(String.self, forKey: .answer), em: try c.decode(ExactDouble.self, forKey: .em).value,
                  f1: try c.decode(ExactDouble.self, forKey: .f1).value, abstained: try c.decode(Bool.self, forKey: .abstained))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(type, forKey: .type)
        try c.encode(answer, forKey: .answer)
        try c.encode(ExactDouble(em), forKey: .em)
        try c.encode(ExactDouble(f1), forKey: .f1)
        try c.encode(abstained, forKey: .abstained)
    }
}

public struct AnswerRunSummary: Sendable {
    public let name: String
    public let records: [AnswerRecord]
    public let seconds: Double

    var answerable: [AnswerRecord] { records.filter { $0.type != .unanswerable } }
    var unanswerable: [AnswerRecord] { records.filter { $0.type == .unanswerable } }

    public var em: Double { mean(answerable.map(\.em)) }
    public var f1: Double { mean(answerable.map(\.f1)) }
    /// Share of unanswerable questions the model declined (the SQuAD v2 "no answer" being right).
    public var unanswerableAbstention: Double { mean(unanswerable.map { $0.abstained ? 1 : 0 }) }
    public var answerableAbstention: Double { mean(answerable.map { $0.abstained ? 1 : 0 }) }
}

func mean(_ xs: [Double]) -> Double { xs.isEmpty ? 0 : xs.reduce(0, +) / Double(xs.count) }

/// One answer type's figures in a `rag_answers` run's `segments`.
public struct AnswerSegment: Encodable, Sendable, Equatable {
    public var answerType: String
    public var questions: Int
    public var em: Double
    public var f1: Double
    /// Share of the type's questions the model declined.
    public var abstention: Double
    enum CodingKeys: String, CodingKey { case answerType = "answer_type", questions, em, f1, abstention }
}

public enum AnswerEvaluation {
    /// Generates and scores one model's answers. `contexts[i]` are the passages for questions[i].
    public static func run(_ gen: AnswerGenerator, questions: [SquadQuestion], contexts: [[String]], maxTokens: Int,
                           progress: ProgressTask? = nil) throws -> AnswerRunSummary {
        let t0 = Date()
        var recs: [AnswerRecord] = []
        for (i, q) in questions.enumerated() {
            let prompt = AnswerPrompt.build(question: q.question, passages: contexts[i])
            let ans = AnswerPrompt.extractAnswer(try gen.generate(prompt: prompt, maxTokens: maxTokens))
            let type = AnswerType.of(q)
            recs.append(AnswerRecord(id: q.id, type: type, answer: ans,
                                     em: q.isImpossible ? 0 : SquadMetrics.exactMatch(ans, golds: q.answers),
                                     f1: q.isImpossible ? 0 : SquadMetrics.f1(ans, golds: q.answers),
                                     abstained: AnswerPrompt.isAbstention(ans)))
            progress?.update(done: i + 1)
        }
        return AnswerRunSummary(name: gen.name, records: recs, seconds: Date().timeIntervalSince(t0))
    }

    /// Agreement of `other` with `base` over all questions: EM and F1 of other's answer against base's answer.
    public static func agreement(_ base: AnswerRunSummary, _ other: AnswerRunSummary) -> (em: Double, f1: Double) {
        let pairs = zip(base.records, other.records)
        return (mean(pairs.map { SquadMetrics.exactMatch($1.answer, $0.answer) }),
                mean(pairs.map { SquadMetrics.f1($1.answer, $0.answer) }))
    }

    /// Per answer type (in AnswerType order, empty types left out): questions, EM, F1 and the share declined.
    public static func segments(_ s: AnswerRunSummary) -> [AnswerSegment] {
        AnswerType.allCases.compactMap { t in
            let r = s.records.filter { $0.type == t }
            guard !r.isEmpty else { return nil }
            return AnswerSegment(answerType: t.rawValue, questions: r.count, em: mean(r.map(\.em)), f1: mean(r.map(\.f1)),
                                 abstention: mean(r.map { $0.abstained ? 1 : 0 }))
        }
    }
}

import Evaluation
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import TestSupport
import XCTest

final class ReportTests: XCTestCase {
    let dir = Repo.tempDirectory("report")

    func perplexityComparison() throws -> Comparison {
        var files = try ["ppl_f32.json", "ppl_int8.json", "ppl_gptq_int4.json", "ppl_rtn_int4.json", "layers.json"].map { try ResultFile(path: compareFixture($0)) }
        // Segments for the per-segment chart, as the perplexity command would put them in its result.
        var o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: compareFixture("ppl_rtn_int4.json")))) as! [String: Any]
        o["segments"] = [["group": "document", "segment": "Robert <Boulter> & co", "count": 120, "base": 20.0, "quantized": 23.0],
                         ["group": "window position", "segment": "64-95", "count": 300, "base": 20.0, "quantized": 20.5]]
        let p = dir + "/seg.json"
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: p))
        files[3] = try ResultFile(path: p)
        return try Comparison.build(files: files, resamples: 100, seed: 3)
    }

    /// Parses the report as XML (XHTML) and returns the document.
    func parseXHTML(_ html: String) throws -> XMLDocument {
        try XMLDocument(data: Data(html.utf8), options: [])
    }

    func texts(_ doc: XMLDocument, _ xpath: String) throws -> [String] {
        try doc.nodes(forXPath: xpath).compactMap(\.stringValue)
    }

    func checkDocument(_ html: String) throws {
        let doc = try parseXHTML(html)
        XCTAssertEqual(doc.rootElement()?.name, "html")
        // No scripts and no external resources: one self-contained file.
        XCTAssertTrue(try doc.nodes(forXPath: "//*[local-name()='script']").isEmpty)
        XCTAssertFalse(html.contains("src=") || html.contains("href="))
        let svgs = try doc.nodes(forXPath: "//*[local-name()='svg']")
        XCTAssertEqual(svgs.count, 5, "loss bars, ppl vs bpw, KLD vs bpw, segments, layers")
        let titles = try texts(doc, "//*[local-name()='svg']/*[local-name()='title']")
        XCTAssertEqual(titles, ["Relative loss of ppl per run (%)", "Perplexity vs bits per weight", "Mean KLD vs bits per weight",
                                "Per-segment relative loss (%), worst first", "Per-module sensitivity: SQNR (dB, lower = more sensitive)"])
        // Numbers: the losses on the bars, the SQNR of the most sensitive module, the escaped segment name.
        let barTexts = try texts(doc, "(//*[local-name()='svg'])[1]//*[local-name()='text']")
        XCTAssertTrue(barTexts.contains("+0.400%"), "\(barTexts)")
        XCTAssertTrue(barTexts.contains("+5.000%"), "\(barTexts)")
        let all = doc.rootElement()!.stringValue ?? ""
        XCTAssertTrue(all.contains("document: Robert <Boulter> & co"))
        XCTAssertTrue(all.contains("+15.00%"))  // 23/20 - 1
        XCTAssertTrue(all.contains("model.layers.4.mlp.down_proj"))
        XCTAssertTrue(all.contains("12.3"))
        XCTAssertTrue(all.contains("stay FP16"))
        // One data point per run with known bits per weight in the ppl chart (4 runs; legend dots are outside <g>).
        XCTAssertEqual(try doc.nodes(forXPath: "(//*[local-name()='svg'])[2]//*[local-name()='g']/*[local-name()='circle']").count, 4)
        // Bars have positive sizes and stay inside the drawing.
        for r in try doc.nodes(forXPath: "//*[local-name()='rect']") {
            func attr(_ n: String) -> Double? {
                (r as? XMLElement)?.attributes?.first { $0.localName == n || $0.name == n }?.stringValue.flatMap(Double.init)
            }
            guard let w = attr("width"), let x = attr("x") else {
                XCTFail("rect without numeric x/width: \(r.xmlString)"); continue
            }
            XCTAssertGreaterThan(w, 0); XCTAssertGreaterThanOrEqual(x, 0); XCTAssertLessThanOrEqual(x + w, 760.5)
        }
    }

    func testHTMLReportIsWellFormedXHTMLWithSVGCharts() throws {
        let c = try perplexityComparison()
        let path = dir + "/report.html"
        try HTMLReport.write(c, to: path)
        try checkDocument(try String(contentsOfFile: path, encoding: .utf8))
    }

    static func chromium() -> String? {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            for d in ["/usr/bin", "/usr/local/bin", "/snap/bin"] where FileManager.default.isExecutableFile(atPath: "\(d)/\(name)") {
                return "\(d)/\(name)"
            }
        }
        return nil
    }

    /// With Chromium installed: render headless, check the PNG's dimensions and that it is not blank. Without
    /// it (this machine has none): the XHTML validation path only, and the message says so.
    func testHTMLRendersInChromiumOrValidatesXHTMLOnlyWhenChromiumAbsent() throws {
        let c = try perplexityComparison()
        let html = HTMLReport.render(c)
        try checkDocument(html)
        guard let chrome = ReportTests.chromium() else {
            print("ReportTests: chromium not installed: validated the report as XHTML only (no screenshot)")
            return
        }
        let page = dir + "/r.html", png = dir + "/r.png"
        try html.write(toFile: page, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: chrome)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,2400", "--screenshot=\(png)", "file://\(page)"]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run(); p.waitUntilExit()
        let data = try Data(contentsOf: URL(fileURLWithPath: png))
        XCTAssertEqual(Array(data.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        func be32(_ o: Int) -> Int { data[o..<o + 4].reduce(0) { $0 << 8 | Int($1) } }
        XCTAssertEqual(be32(16), 1000); XCTAssertEqual(be32(20), 2400)
        // Non-blank: decode with Python's zlib and count non-white pixels (an independent decoder).
        let py = Process()
        py.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        py.arguments = ["python3", "-c", """
        import sys, zlib, struct
        d = open(sys.argv[1], 'rb').read(); i = 8; idat = b''
        while i < len(d):
            n, t = struct.unpack('>I4s', d[i:i+8]); 
            if t == b'IDAT': idat += d[i+8:i+8+n]
            i += 12 + n
        raw = zlib.decompress(idat)
        print(sum(1 for b in raw if b < 200))
        """, png]
        let out = Pipe(); py.standardOutput = out
        try py.run(); py.waitUntilExit()
        let dark = Int(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        XCTAssertGreaterThan(dark, 10_000, "screenshot looks blank")
    }

    func testMarkdownReport() throws {
        let c = try perplexityComparison()
        let md = MarkdownReport.render(c)
        XCTAssertTrue(md.contains("**Verdict: stay FP16**"), md)
        XCTAssertTrue(md.contains("| run | bits/w | ppl | delta | rel. delta | 95% CI of loss | verdict |"), md)
        XCTAssertTrue(md.contains("| stories260K-rtn-int8 | 8.25 |"), md)
        XCTAssertTrue(md.contains("ship (+0.40%)"), md)
        XCTAssertTrue(md.contains("- enable act-order (--act-order)"), md)
        let rows = md.components(separatedBy: "#### ")[0].split(separator: "\n").filter { $0.hasPrefix("| ") }
        XCTAssertEqual(rows.count, 5)  // header + 4 runs
        // The segment table (one run carries segments: no run column).
        XCTAssertTrue(md.contains("| group | segment | count | base | quantized | rel. loss | KLD mean |"), md)
        XCTAssertTrue(md.contains("| document | Robert <Boulter> & co | 120 | 20.0000 | 23.0000 | +15.00% | - |"), md)
        for r in rows { XCTAssertEqual(r.filter { $0 == "|" }.count, 8, String(r)) }
    }

    func testRetrievalHTMLHasMetricDeltaChart() throws {
        let c = try Comparison.build(files: [ResultFile(path: compareFixture("retrieval.json"))], resamples: 50)
        let doc = try parseXHTML(HTMLReport.render(c))
        let titles = try texts(doc, "//*[local-name()='svg']/*[local-name()='title']")
        XCTAssertTrue(titles.contains("Retrieval metric deltas (run - baseline)"), "\(titles)")
        let barLabels = try texts(doc, "(//*[local-name()='svg'])[2]//*[local-name()='text']")
        XCTAssertTrue(barLabels.contains("quantized: nDCG@10"), "\(barLabels)")
        XCTAssertTrue(barLabels.contains("-0.0128"), "\(barLabels)")
    }

    /// Markdown and HTML show the worst segments per group, with the run of each when several runs carry them.
    func testSegmentTablesInMarkdownAndHTML() throws {
        func withSegments(_ fixture: String, _ segs: [[String: Any]], _ name: String) throws -> ResultFile {
            var o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: compareFixture(fixture)))) as! [String: Any]
            o["segments"] = segs
            let p = dir + "/" + name
            try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: p))
            return try ResultFile(path: p)
        }
        // Seven documents in the RTN run (losses 1..7 %), so only the five worst show; one position bucket each.
        var docs: [[String: Any]] = []
        for k in 1...7 {
            let q: Double = 10.0 * (1 + Double(k) / 100)
            let kld: Double = 0.001 * Double(k)
            docs.append(["group": "document", "segment": "Doc | \(k)", "count": 10 * k, "base": 10.0, "quantized": q, "kld_mean": kld])
        }
        let position: [String: Any] = ["group": "window position", "segment": "64-71", "count": 50, "base": 10.0, "quantized": 10.9]
        let rtn = try withSegments("ppl_rtn_int4.json", docs + [position], "rtn.json")
        let gptq = try withSegments("ppl_gptq_int4.json", [["group": "window position", "segment": "64-71", "count": 50, "base": 10.0, "quantized": 10.2]], "gptq.json")
        let c = try Comparison.build(files: [try ResultFile(path: compareFixture("ppl_f32.json")), rtn, gptq], resamples: 100, seed: 1)
        XCTAssertTrue(c.segmentsFromSeveralRuns)
        let md = MarkdownReport.render(c)
        XCTAssertTrue(md.contains("| run | group | segment | count | base | quantized | rel. loss | KLD mean |"), md)
        let rows = md.split(separator: "\n").filter { $0.hasPrefix("| stories260K-rtn-int4 | document |") }
        // Worst first (7 % ... 3 %), pipes in names escaped, the KLD mean shown.
        XCTAssertEqual(rows.count, 5, md)
        XCTAssertEqual(rows.first.map(String.init), "| stories260K-rtn-int4 | document | Doc \\| 7 | 70 | 10.0000 | 10.7000 | +7.00% | 0.0070 |")
        XCTAssertTrue(rows.last?.contains("Doc \\| 3 |") ?? false, "\(rows)")
        XCTAssertFalse(md.contains("Doc \\| 2 |"))
        // The position group: the RTN bucket (+9 %) before the GPTQ one (+2 %), each named with its run.
        let pos = md.split(separator: "\n").filter { $0.contains("| window position |") }
        XCTAssertEqual(pos.count, 2)
        XCTAssertTrue(pos[0].hasPrefix("| stories260K-rtn-int4 |") && pos[0].contains("+9.00%"), "\(pos)")
        XCTAssertTrue(pos[1].hasPrefix("| stories260K-gptq-int4 |") && pos[1].contains("+2.00%"), "\(pos)")
        let doc = try parseXHTML(HTMLReport.render(c))
        let barLabels = try texts(doc, "//*[local-name()='svg'][*[local-name()='title']='Per-segment relative loss (%), worst first']//*[local-name()='g']/*[local-name()='text'][1]")
        // Up to 8 per group: both position buckets (the group holding the worst segment first), all 7 documents.
        XCTAssertEqual(barLabels.count, 9, "\(barLabels)")
        XCTAssertEqual(barLabels.first, "stories260K-rtn-int4 window position: 64-71")
        XCTAssertEqual(barLabels[2], "stories260K-rtn-int4 document: Doc | 7")
        XCTAssertTrue(try texts(doc, "//*[local-name()='td']").contains("Doc | 1"))
    }
}

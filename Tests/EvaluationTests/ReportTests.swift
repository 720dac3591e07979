import Evaluation
import Foundation
import TensorCore
#if canImport(FoundationXML)
import FoundationXML
#endif
import TestSupport
import XCTest

/// Width, height and colour statistics of a PNG screenshot (8-bit RGB or RGBA, not interlaced). Python's zlib
/// inflates the image data; the row filters are undone here.
struct PNGSummary {
    var width = 0, height = 0, distinctColors = 0, nonWhite = 0

    init(_ png: Data, dir: String) throws {
        let bytes = [UInt8](png)
        guard bytes.count > 33, bytes[0..<8] == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] else {
            throw QuantKitError(.format, "not a PNG file")
        }
        func be32(_ o: Int) -> Int { bytes[o..<o + 4].reduce(0) { $0 << 8 | Int($1) } }
        width = be32(16); height = be32(20)
        let depth = bytes[24], colorType = bytes[25], interlace = bytes[28]
        guard depth == 8, colorType == 2 || colorType == 6, interlace == 0 else {
            throw QuantKitError(.unsupported, "PNG depth \(depth) colour type \(colorType) interlace \(interlace)")
        }
        let bpp = colorType == 6 ? 4 : 3
        var idat = [UInt8](), i = 8
        while i + 8 <= bytes.count {
            let n = be32(i), type = String(decoding: bytes[i + 4..<i + 8], as: UTF8.self)
            if type == "IDAT" { idat += bytes[i + 8..<i + 8 + n] }
            i += 12 + n
        }
        let zpath = dir + "/idat.z", rawPath = dir + "/idat.raw"
        try Data(idat).write(to: URL(fileURLWithPath: zpath))
        let py = Process()
        py.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        py.arguments = ["python3", "-c", "import sys, zlib; open(sys.argv[2], 'wb').write(zlib.decompress(open(sys.argv[1], 'rb').read()))", zpath, rawPath]
        try py.run(); py.waitUntilExit()
        let raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: rawPath)))
        let stride = width * bpp
        guard raw.count == height * (stride + 1) else { throw QuantKitError(.format, "PNG data: \(raw.count) bytes for \(width)x\(height)") }
        var prev = [UInt8](repeating: 0, count: stride), cur = prev
        var colors = Set<UInt32>()
        for y in 0..<height {
            let f = raw[y * (stride + 1)], row = y * (stride + 1) + 1
            for x in 0..<stride {
                let a = x >= bpp ? Int(cur[x - bpp]) : 0, b = Int(prev[x]), c = x >= bpp ? Int(prev[x - bpp]) : 0
                let pred: Int
                switch f {
                case 1: pred = a
                case 2: pred = b
                case 3: pred = (a + b) / 2
                case 4:
                    let p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c)
                    pred = pa <= pb && pa <= pc ? a : (pb <= pc ? b : c)
                default: pred = 0
                }
                cur[x] = UInt8((Int(raw[row + x]) + pred) & 0xFF)
            }
            for x in Swift.stride(from: 0, to: stride, by: bpp) {
                let rgb = UInt32(cur[x]) << 16 | UInt32(cur[x + 1]) << 8 | UInt32(cur[x + 2])
                colors.insert(rgb)
                if rgb != 0xFFFFFF { nonWhite += 1 }
            }
            swap(&prev, &cur)
        }
        distinctColors = colors.count
    }
}

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
        // Bars have positive sizes and stay inside their drawing.
        func attr(_ e: XMLNode?, _ n: String) -> Double? {
            (e as? XMLElement)?.attributes?.first { $0.localName == n || $0.name == n }?.stringValue.flatMap(Double.init)
        }
        for svg in svgs {
            guard let sw = attr(svg, "width") else { XCTFail("svg without width"); continue }
            for r in try svg.nodes(forXPath: ".//*[local-name()='rect']") {
                guard let w = attr(r, "width"), let x = attr(r, "x") else {
                    XCTFail("rect without numeric x/width: \(r.xmlString)"); continue
                }
                XCTAssertGreaterThan(w, 0); XCTAssertGreaterThanOrEqual(x, 0); XCTAssertLessThanOrEqual(x + w, sw + 0.5)
            }
        }
    }

    func testHTMLReportIsWellFormedXHTMLWithSVGCharts() throws {
        let c = try perplexityComparison()
        let path = dir + "/report.html"
        try HTMLReport.write(c, to: path)
        try checkDocument(try String(contentsOfFile: path, encoding: .utf8))
    }

    /// The headless browser: $CHROMIUM, else chromium / chromium-browser / google-chrome on the PATH or in the usual
    /// directories. Tools/setup.sh installs Debian's chromium.
    static func chromium() -> String? {
        let env = ProcessInfo.processInfo.environment
        if let c = env["CHROMIUM"], FileManager.default.isExecutableFile(atPath: c) { return c }
        let dirs = (env["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin", "/snap/bin"]
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            for d in dirs where FileManager.default.isExecutableFile(atPath: "\(d)/\(name)") { return "\(d)/\(name)" }
        }
        return nil
    }

    /// Runs a command with a time limit; returns its exit status and standard output.
    func runProcess(_ exe: String, _ args: [String], timeout: TimeInterval = 60) throws -> (status: Int32, out: Data) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out; p.standardError = FileHandle.nullDevice
        try p.run()
        let killer = DispatchWorkItem { if p.isRunning { p.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        killer.cancel()
        return (p.terminationStatus, data)
    }

    static let viewport = (width: 1280, height: 4000)

    /// Injected before </body> of a copy of the page: measures every text (HTML text nodes and SVG <text>) and
    /// writes the problems into <pre id="qk-layout"> as JSON: text outside the viewport, SVG text outside its
    /// chart (clipped), and SVG texts of one chart that overlap.
    static let layoutProbe = """
    <script>
    (function () {
      var W = document.documentElement.clientWidth, bad = [], n = 0;
      function off(r) { return r.left < -0.5 || r.right > W + 0.5 || r.top < -0.5; }
      var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
      for (var t = walker.nextNode(); t; t = walker.nextNode()) {
        if (!t.textContent.trim() || t.parentElement.closest('svg,script,title,style')) continue;
        var range = document.createRange(); range.selectNodeContents(t);
        var rs = range.getClientRects();
        for (var i = 0; i < rs.length; i++) { n++; if (off(rs[i])) { bad.push('outside the viewport: ' + t.textContent.trim().slice(0, 80)); break; } }
      }
      var svgs = document.querySelectorAll('svg');
      for (var s = 0; s < svgs.length; s++) {
        var frame = svgs[s].getBoundingClientRect(), boxes = [];
        var texts = svgs[s].querySelectorAll('text');
        for (var k = 0; k < texts.length; k++) {
          var r = texts[k].getBoundingClientRect(), label = texts[k].textContent;
          if (r.width === 0) continue;
          n++;
          if (off(r)) bad.push('outside the viewport: ' + label);
          if (r.left < frame.left - 0.5 || r.right > frame.right + 0.5 || r.top < frame.top - 0.5 || r.bottom > frame.bottom + 0.5)
            bad.push('outside its chart (clipped): ' + label);
          for (var j = 0; j < boxes.length; j++) {
            var o = boxes[j].r;
            var w = Math.min(r.right, o.right) - Math.max(r.left, o.left), h = Math.min(r.bottom, o.bottom) - Math.max(r.top, o.top);
            if (w > 1 && h > 1) bad.push('overlapping text: "' + label + '" and "' + boxes[j].label + '"');
          }
          boxes.push({ r: r, label: label });
        }
      }
      var pre = document.createElement('pre');
      pre.id = 'qk-layout';
      pre.textContent = JSON.stringify({ width: W, texts: n, violations: bad });
      document.body.appendChild(pre);
    })();
    </script>
    """

    /// Renders `html` in headless Chromium: a screenshot that must not be blank, the page's section ids, and the
    /// layout probe's verdict. A missing browser fails the test.
    func checkInChromium(_ html: String, name: String, sections: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        guard let chrome = ReportTests.chromium() else {
            XCTFail("headless Chromium not found (looked for $CHROMIUM, chromium, chromium-browser, google-chrome): run Tools/setup.sh, which installs Debian's chromium", file: file, line: line)
            return
        }
        let (vw, vh) = ReportTests.viewport
        let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=\(vw),\(vh)"]
        // Screenshot of the page as written (no script), then decoded and looked at.
        let page = dir + "/\(name).html", png = dir + "/\(name).png"
        try html.write(toFile: page, atomically: true, encoding: .utf8)
        _ = try runProcess(chrome, flags + ["--screenshot=\(png)", "file://\(page)"])
        guard let shot = try? Data(contentsOf: URL(fileURLWithPath: png)) else {
            XCTFail("\(chrome) wrote no screenshot \(png)", file: file, line: line); return
        }
        let image = try PNGSummary(shot, dir: dir)
        XCTAssertEqual(image.width, vw, file: file, line: line); XCTAssertEqual(image.height, vh, file: file, line: line)
        // A blank page has one colour; a report has text, coloured bars and verdict badges in many.
        XCTAssertGreaterThan(image.distinctColors, 50, "screenshot \(png) looks blank", file: file, line: line)
        XCTAssertGreaterThan(image.nonWhite, 20_000, "screenshot \(png) looks blank", file: file, line: line)

        // The same page with the layout probe, read back from the DOM.
        let probed = dir + "/\(name)-probe.html"
        guard let end = html.range(of: "</body>", options: .backwards) else { XCTFail("no </body>", file: file, line: line); return }
        try html.replacingCharacters(in: end, with: ReportTests.layoutProbe + "</body>").write(toFile: probed, atomically: true, encoding: .utf8)
        let (status, out) = try runProcess(chrome, flags + ["--dump-dom", "file://\(probed)"])
        XCTAssertEqual(status, 0, file: file, line: line)
        let dom = String(decoding: out, as: UTF8.self)
        for id in sections {
            XCTAssertTrue(dom.contains("<section id=\"\(id)\""), "section \(id) missing from \(page)", file: file, line: line)
        }
        guard let a = dom.range(of: "<pre id=\"qk-layout\">"), let b = dom.range(of: "</pre>", range: a.upperBound..<dom.endIndex) else {
            XCTFail("the layout probe did not run (no <pre id=\"qk-layout\"> in the DOM of \(probed))", file: file, line: line); return
        }
        let json = String(dom[a.upperBound..<b.lowerBound]).replacingOccurrences(of: "&quot;", with: "\"")
            .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">").replacingOccurrences(of: "&amp;", with: "&")
        let o = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
        XCTAssertEqual(o["width"] as? Int, vw, file: file, line: line)
        XCTAssertGreaterThan(o["texts"] as? Int ?? 0, 100, "the probe measured almost no text", file: file, line: line)
        XCTAssertEqual(o["violations"] as? [String] ?? ["unreadable"], [], "layout problems in \(page)", file: file, line: line)
    }

    /// The comparison page (`compare --html`) in the browser.
    func testComparisonPageRendersInChromium() throws {
        let html = HTMLReport.render(try perplexityComparison())
        try checkDocument(html)
        try checkInChromium(html, name: "compare", sections: [])
    }

    /// The study page (`report --html`) with everything that used to go wrong: long segment labels, runs at equal
    /// bits per weight with close perplexities, a run without bits per weight, threshold lines a few pixels apart
    /// (one run loses 60 %), several kinds on one page.
    func testStudyPageRendersInChromiumWithoutClippedOrOverlappingText() throws {
        let long = "= Robert Boulter = Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role"
        let segs: [[String: Any]] = [["group": "document", "segment": long, "count": 300, "base": 20.0, "quantized": 23.0],
                                     ["group": "document", "segment": "Kiss You ( One Direction song )", "count": 200, "base": 20.0, "quantized": 21.0],
                                     ["group": "window position", "segment": "224-239", "count": 300, "base": 20.0, "quantized": 20.5],
                                     ["group": "token frequency", "segment": "rare (bottom 50% of ids)", "count": 90, "base": 20.0, "quantized": 27.0]]
        var rtn4 = StudyFixture.rtn4; rtn4["segments"] = segs
        let twin = StudyFixture.ppl("gptq-int4-g32-static", 10.21, bits: 4.5, quant: ["method": "gptq", "bits": 4, "group_size": 32], kldBase: 10.0)
        let int2 = StudyFixture.ppl("rtn-int2", 16.08, bits: 2.5, quant: ["method": "rtn", "bits": 2, "group_size": 32], kldBase: 10.0)
        let objs: [(String, [String: Any])] = [("fp32.json", StudyFixture.fp32), ("fp16.json", StudyFixture.fp16), ("rtn8.json", StudyFixture.rtn8),
                                               ("gptq4.json", StudyFixture.gptq4), ("twin.json", twin), ("rtn4.json", rtn4), ("int2.json", int2),
                                               ("npu.json", StudyFixture.npu), ("layers.json", StudyFixture.layers), ("answers.json", StudyFixture.answers)]
        var files = try objs.map { try StudyFixture.file($0.1, $0.0, in: dir) }
        files.append(try ResultFile(path: compareFixture("retrieval.json")))
        let study = try Study.build(files: files, resamples: 50, seed: 1)
        let html = HTMLReport.render(study)
        _ = try parseXHTML(html)
        XCTAssertFalse(html.contains("<script"))
        try checkInChromium(html, name: "study", sections: ["recommendation", "variants", "perplexity", "retrieval", "answers", "layers", "notes", "files"])
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

import Foundation
import TensorCore

// Small inline SVG charts for the HTML report: horizontal bars and an x/y line-and-point chart. Output is
// well-formed XML (escaped text, self-closed empty elements) so the report is valid XHTML.

public enum SVGChart {
    public static func escape(_ s: String) -> String {
        var o = ""
        o.reserveCapacity(s.count)
        for c in s {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            case "'": o += "&#39;"
            default:
                // Control characters other than tab/newline are not allowed in XML 1.0.
                if let a = c.asciiValue, a < 0x20, a != 0x09, a != 0x0A, a != 0x0D { o += " " } else { o.append(c) }
            }
        }
        return o
    }

    static func n(_ v: Double) -> String { String(format: "%.1f", v) }

    /// "Nice" tick values covering [lo, hi] (1-2-5 steps).
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
        let raw = (hi - lo) / Double(count)
        let mag = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        var t = (lo / step).rounded(.up) * step
        var out: [Double] = []
        while t <= hi + step * 1e-9 { out.append(abs(t) < step * 1e-9 ? 0 : t); t += step }
        return out
    }

    public static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 1e4 || abs(v) < 1e-3 { return String(format: "%.1e", v) }
        let s = String(format: "%.4g", v)
        return s
    }

    /// Estimated advance width of `s` in a sans-serif font at `size` px (a little wide on purpose: layout uses it to
    /// keep text inside the drawing and apart).
    static func textWidth(_ s: String, size: Double) -> Double {
        var w = 0.0
        for c in s {
            if c == " " { w += 0.34 }
            else if c.isNumber { w += 0.64 }
            else if c.isUppercase || "mwMW@%&".contains(c) { w += 0.82 }
            else if c.isLowercase { w += 0.62 }
            else if ".,:;'|!il()[]".contains(c) { w += 0.36 }
            else { w += 0.62 }
        }
        return w * size
    }

    /// `s` shortened in the middle (with an ellipsis) to fit `maxWidth`.
    static func fit(_ s: String, maxWidth: Double, size: Double) -> String {
        guard textWidth(s, size: size) > maxWidth else { return s }
        var chars = Array(s)
        while chars.count > 4 {
            let mid = chars.count / 2
            chars.remove(at: mid)
            let half = chars.count / 2
            let t = String(chars[..<half]) + "…" + String(chars[half...])
            if textWidth(t, size: size) <= maxWidth { return t }
        }
        return String(chars.prefix(3)) + "…"
    }

    struct Box {
        var x0, y0, x1, y1: Double
        func intersects(_ o: Box, gap: Double = 1) -> Bool {
            x0 < o.x1 + gap && o.x0 < x1 + gap && y0 < o.y1 + gap && o.y0 < y1 + gap
        }
        func inside(_ o: Box) -> Bool { x0 >= o.x0 && x1 <= o.x1 && y0 >= o.y0 && y1 <= o.y1 }
    }

    /// The width for a bar chart: `narrow` unless its longest label needs the wide left column of `wide`.
    public static func barWidth(_ labels: [String], narrow: Int = 760, wide: Int = 960) -> Int {
        (labels.map { textWidth($0, size: 12) }.max() ?? 0) + 14 > Double(narrow) * 0.45 ? wide : narrow
    }

    /// Horizontal bars, one per item, with a zero line; negative values extend left. `format` writes the value
    /// printed beside each bar. Labels too long for the left column are shortened in the middle (the full label is
    /// the bar's tooltip); threshold captions that would overlap go on separate lines.
    public static func bars(title: String, items: [(label: String, value: Double)], width: Int = 760,
                            color: String = "#4c78a8", negativeColor: String = "#e45756",
                            markers: [(value: Double, label: String)] = [],
                            format: (Double) -> String = { label($0) }) -> String {
        let w = Double(width), rowH = 22.0
        let maxLeft = (w * 0.45).rounded()
        let shown = items.map { fit($0.label, maxWidth: maxLeft - 14, size: 12) }
        let left = max(60, min(maxLeft, (shown.map { textWidth($0, size: 12) }.max() ?? 0) + 14))
        let right = max(50, (items.map { textWidth(format($0.value), size: 11) }.max() ?? 0) + 14)
        let vals = items.map(\.value).filter(\.isFinite)
        let mv = markers.map(\.value).filter(\.isFinite)
        let lo = min(0, (vals + mv).min() ?? 0), hi = max(0, (vals + mv).max() ?? 0)
        let span = hi - lo == 0 ? 1 : hi - lo
        let plotW = w - left - right
        func x(_ v: Double) -> Double { left + (v - lo) / span * plotW }
        // Threshold captions: beside their line, right of it unless that leaves the drawing; a caption that
        // would touch one already placed goes one line up.
        var captions: [(x: Double, row: Int, anchorEnd: Bool, text: String)] = []
        var rowsUsed: [[Box]] = []
        for m in markers.filter({ $0.value.isFinite }).sorted(by: { $0.value < $1.value }) {
            let tw = textWidth(m.label, size: 10), mx = x(m.value)
            let end = mx + 3 + tw > w - 2
            let box = end ? Box(x0: mx - 3 - tw, y0: 0, x1: mx - 3, y1: 10) : Box(x0: mx + 3, y0: 0, x1: mx + 3 + tw, y1: 10)
            var row = 0
            while row < rowsUsed.count && rowsUsed[row].contains(where: { $0.intersects(box, gap: 6) }) { row += 1 }
            if row == rowsUsed.count { rowsUsed.append([]) }
            rowsUsed[row].append(box)
            captions.append((end ? mx - 3 : mx + 3, row, end, m.label))
        }
        let top = 34.0 + 12 * Double(rowsUsed.count)
        let h = top + rowH * Double(max(items.count, 1)) + 28
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(Int(h))\" viewBox=\"0 0 \(width) \(Int(h))\" role=\"img\">"
        s += "<title>\(escape(title))</title>"
        s += "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">\(escape(title))</text>"
        for (i, it) in items.enumerated() {
            let y = top + rowH * Double(i)
            let v = it.value.isFinite ? it.value : 0
            let x0 = x(min(0, v)), x1 = x(max(0, v))
            s += "<g><title>\(escape(it.label)): \(escape(format(it.value)))</title>"
            s += "<text x=\"\(n(left - 6))\" y=\"\(n(y + 15))\" font-size=\"12\" text-anchor=\"end\">\(escape(shown[i]))</text>"
            s += "<rect x=\"\(n(x0))\" y=\"\(n(y + 3))\" width=\"\(n(max(x1 - x0, 0.5)))\" height=\"\(n(rowH - 6))\" fill=\"\(v < 0 ? negativeColor : color)\"/>"
            s += "<text x=\"\(n(x1 + 4))\" y=\"\(n(y + 15))\" font-size=\"11\">\(escape(format(it.value)))</text></g>"
        }
        let axisY = top + rowH * Double(max(items.count, 1))
        s += "<line x1=\"\(n(x(0)))\" y1=\"\(n(top))\" x2=\"\(n(x(0)))\" y2=\"\(n(axisY))\" stroke=\"#333\"/>"
        s += "<line x1=\"\(n(left))\" y1=\"\(n(axisY))\" x2=\"\(n(left + plotW))\" y2=\"\(n(axisY))\" stroke=\"#999\"/>"
        for m in markers where m.value.isFinite {
            s += "<line x1=\"\(n(x(m.value)))\" y1=\"\(n(top - 4))\" x2=\"\(n(x(m.value)))\" y2=\"\(n(axisY))\" stroke=\"#555\" stroke-dasharray=\"4 3\"/>"
        }
        for c in captions {
            s += "<text x=\"\(n(c.x))\" y=\"\(n(top - 6 - 12 * Double(c.row)))\" font-size=\"10\" fill=\"#555\"\(c.anchorEnd ? " text-anchor=\"end\"" : "")>\(escape(c.text))</text>"
        }
        for t in ticks(lo, hi) {
            s += "<text x=\"\(n(x(t)))\" y=\"\(n(axisY + 16))\" font-size=\"10\" text-anchor=\"middle\">\(escape(label(t)))</text>"
        }
        return s + "</svg>"
    }

    public struct Point: Sendable { public var x: Double; public var y: Double; public var label: String
        public init(x: Double, y: Double, label: String) { self.x = x; self.y = y; self.label = label } }

    /// Points joined in x order, with axes, ticks and a label beside each point. A point whose x is not finite
    /// (unknown, e.g. no bits per weight) is drawn in a separate "unknown" lane at the right, on the same y
    /// scale, and is never joined. Labels are placed beside their point where they touch no other label or point;
    /// a label moved away from its point gets a leader line. `marks: false` draws the lines alone (long curves such
    /// as a loss per training step), without a dot or label per point.
    public static func lines(title: String, xLabel: String, yLabel: String, series: [(name: String, points: [Point])],
                             width: Int = 760, height: Int = 340, marks: Bool = true) -> String {
        let colors = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2"]
        let w = Double(width), h = Double(height)
        let left = 70.0, right = 30.0, bottom = 50.0
        // Legend on the title line when both fit, else on a line of its own.
        let legendW = series.map { textWidth($0.name, size: 11) + 24 }.reduce(0, +)
        let titleW = textWidth(title, size: 14) * 1.08
        let legendOwnLine = left + titleW + 16 > w - right - legendW
        let top = legendOwnLine ? 48.0 : 36.0
        let legendY = legendOwnLine ? 36.0 : 20.0
        let all = series.flatMap(\.points).filter { $0.y.isFinite }
        let known = all.filter(\.x.isFinite)
        let hasLane = all.contains { !$0.x.isFinite }
        let laneW = hasLane ? 90.0 : 0
        let plotRight = w - right - laneW
        var (xlo, xhi) = (known.map(\.x).min() ?? 0, known.map(\.x).max() ?? 1)
        var (ylo, yhi) = (all.map(\.y).min() ?? 0, all.map(\.y).max() ?? 1)
        if xhi == xlo { xlo -= 1; xhi += 1 }
        if yhi == ylo { ylo -= abs(ylo) * 0.05 + 1e-3; yhi += abs(yhi) * 0.05 + 1e-3 }
        let xpad = (xhi - xlo) * 0.06, ypad = (yhi - ylo) * 0.08
        xlo -= xpad; xhi += xpad; ylo -= ypad; yhi += ypad
        let laneX = plotRight + laneW / 2
        func px(_ v: Double) -> Double { v.isFinite ? left + (v - xlo) / (xhi - xlo) * (plotRight - left) : laneX }
        func py(_ v: Double) -> Double { top + (yhi - v) / (yhi - ylo) * (h - top - bottom) }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" role=\"img\">"
        s += "<title>\(escape(title))</title>"
        s += "<text x=\"\(n(left))\" y=\"20\" font-size=\"14\" font-weight=\"bold\">\(escape(title))</text>"
        s += "<rect x=\"\(n(left))\" y=\"\(n(top))\" width=\"\(n(w - left - right))\" height=\"\(n(h - top - bottom))\" fill=\"none\" stroke=\"#999\"/>"
        for t in ticks(xlo, xhi) {
            s += "<line x1=\"\(n(px(t)))\" y1=\"\(n(h - bottom))\" x2=\"\(n(px(t)))\" y2=\"\(n(h - bottom + 4))\" stroke=\"#333\"/>"
            s += "<text x=\"\(n(px(t)))\" y=\"\(n(h - bottom + 16))\" font-size=\"10\" text-anchor=\"middle\">\(escape(label(t)))</text>"
        }
        if hasLane {
            s += "<line x1=\"\(n(plotRight))\" y1=\"\(n(top))\" x2=\"\(n(plotRight))\" y2=\"\(n(h - bottom))\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>"
            s += "<text x=\"\(n(laneX))\" y=\"\(n(h - bottom + 16))\" font-size=\"10\" text-anchor=\"middle\" font-style=\"italic\">unknown</text>"
        }
        for t in ticks(ylo, yhi) {
            s += "<line x1=\"\(n(left - 4))\" y1=\"\(n(py(t)))\" x2=\"\(n(w - right))\" y2=\"\(n(py(t)))\" stroke=\"#eee\"/>"
            s += "<text x=\"\(n(left - 6))\" y=\"\(n(py(t) + 3))\" font-size=\"10\" text-anchor=\"end\">\(escape(label(t)))</text>"
        }
        s += "<text x=\"\(n((left + plotRight) / 2))\" y=\"\(n(h - 10))\" font-size=\"12\" text-anchor=\"middle\">\(escape(xLabel))</text>"
        s += "<text x=\"14\" y=\"\(n((top + h - bottom) / 2))\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 \(n((top + h - bottom) / 2)))\">\(escape(yLabel))</text>"
        // Label placement, left to right: the first free spot beside the point, then further up or down.
        let area = Box(x0: left + 2, y0: top + 2, x1: w - right - 2, y1: h - bottom - 2)
        let dots = all.filter { _ in marks }.map { Box(x0: px($0.x) - 5, y0: py($0.y) - 5, x1: px($0.x) + 5, y1: py($0.y) + 5) }
        var taken: [Box] = []
        var placed: [String: (x: Double, y: Double, end: Bool, leader: Bool)] = [:]
        let order = series.enumerated().flatMap { si, ser in ser.points.enumerated().map { (si, $0, $1) } }
            .filter { marks && $0.2.y.isFinite }
            .sorted { (px($0.2.x), py($0.2.y)) < (px($1.2.x), py($1.2.y)) }
        for (si, pi, q) in order {
            let (cx, cy) = (px(q.x), py(q.y))
            let tw = textWidth(q.label, size: 10)
            var options: [(dy: Double, end: Bool)] = [(-6, false), (13, false), (-6, true), (13, true)]
            for k in 1...10 {
                let up = -6 - 12 * Double(k), down = 13 + 12 * Double(k)
                options += [(up, false), (down, false), (up, true), (down, true)]
            }
            func box(_ o: (dy: Double, end: Bool)) -> Box {
                let y = cy + o.dy
                return o.end ? Box(x0: cx - 6 - tw, y0: y - 9, x1: cx - 6, y1: y + 2) : Box(x0: cx + 6, y0: y - 9, x1: cx + 6 + tw, y1: y + 2)
            }
            let free = options.first { o in
                let b = box(o)
                return b.inside(area) && !taken.contains { $0.intersects(b) } && !dots.contains { $0.intersects(b, gap: 0) }
            }
            let pick = free ?? options.first { box($0).inside(area) } ?? options[0]
            taken.append(box(pick))
            placed["\(si)/\(pi)"] = (pick.end ? cx - 6 : cx + 6, cy + pick.dy, pick.end, abs(pick.dy) > 13)
        }
        for (si, ser) in series.enumerated() {
            let c = colors[si % colors.count]
            let p = ser.points.enumerated().filter { $0.element.x.isFinite && $0.element.y.isFinite }.sorted { $0.element.x < $1.element.x }
            if p.count > 1 {
                s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.5\" points=\"" + p.map { "\(n(px($0.element.x))),\(n(py($0.element.y)))" }.joined(separator: " ") + "\"/>"
            }
            for (pi, q) in ser.points.enumerated() where marks && q.y.isFinite {
                let xs = q.x.isFinite ? label(q.x) : "unknown"
                s += "<g><title>\(escape(ser.name)) \(escape(q.label)): \(escape(xs)), \(escape(label(q.y)))</title>"
                s += "<circle cx=\"\(n(px(q.x)))\" cy=\"\(n(py(q.y)))\" r=\"4\" fill=\"\(c)\"" + (q.x.isFinite ? "" : " stroke=\"#333\"") + "/>"
                if let l = placed["\(si)/\(pi)"] {
                    if l.leader {
                        s += "<line x1=\"\(n(px(q.x)))\" y1=\"\(n(py(q.y)))\" x2=\"\(n(l.x))\" y2=\"\(n(l.y - 4))\" stroke=\"#bbb\"/>"
                    }
                    s += "<text x=\"\(n(l.x))\" y=\"\(n(l.y))\" font-size=\"10\"\(l.end ? " text-anchor=\"end\"" : "")>\(escape(q.label))</text>"
                }
                s += "</g>"
            }
            // Legend: right-aligned as a block, each entry a dot then its name.
            let x0 = w - right - legendW + series[..<si].map { textWidth($0.name, size: 11) + 24 }.reduce(0, +)
            s += "<circle cx=\"\(n(x0 + 8))\" cy=\"\(n(legendY - 4))\" r=\"4\" fill=\"\(c)\"/>"
            s += "<text x=\"\(n(x0 + 16))\" y=\"\(n(legendY))\" font-size=\"11\" fill=\"\(c)\">\(escape(ser.name))</text>"
        }
        return s + "</svg>"
    }
}

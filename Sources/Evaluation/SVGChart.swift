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

    /// Horizontal bars, one per item, with a zero line; negative values extend left. `format` writes the value
    /// printed beside each bar.
    public static func bars(title: String, items: [(label: String, value: Double)], width: Int = 760,
                            color: String = "#4c78a8", negativeColor: String = "#e45756",
                            markers: [(value: Double, label: String)] = [],
                            format: (Double) -> String = { label($0) }) -> String {
        let rowH = 22.0, top = markers.isEmpty ? 34.0 : 46.0, left = min(260.0, 40 + 7.0 * Double(items.map(\.label.count).max() ?? 10)), right = 90.0
        let h = top + rowH * Double(max(items.count, 1)) + 28
        let w = Double(width)
        let vals = items.map(\.value).filter(\.isFinite)
        let mv = markers.map(\.value).filter(\.isFinite)
        let lo = min(0, (vals + mv).min() ?? 0), hi = max(0, (vals + mv).max() ?? 0)
        let span = hi - lo == 0 ? 1 : hi - lo
        let plotW = w - left - right
        func x(_ v: Double) -> Double { left + (v - lo) / span * plotW }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(Int(h))\" viewBox=\"0 0 \(width) \(Int(h))\" role=\"img\">"
        s += "<title>\(escape(title))</title>"
        s += "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">\(escape(title))</text>"
        for (i, it) in items.enumerated() {
            let y = top + rowH * Double(i)
            let v = it.value.isFinite ? it.value : 0
            let x0 = x(min(0, v)), x1 = x(max(0, v))
            s += "<g><title>\(escape(it.label)): \(escape(format(it.value)))</title>"
            s += "<text x=\"\(n(left - 6))\" y=\"\(n(y + 15))\" font-size=\"12\" text-anchor=\"end\">\(escape(it.label))</text>"
            s += "<rect x=\"\(n(x0))\" y=\"\(n(y + 3))\" width=\"\(n(max(x1 - x0, 0.5)))\" height=\"\(n(rowH - 6))\" fill=\"\(v < 0 ? negativeColor : color)\"/>"
            s += "<text x=\"\(n(x1 + 4))\" y=\"\(n(y + 15))\" font-size=\"11\">\(escape(format(it.value)))</text></g>"
        }
        let axisY = top + rowH * Double(max(items.count, 1))
        s += "<line x1=\"\(n(x(0)))\" y1=\"\(n(top))\" x2=\"\(n(x(0)))\" y2=\"\(n(axisY))\" stroke=\"#333\"/>"
        s += "<line x1=\"\(n(left))\" y1=\"\(n(axisY))\" x2=\"\(n(left + plotW))\" y2=\"\(n(axisY))\" stroke=\"#999\"/>"
        for m in markers where m.value.isFinite {
            s += "<line x1=\"\(n(x(m.value)))\" y1=\"\(n(top - 4))\" x2=\"\(n(x(m.value)))\" y2=\"\(n(axisY))\" stroke=\"#555\" stroke-dasharray=\"4 3\"/>"
            s += "<text x=\"\(n(x(m.value) + 3))\" y=\"\(n(top - 6))\" font-size=\"10\" fill=\"#555\">\(escape(m.label))</text>"
        }
        for t in ticks(lo, hi) {
            s += "<text x=\"\(n(x(t)))\" y=\"\(n(axisY + 16))\" font-size=\"10\" text-anchor=\"middle\">\(escape(label(t)))</text>"
        }
        return s + "</svg>"
    }

    public struct Point: Sendable { public var x: Double; public var y: Double; public var label: String
        public init(x: Double, y: Double, label: String) { self.x = x; self.y = y; self.label = label } }

    /// Points joined in x order, with axes, ticks and a label beside each point.
    public static func lines(title: String, xLabel: String, yLabel: String, series: [(name: String, points: [Point])],
                             width: Int = 760, height: Int = 340) -> String {
        let colors = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2"]
        let left = 70.0, right = 30.0, top = 36.0, bottom = 50.0
        let w = Double(width), h = Double(height)
        let pts = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        var (xlo, xhi) = (pts.map(\.x).min() ?? 0, pts.map(\.x).max() ?? 1)
        var (ylo, yhi) = (pts.map(\.y).min() ?? 0, pts.map(\.y).max() ?? 1)
        if xhi == xlo { xlo -= 1; xhi += 1 }
        if yhi == ylo { ylo -= abs(ylo) * 0.05 + 1e-3; yhi += abs(yhi) * 0.05 + 1e-3 }
        let xpad = (xhi - xlo) * 0.06, ypad = (yhi - ylo) * 0.08
        xlo -= xpad; xhi += xpad; ylo -= ypad; yhi += ypad
        func px(_ v: Double) -> Double { left + (v - xlo) / (xhi - xlo) * (w - left - right) }
        func py(_ v: Double) -> Double { top + (yhi - v) / (yhi - ylo) * (h - top - bottom) }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" role=\"img\">"
        s += "<title>\(escape(title))</title>"
        s += "<text x=\"\(n(left))\" y=\"20\" font-size=\"14\" font-weight=\"bold\">\(escape(title))</text>"
        s += "<rect x=\"\(n(left))\" y=\"\(n(top))\" width=\"\(n(w - left - right))\" height=\"\(n(h - top - bottom))\" fill=\"none\" stroke=\"#999\"/>"
        for t in ticks(xlo, xhi) {
            s += "<line x1=\"\(n(px(t)))\" y1=\"\(n(h - bottom))\" x2=\"\(n(px(t)))\" y2=\"\(n(h - bottom + 4))\" stroke=\"#333\"/>"
            s += "<text x=\"\(n(px(t)))\" y=\"\(n(h - bottom + 16))\" font-size=\"10\" text-anchor=\"middle\">\(escape(label(t)))</text>"
        }
        for t in ticks(ylo, yhi) {
            s += "<line x1=\"\(n(left - 4))\" y1=\"\(n(py(t)))\" x2=\"\(n(w - right))\" y2=\"\(n(py(t)))\" stroke=\"#eee\"/>"
            s += "<text x=\"\(n(left - 6))\" y=\"\(n(py(t) + 3))\" font-size=\"10\" text-anchor=\"end\">\(escape(label(t)))</text>"
        }
        s += "<text x=\"\(n((left + w - right) / 2))\" y=\"\(n(h - 10))\" font-size=\"12\" text-anchor=\"middle\">\(escape(xLabel))</text>"
        s += "<text x=\"14\" y=\"\(n((top + h - bottom) / 2))\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 \(n((top + h - bottom) / 2)))\">\(escape(yLabel))</text>"
        for (si, ser) in series.enumerated() {
            let c = colors[si % colors.count]
            let p = ser.points.filter { $0.x.isFinite && $0.y.isFinite }.sorted { $0.x < $1.x }
            if p.count > 1 {
                s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.5\" points=\"" + p.map { "\(n(px($0.x))),\(n(py($0.y)))" }.joined(separator: " ") + "\"/>"
            }
            for q in p {
                s += "<g><title>\(escape(ser.name)) \(escape(q.label)): \(escape(label(q.x))), \(escape(label(q.y)))</title>"
                s += "<circle cx=\"\(n(px(q.x)))\" cy=\"\(n(py(q.y)))\" r=\"4\" fill=\"\(c)\"/>"
                // Labels near the right edge go to the left of their point.
                let leftSide = px(q.x) > w - right - 150
                s += "<text x=\"\(n(px(q.x) + (leftSide ? -6 : 6)))\" y=\"\(n(py(q.y) - 6))\" font-size=\"10\"\(leftSide ? " text-anchor=\"end\"" : "")>\(escape(q.label))</text></g>"
            }
            // Legend: right-aligned on the title line, one entry per series.
            let after = series[(si + 1)...].map { Double($0.name.count) * 7 + 24 }.reduce(0, +)
            s += "<circle cx=\"\(n(w - right - after - Double(ser.name.count) * 7 - 10))\" cy=\"16\" r=\"4\" fill=\"\(c)\"/>"
            s += "<text x=\"\(n(w - right - after))\" y=\"20\" font-size=\"11\" text-anchor=\"end\" fill=\"\(c)\">\(escape(ser.name))</text>"
        }
        return s + "</svg>"
    }
}

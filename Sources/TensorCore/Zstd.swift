import CZstd
import Foundation

/// zstd through libzstd's streaming API, so inputs of any size and frames without a recorded content size work.
public enum Zstd {
    public static func compress(_ input: Data, level: Int32 = 19) throws -> Data {
        guard let ctx = ZSTD_createCCtx() else { throw QuantKitError(.io, "zstd: cannot create compression context") }
        defer { ZSTD_freeCCtx(ctx) }
        ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(ctx, ZSTD_c_checksumFlag, 1)
        ZSTD_CCtx_setPledgedSrcSize(ctx, UInt64(input.count))
        var out = Data()
        let chunk = ZSTD_CStreamOutSize()
        var buffer = [UInt8](repeating: 0, count: chunk)
        try input.withUnsafeBytes { (src: UnsafeRawBufferPointer) in
            var inBuf = ZSTD_inBuffer(src: src.baseAddress, size: src.count, pos: 0)
            while true {
                let remaining = try buffer.withUnsafeMutableBytes { dst -> Int in
                    var outBuf = ZSTD_outBuffer(dst: dst.baseAddress, size: chunk, pos: 0)
                    let r = ZSTD_compressStream2(ctx, &outBuf, &inBuf, ZSTD_e_end)
                    if ZSTD_isError(r) != 0 { throw QuantKitError(.io, "zstd compression failed: \(String(cString: ZSTD_getErrorName(r)))") }
                    out.append(dst.baseAddress!.assumingMemoryBound(to: UInt8.self), count: outBuf.pos)
                    return r
                }
                if remaining == 0 { break }
            }
        }
        return out
    }

    /// Decompresses every frame in `input`; `source` names the file in errors.
    public static func decompress(_ input: Data, source: String = "zstd stream") throws -> Data {
        guard let ctx = ZSTD_createDCtx() else { throw QuantKitError(.io, "zstd: cannot create decompression context") }
        defer { ZSTD_freeDCtx(ctx) }
        var out = Data()
        let chunk = ZSTD_DStreamOutSize()
        var buffer = [UInt8](repeating: 0, count: chunk)
        guard !input.isEmpty else { throw QuantKitError(.format, "\(source): empty zstd stream") }
        try input.withUnsafeBytes { (src: UnsafeRawBufferPointer) in
            var inBuf = ZSTD_inBuffer(src: src.baseAddress, size: src.count, pos: 0)
            var lastHint = 0
            while inBuf.pos < inBuf.size || lastHint != 0 {
                let before = inBuf.pos
                var produced = 0
                let hint = try buffer.withUnsafeMutableBytes { dst -> Int in
                    var outBuf = ZSTD_outBuffer(dst: dst.baseAddress, size: chunk, pos: 0)
                    let r = ZSTD_decompressStream(ctx, &outBuf, &inBuf)
                    if ZSTD_isError(r) != 0 {
                        throw QuantKitError(.format, "\(source): corrupt zstd stream (\(String(cString: ZSTD_getErrorName(r))))")
                    }
                    out.append(dst.baseAddress!.assumingMemoryBound(to: UInt8.self), count: outBuf.pos)
                    produced = outBuf.pos
                    return r
                }
                lastHint = hint
                if inBuf.pos == inBuf.size && hint != 0 && produced < chunk && inBuf.pos == before {
                    throw QuantKitError(.format, "\(source): truncated zstd stream (frame incomplete)")
                }
                if inBuf.pos == inBuf.size && hint != 0 && produced == 0 {
                    throw QuantKitError(.format, "\(source): truncated zstd stream (frame incomplete)")
                }
            }
        }
        return out
    }
}

/// One zstd frame written to a file piece by piece, with `Zstd.compress`'s parameters (level, checksum, pledged
/// size): the output bytes equal `Zstd.compress` of the concatenated pieces, and memory stays at libzstd's
/// window whatever the input's size.
public final class ZstdFileWriter {
    private let handle: FileHandle
    private let ctx: OpaquePointer
    private var buffer: [UInt8]
    private var finished = false

    /// `pledgedSize`: the total bytes that will be written (recorded in the frame header, as `compress` does).
    public init(handle: FileHandle, level: Int32, pledgedSize: Int) throws {
        guard let c = ZSTD_createCCtx() else { throw QuantKitError(.io, "zstd: cannot create compression context") }
        self.handle = handle
        ctx = c
        ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(ctx, ZSTD_c_checksumFlag, 1)
        ZSTD_CCtx_setPledgedSrcSize(ctx, UInt64(pledgedSize))
        buffer = [UInt8](repeating: 0, count: ZSTD_CStreamOutSize())
    }

    deinit { ZSTD_freeCCtx(ctx) }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try run(bytes, end: false)
    }

    public func write(_ data: Data) throws {
        try data.withUnsafeBytes { try write($0) }
    }

    /// Ends the frame (flushes libzstd's buffers and writes the checksum).
    public func finish() throws {
        guard !finished else { return }
        finished = true
        try run(UnsafeRawBufferPointer(start: nil, count: 0), end: true)
    }

    private func run(_ src: UnsafeRawBufferPointer, end: Bool) throws {
        var inBuf = ZSTD_inBuffer(src: src.baseAddress, size: src.count, pos: 0)
        let chunk = buffer.count
        while true {
            let (remaining, produced) = try buffer.withUnsafeMutableBytes { dst -> (Int, Int) in
                var outBuf = ZSTD_outBuffer(dst: dst.baseAddress, size: chunk, pos: 0)
                let r = ZSTD_compressStream2(ctx, &outBuf, &inBuf, end ? ZSTD_e_end : ZSTD_e_continue)
                if ZSTD_isError(r) != 0 { throw QuantKitError(.io, "zstd compression failed: \(String(cString: ZSTD_getErrorName(r)))") }
                return (r, outBuf.pos)
            }
            if produced > 0 { try buffer.withUnsafeBytes { try handle.write(contentsOf: Data($0.prefix(produced))) } }
            if end ? remaining == 0 : inBuf.pos == inBuf.size { break }
        }
    }
}

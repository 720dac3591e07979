import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Bytes a tensor lives in: a read-only mmapped file region (zero copy) or owned, 64-byte aligned memory.
public final class TensorStorage: @unchecked Sendable {
    public let bytes: UnsafeMutableRawPointer
    public let byteCount: Int
    public let isMapped: Bool
    private let mapping: MappedFile?

    /// Owned, zero-filled memory.
    public init(byteCount: Int) {
        self.byteCount = byteCount
        self.bytes = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
        self.bytes.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 1))
        self.isMapped = false
        self.mapping = nil
    }

    /// A view of `byteCount` bytes at `offset` inside a mapped file; keeps the mapping alive.
    public init(mapping: MappedFile, offset: Int, byteCount: Int) {
        self.mapping = mapping
        self.bytes = UnsafeMutableRawPointer(mutating: mapping.base + offset)
        self.byteCount = byteCount
        self.isMapped = true
    }

    deinit {
        if mapping == nil { bytes.deallocate() }
    }

    /// Drops this view's resident file pages (whole pages inside it) from the process: a later read faults them
    /// back in from the page cache. For weights that were copied into another form (packed panels, decoded
    /// codes), so their file bytes stop counting against peak memory. Owned memory is left alone.
    public func releaseResidentPages() {
        releaseResidentPages(bytes: 0..<byteCount)
    }

    /// The same for the whole pages inside bytes `range` of this view (a part already copied elsewhere).
    public func releaseResidentPages(bytes range: Range<Int>) {
        let range = range.clamped(to: 0..<byteCount)
        guard isMapped, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: bytes) + range.lowerBound + page - 1) / page * page
        let end = (Int(bitPattern: bytes) + range.upperBound) / page * page
        guard end > start, let p = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(p, end - start, Int32(MADV_DONTNEED))
    }
}

/// A whole file mapped read-only. Pages are only read when touched.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let base: UnsafeRawPointer
    public let size: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw QuantKitError(.io, "\(path): cannot open (\(String(cString: strerror(errno))))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw QuantKitError(.io, "\(path): cannot stat") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw QuantKitError(.io, "\(path): not a regular file") }
        size = Int(st.st_size)
        if size == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64))
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw QuantKitError(.io, "\(path): mmap failed (\(String(cString: strerror(errno))))")
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if size == 0 { UnsafeMutableRawPointer(mutating: base).deallocate() } else { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }
}

/// Process memory housekeeping.
public enum HeapMemory {
    /// Hands freed heap memory back to the system (glibc keeps large freed blocks otherwise: a layer-by-layer job
    /// that frees each layer's working set would see its resident size creep up by them). A no-op elsewhere.
    public static func returnFreed() {
        if let trim = mallocTrim { _ = trim(0) }
    }

    // glibc's malloc_trim (malloc.h is not in the Glibc module); nil on other C libraries.
    private typealias Trim = @convention(c) (Int) -> Int32
    nonisolated(unsafe) private static let mallocTrim: Trim? = {
        #if canImport(Glibc)
        guard let f = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(f, to: Trim.self)
        #else
        return nil
        #endif
    }()
}

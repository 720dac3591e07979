import CHints
import Foundation

/// What the processor offers beyond the AVX2 + FMA + F16C that every target is built for, checked once at run time.
/// `QUANTKIT_ISA=avx2` turns the extra paths off (for same-machine comparisons and tests of the AVX2 kernels).
public enum CPUFeatures {
    /// AVX512-VNNI (with F, BW, VL and the OS's AVX-512 state): the integer kernels use vpdpbusd (KernelsVNNI).
    public static let avx512VNNI: Bool = hardwareAVX512VNNI && ProcessInfo.processInfo.environment["QUANTKIT_ISA"] != "avx2"

    /// What cpuid and xgetbv report, whatever QUANTKIT_ISA says.
    public static let hardwareAVX512VNNI: Bool = quantkit_cpu_has_avx512vnni() != 0

    /// The instruction set the integer kernels run on, for benchmark and result lines.
    public static var integerKernelISA: String { avx512VNNI ? "avx512-vnni" : "avx2" }
}

import CHints
import Synchronization

/// What the processor offers beyond the AVX2 + FMA + F16C that every target is built for, checked once at run time.
public enum CPUFeatures {
    /// What cpuid and xgetbv report: AVX512F, BW, VL and VNNI, with the OS saving the AVX-512 state.
    public static let hardwareAVX512VNNI: Bool = quantkit_cpu_has_avx512vnni() != 0

    /// Whether the integer kernels use vpdpbusd (KernelsVNNI): where the hardware has it, unless turned off (the
    /// CLI maps QUANTKIT_ISA=avx2 onto this, for same-machine comparisons with the AVX2 tiles).
    public static var avx512VNNI: Bool {
        get { hardwareAVX512VNNI && vnniAllowed.load(ordering: .relaxed) }
        set { vnniAllowed.store(newValue, ordering: .relaxed) }
    }
    private static let vnniAllowed = Atomic<Bool>(true)

    /// The instruction set the integer kernels run on, for benchmark lines.
    public static var integerKernelISA: String { avx512VNNI ? "avx512-vnni" : "avx2" }
}

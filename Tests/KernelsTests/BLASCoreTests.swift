import Kernels
import XCTest

/// The OpenBLAS core selm re-executes itself with (kernels_best_core_for_cpu): on a CPU with
/// AVX512_BF16 it is Cooperlake, whose sgemm measured fastest on AMD Zen 4 (README "OpenBLAS core").
final class BLASCoreTests: XCTestCase {
    func testBestCoreOnBF16CPUsIsCooperlake() throws {
        let best = String(cString: kernels_best_core_for_cpu())
        if ck_isa_detected() >= Int32(CK_ISA_AVX512BF16) {
            XCTAssertEqual(best, "Cooperlake")
        } else if ck_isa_detected() >= Int32(CK_ISA_AVX512VNNI) {
            XCTAssertEqual(best, "SkylakeX")
        }
        // A process that OpenBLAS started on SkylakeX re-executes itself on Cooperlake.
        XCTAssertGreaterThan(kernels_core_rank("Cooperlake"), kernels_core_rank("SkylakeX"))
        XCTAssertEqual(kernels_core_rank("SapphireRapids"), kernels_core_rank("Cooperlake"))
    }
}

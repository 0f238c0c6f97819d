import Foundation
import XCTest
import Kernels

/// The BLAS lock that lets the engine and the learner share OpenBLAS: chunked products are exact,
/// concurrent threads get correct results, and a high-priority thread waits at most one chunk.
final class SharingTests: XCTestCase {
    override func tearDown() {
        kernels_set_sharing(Int32(KERNELS_SHARING_NONE), 2e9)
        kernels_set_thread_priority(1)
    }

    func product(T: Int, C: Int, OC: Int, seed: Int) -> ([Float], [Float], [Float]) {
        var x = [Float](repeating: 0, count: T * C), w = [Float](repeating: 0, count: OC * C)
        for i in x.indices { x[i] = Float((i * 7919 + seed) % 997) / 997 - 0.5 }
        for i in w.indices { w[i] = Float((i * 104729 + seed) % 991) / 991 - 0.5 }
        var y = [Float](repeating: 0, count: T * OC)
        matmul_forward(&y, x, w, Int32(T), Int32(C), Int32(OC), 0)
        return (x, w, y)
    }

    static func close(_ a: [Float], _ b: [Float]) -> Bool {
        var num: Float = 0, den: Float = 0
        for i in a.indices { num = max(num, abs(a[i] - b[i])); den = max(den, abs(b[i])) }
        return num <= 1e-6 * den
    }

    /// A low-priority thread's product split into row chunks equals the unsplit product (to float
    /// rounding: OpenBLAS's edge tiles round differently, so not bit for bit), forward and backward.
    func testChunkedProductsAreExact() {
        let T = 300, C = 64, OC = 96
        let (x, w, reference) = product(T: T, C: C, OC: OC, seed: 1)
        var dx0 = [Float](repeating: 0, count: T * C), dw0 = [Float](repeating: 0, count: OC * C)
        matmul_backward(&dx0, &dw0, reference, x, w, Int32(T), Int32(C), Int32(OC))
        kernels_set_sharing(Int32(KERNELS_SHARING_PRIORITY), 2.0 * Double(C * OC) * 7)  // 7 rows per chunk
        kernels_set_thread_priority(0)
        var y = [Float](repeating: 0, count: T * OC)
        matmul_forward(&y, x, w, Int32(T), Int32(C), Int32(OC), 0)
        XCTAssertTrue(Self.close(y, reference))
        var dx = [Float](repeating: 0, count: T * C), dw = [Float](repeating: 0, count: OC * C)
        matmul_backward(&dx, &dw, reference, x, w, Int32(T), Int32(C), Int32(OC))
        XCTAssertTrue(Self.close(dx, dx0))
        XCTAssertTrue(Self.close(dw, dw0))
    }

    /// Two threads multiplying at once under each sharing mode get the same results as alone.
    func testConcurrentThreadsUnderEveryMode() {
        let (xa, wa, ya) = product(T: 64, C: 128, OC: 256, seed: 2)
        let (xb, wb, yb) = product(T: 200, C: 96, OC: 64, seed: 3)
        for mode in [KERNELS_SHARING_PRIORITY, KERNELS_SHARING_FIFO] {
            kernels_set_sharing(Int32(mode), 1e5)
            final class Flags: @unchecked Sendable { var ok = [true, true] }
            let flags = Flags()
            DispatchQueue.concurrentPerform(iterations: 2) { i in
                kernels_set_thread_priority(i == 0 ? 1 : 0)
                for _ in 0..<50 {
                    if i == 0 {
                        var y = [Float](repeating: 0, count: ya.count)
                        matmul_forward(&y, xa, wa, 64, 128, 256, 0)
                        if !SharingTests.close(y, ya) { flags.ok[0] = false }
                    } else {
                        var y = [Float](repeating: 0, count: yb.count)
                        matmul_forward(&y, xb, wb, 200, 96, 64, 0)
                        if !SharingTests.close(y, yb) { flags.ok[1] = false }
                    }
                }
            }
            XCTAssertEqual(flags.ok, [true, true], "mode \(mode)")
        }
    }
}

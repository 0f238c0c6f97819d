import Foundation

/// The preference loss family. Per pair, with z = (logπ(y_w) − logπ(y_l)) − (logπ_ref(y_w) − logπ_ref(y_l)):
/// - `sigmoid` (DPO / SELM): −log σ(β·z)
/// - `ipo`: (z − 1/(2β))²
/// - `hinge`: relu(1 − β·z)
/// each plus SELM's optimism term α·β·(logπ(y_ref) − logπ_ref(y_ref)) when the pair carries the
/// reference policy's own response y_ref. α = 0 gives plain DPO / IPO / hinge.
public enum LossType: String, Sendable, Codable, CaseIterable {
    case sigmoid, ipo, hinge
}

/// Loss hyper-parameters. Defaults are the SELM paper's recipe (β 0.01, α 0.001).
public struct LossConfig: Sendable, Codable, Equatable {
    public var type: LossType = .sigmoid
    /// Strength of the implicit KL regulariser: larger keeps the policy closer to the reference.
    public var beta: Double = 0.01
    /// Weight of SELM's optimism (exploration) term; 0 = DPO. The paper uses 1e-3 (Zephyr/Mistral)
    /// and 1e-4 (Llama-3).
    public var alpha: Double = 0.001
    public init(type: LossType = .sigmoid, beta: Double = 0.01, alpha: Double = 0.001) {
        self.type = type; self.beta = beta; self.alpha = alpha
    }
}

/// Sequence log-probabilities of one pair under the policy and the reference.
public struct PairLogps: Sendable, Equatable {
    public var chosen: Double, rejected: Double
    /// logπ(y_ref), nil when the pair has no reference response.
    public var response: Double?
    public var refChosen: Double, refRejected: Double
    public var refResponse: Double?
    public var weight: Double = 1
    public init(chosen: Double, rejected: Double, response: Double?, refChosen: Double, refRejected: Double,
                refResponse: Double?, weight: Double = 1) {
        self.chosen = chosen; self.rejected = rejected; self.response = response
        self.refChosen = refChosen; self.refRejected = refRejected; self.refResponse = refResponse; self.weight = weight
    }
}

/// Loss value, gradients with respect to each policy sequence log-probability, and the metrics TRL
/// and the SELM code log.
public struct LossResult: Sendable {
    public var loss: Double
    /// dLoss/dlogπ(y_w), dLoss/dlogπ(y_l), dLoss/dlogπ(y_ref) per pair (the last 0 without y_ref).
    public var dChosen: [Double], dRejected: [Double], dResponse: [Double]
    /// `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`,
    /// `logps/rejected`, `logps/pi_response`, `logps/ref_response`, `loss`.
    public var metrics: [String: Double]
}

extension LossConfig {
    /// Mean (weighted by each pair's weight) loss over `pairs`, with its gradients and metrics.
    public func evaluate(_ pairs: [PairLogps]) -> LossResult {
        let n = Double(pairs.count)
        var loss = 0.0
        var dC: [Double] = [], dR: [Double] = [], dY: [Double] = []
        var rc = 0.0, rr = 0.0, acc = 0.0, lc = 0.0, lr = 0.0, ly = 0.0, lyRef = 0.0
        var nResp = 0.0
        for p in pairs {
            let z = (p.chosen - p.rejected) - (p.refChosen - p.refRejected)
            let l: Double, dz: Double
            switch type {
            case .sigmoid:
                // −log σ(βz) = softplus(−βz), computed stably; d/dz = −β·σ(−βz)
                let x = -beta * z
                l = x > 0 ? x + log1p(exp(-x)) : log1p(exp(x))
                dz = -beta / (1 + exp(-x))
            case .ipo:
                let d = z - 1 / (2 * beta)
                l = d * d
                dz = 2 * d
            case .hinge:
                let m = 1 - beta * z
                l = max(0, m)
                dz = m > 0 ? -beta : 0
            }
            var total = l
            var dy = 0.0
            if let y = p.response, let yr = p.refResponse {
                total += alpha * beta * (y - yr)
                dy = alpha * beta
                ly += y; lyRef += yr; nResp += 1
            }
            loss += p.weight * total / n
            dC.append(p.weight * dz / n)
            dR.append(-p.weight * dz / n)
            dY.append(p.weight * dy / n)
            let cr = beta * (p.chosen - p.refChosen), rj = beta * (p.rejected - p.refRejected)
            rc += cr; rr += rj; acc += cr > rj ? 1 : 0
            lc += p.chosen; lr += p.rejected
        }
        let m: [String: Double] = [
            "loss": loss,
            "rewards/chosen": rc / n, "rewards/rejected": rr / n,
            "rewards/accuracies": acc / n, "rewards/margins": (rc - rr) / n,
            "logps/chosen": lc / n, "logps/rejected": lr / n,
            "logps/pi_response": nResp > 0 ? ly / nResp : .nan,
            "logps/ref_response": nResp > 0 ? lyRef / nResp : .nan,
        ]
        return LossResult(loss: loss, dChosen: dC, dRejected: dR, dResponse: dY, metrics: m)
    }
}

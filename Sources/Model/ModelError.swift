/// Every way loading, converting or running a model can fail. Each case names the file and the
/// field or tensor concerned, so the message alone tells the user what to fix.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    /// The file could not be opened, read, mapped or written.
    case io(file: String, reason: String)
    /// The file ends before a structure it declares (header, metadata, tensor info or tensor data).
    case truncated(file: String, what: String)
    /// The bytes are not what the format allows (bad magic, unsupported version, bad length, bad JSON).
    case corrupt(file: String, what: String)
    /// A required field (GGUF metadata key or config.json key) is missing or has the wrong type.
    case missingField(file: String, field: String)
    /// A field has a value this project cannot use.
    case badField(file: String, field: String, reason: String)
    /// The model's architecture is not Llama.
    case unsupportedArchitecture(file: String, architecture: String)
    /// A tensor's storage type is not one this project dequantises.
    case unsupportedTensorType(file: String, tensor: String, type: String)
    /// A tensor the architecture needs is absent.
    case missingTensor(file: String, tensor: String)
    /// A tensor has a shape other than the config implies.
    case badTensorShape(file: String, tensor: String, expected: [Int], found: [Int])
    /// A token id outside the vocabulary, or a sequence too long for the context.
    case badInput(field: String, reason: String)

    public var description: String {
        switch self {
        case let .io(file, reason): return "\(file): \(reason)"
        case let .truncated(file, what): return "\(file): file is truncated (\(what))"
        case let .corrupt(file, what): return "\(file): corrupt file (\(what))"
        case let .missingField(file, field): return "\(file): missing field '\(field)'"
        case let .badField(file, field, reason): return "\(file): field '\(field)': \(reason)"
        case let .unsupportedArchitecture(file, arch):
            return "\(file): unsupported architecture '\(arch)' (only Llama-architecture models are supported)"
        case let .unsupportedTensorType(file, tensor, type):
            return "\(file): tensor '\(tensor)' has unsupported type \(type) (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)"
        case let .missingTensor(file, tensor): return "\(file): missing tensor '\(tensor)'"
        case let .badTensorShape(file, tensor, expected, found):
            return "\(file): tensor '\(tensor)' has shape \(found), expected \(expected)"
        case let .badInput(field, reason): return "\(field): \(reason)"
        }
    }
}

import Foundation

/// Foundation's JSON parser returns numbers and booleans alike as NSNumber (and on Linux `1 is Bool`
/// holds for the number 1): this tells a JSON `true`/`false` from a number.
public func isJSONBoolean(_ v: Any) -> Bool {
    guard let n = v as? NSNumber else { return false }
    return String(cString: n.objCType) == "c"
}

/// An integer from a JSON value (a number with no fractional part, not a boolean), or nil.
public func jsonInteger(_ v: Any) -> Int? {
    guard let n = v as? NSNumber, !isJSONBoolean(n) else { return nil }
    let d = n.doubleValue
    guard d == d.rounded(), abs(d) < 9e15 else { return nil }
    return n.intValue
}

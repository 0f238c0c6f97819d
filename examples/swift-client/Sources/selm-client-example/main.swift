// selm-client-example: connect to `selm serve`, stream two sampled answers, send the shorter one back
// as the preferred response, and print the server's state.
//
//     swift run --package-path examples/swift-client selm-client-example [--address HOST:PORT | --unix PATH]
//                                                                        [--token-file FILE] [--prompt TEXT]
import Foundation
import SelmClient  // re-exports the protocol's value types (GenerateRequest, PreferenceRow, ...)

var address = Endpoint.defaultAddress
var unix: String? = nil
var token: String? = nil
var prompt = "Name a primary colour."
var args = CommandLine.arguments.dropFirst()
while let flag = args.popFirst() {
    guard let value = args.popFirst() else { fatalError("\(flag) needs a value") }
    switch flag {
    case "--address": address = value
    case "--unix": unix = value
    case "--token-file": token = try String(contentsOfFile: value, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    case "--prompt": prompt = value
    default: fatalError("unknown option \(flag)")
    }
}

do {
    let client = try SelmClient(address: address, unix: unix, token: token, timeout: 120)
    defer { client.close() }
    print("connected to \(client.endpoint): model \(client.hello.modelName), policy version \(client.hello.policyVersion)")

    // Two samples of one chat prompt, streamed: chunks as tokens come, then each finished sample.
    let request = GenerateRequest(prompts: [.text(prompt)], chat: true,
                                  sampling: SamplingParams(temperature: 0.9, seed: 7, maxTokens: 24), n: 2, stream: true)
    let stream = try client.generateStream(request)
    var streamedTokens = 0
    while let event = try stream.next() {
        switch event {
        case .chunk(let chunk): streamedTokens += chunk.tokenIDs.count
        case .sample(let sample): print("sample \(sample.sampleIndex) (version \(sample.version)): \(sample.text)")
        }
    }
    let samples = stream.samples.sorted { $0.sampleIndex < $1.sampleIndex }
    print("streamed \(streamedTokens) tokens, \(stream.done?.completionTokens ?? 0) completion tokens in all")

    // Your judge here: the shorter answer is preferred.
    let (chosen, rejected) = samples[0].tokenIDs.count <= samples[1].tokenIDs.count ? (samples[0], samples[1]) : (samples[1], samples[0])
    let ack = try client.submitPreferences([PreferenceRow(prompt: .text(prompt), chosen: .ids(chosen.tokenIDs),
                                                          rejected: .ids(rejected.tokenIDs), source: "swift-example")],
                                           chat: true)
    print("preference durable as WAL sequence \(ack.lastSequence)")
    let status = try client.status()
    print("status: policy version \(status.policyVersion), learner step \(status.learnerStep), WAL last sequence \(status.walLastSequence)")
} catch {
    // SelmClientError prints as one line: code, message, field.
    FileHandle.standardError.write(Data("selm-client-example: \(error)\n".utf8))
    exit(1)
}

import Learner
import ModelBundle

extension ModelBundle {
    /// What a checkpoint of this model carries besides the weights.
    public func checkpointExtras(writeGGUF: Bool = true) -> Checkpoint.Extras {
        Checkpoint.Extras(bosTokenId: tokenizerIfAny?.bosId.map(Int.init), eosTokenId: tokenizerIfAny?.eosId.map(Int.init),
                          ggufMetadata: ggufTokenizerMetadata, writeGGUF: writeGGUF,
                          files: huggingFaceTokenizerFiles)
    }
}

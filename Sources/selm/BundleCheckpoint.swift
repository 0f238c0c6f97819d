import ArgumentParser
import Learner
import Model
import ModelBundle

extension ModelBundle {
    /// What a checkpoint of this model carries besides the weights, its model files in `dtype`.
    public func checkpointExtras(writeGGUF: Bool = true, dtype: CheckpointDType = .f32) -> Checkpoint.Extras {
        Checkpoint.Extras(bosTokenId: tokenizerIfAny?.bosId.map(Int.init), eosTokenId: tokenizerIfAny?.eosId.map(Int.init),
                          ggufMetadata: ggufTokenizerMetadata, writeGGUF: writeGGUF,
                          files: huggingFaceTokenizerFiles, dtype: dtype)
    }
}

/// The help of `--checkpoint-dtype` (`selm serve` and `selm train`).
let checkpointDTypeHelp: ArgumentHelp = """
    Dtype of a checkpoint's model.safetensors and model.gguf: f32 (the trained weights exactly) or bf16 \
    (model files at half the size; 1-D norm weights stay F32 in the GGUF). The optimizer state stays F32 and a bf16 \
    checkpoint keeps each weight's low 16 bits beside it, so resuming is exact either way.
    """

/// `--checkpoint-dtype`'s value; a `ValidationError` naming the flag otherwise.
func parseCheckpointDType(_ s: String) throws -> CheckpointDType {
    guard let d = CheckpointDType(rawValue: s) else { throw ValidationError("--checkpoint-dtype: expected f32 or bf16, got '\(s)'") }
    return d
}

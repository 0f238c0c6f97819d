// Names for Engine types whose names Wire reuses: this file imports only Engine, so the names
// here are unambiguous.
import Engine

typealias EngineSamplingParams = SamplingParams
typealias EngineScoreItem = ScoreItem
typealias EngineScoreRequest = ScoreRequest
typealias EngineSampleResult = SampleResult
typealias EngineFinishReason = FinishReason
typealias EngineScoredItem = ScoredItem

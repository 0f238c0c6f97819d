// Names for Tokenizer types whose names Wire (and Engine) reuse: this file imports only Tokenizer,
// so `ChatMessage` here is unambiguous.
import Tokenizer

/// A chat turn as the chat template renders it (`Tokenizer.ChatMessage`).
typealias TemplateMessage = ChatMessage

//! One error type for the whole engine. Every variant carries enough words for a user
//! to act on: which file, line, field, tensor or limit.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// No usable GPU adapter, device creation failed, or the device was lost.
    #[error("GPU: {0}")]
    Gpu(String),

    /// A model or batch that cannot fit the adapter's limits, refused before allocating.
    #[error("does not fit the GPU: {what} needs {need} bytes in one buffer but the adapter allows {have} ({limit}); use a smaller batch, micro-batch or sequence length")]
    Limit { what: String, need: u64, have: u64, limit: &'static str },

    /// A model configuration the engine cannot run.
    #[error("model config: {0}")]
    Config(String),

    /// A tensor in a model file is missing or has the wrong shape or type.
    #[error("model weights: {0}")]
    Weights(String),

    /// A LoRA adapter that cannot be applied as written: a missing or extra tensor, a
    /// shape, or a configuration the engine does not implement, named.
    #[error("LoRA adapter: {0}")]
    Adapter(String),

    /// A data problem, named by file and line where there is one.
    #[error("data: {0}")]
    Data(String),

    /// A dataset line that cannot become an example: file, line and kind.
    #[error("data: {0}")]
    Dataset(#[from] crate::data::DataError),

    /// A tokenizer file that cannot be read, or a failure to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template that does not compile or that raised while rendering.
    #[error("chat template: {0}")]
    Template(String),

    /// A NaN or infinite loss or gradient: the step was not applied.
    #[error("non-finite {what} at step {step}: the step was not applied and the parameters are unchanged (lower the learning rate or check the data)")]
    NonFinite { what: String, step: u64 },

    /// A sequence longer than the model's positions or a generation cache can hold.
    #[error("{what}: {tokens} tokens exceed the maximum of {max} ({limit})")]
    TooLong { what: String, tokens: usize, max: usize, limit: &'static str },

    /// Fetching a model from the Hugging Face hub (or a mirror) failed: `kind` says how,
    /// `url` which request, `message` the whole story in words.
    #[error("{message}")]
    Hub { kind: HubErrorKind, url: String, message: String },

    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },

    #[error("{0}")]
    Usage(String),

    /// A setting that cannot work (alone, or with this model or data), named by its key.
    #[error("setting `{field}`: {message}")]
    Setting { field: String, message: String },

    /// A training checkpoint that cannot be restored: damaged, foreign, or saved for
    /// another model, configuration or training set (the variant names what differs).
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::train::checkpoint::CheckpointError),
}

/// How a hub request failed (see [`Error::Hub`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubErrorKind {
    /// The model id or revision is malformed; no request was made.
    InvalidId,
    /// HTTP 404 for a required file (or an unknown revision).
    NotFound,
    /// HTTP 401 or 403: a gated or private repository (or one that does not exist).
    Unauthorized,
    /// Any other HTTP status.
    Http(u16),
    /// No response at all: DNS, connection, TLS, timeout, or a body cut short.
    Network,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

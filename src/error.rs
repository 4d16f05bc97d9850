//! One error type for the whole engine. Every variant carries enough words for a user
//! to act on: which file, line, field, tensor or limit.

use std::fmt;

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
    Dataset(#[from] DataError),

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
    Checkpoint(#[from] CheckpointError),
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

// The data and checkpoint errors live here, not in `data` and `train::checkpoint`
// (which re-export them), so this module imports nothing from the crate: a leaf.

/// What is wrong with a data line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataErrorKind {
    /// The line is not JSON, or not a JSON object.
    InvalidJson,
    /// A required field is absent (or no known format's fields are there).
    MissingField,
    /// A required text is empty.
    EmptyField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A message role other than system/user/assistant, or in the wrong place.
    WrongRole,
    /// An assistant turn or completion with no text.
    EmptyAnswer,
    /// A conversation with no assistant turn to learn from.
    NoAssistant,
    /// The chat template failed on this line (or is missing).
    Template,
    /// The tokenizer failed on this line.
    Tokenizer,
    /// The file holds no example.
    NoExamples,
}

/// A data error with the file and the 1-based line it is about (0 for the whole file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataError {
    pub file: String,
    pub line: usize,
    pub kind: DataErrorKind,
    pub message: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for DataError {}

/// Why a checkpoint cannot be restored.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Truncated or damaged bytes, or tensors that do not match the description.
    #[error("not a readable checkpoint: {0} (truncated or damaged file?)")]
    Corrupt(String),
    /// A readable safetensors file that is not a webtune checkpoint (e.g. a model file).
    #[error("not a webtune checkpoint: {0}")]
    Foreign(String),
    #[error("format version {found} is not supported (this build reads version {supported})")]
    Version { found: u64, supported: u64 },
    /// Saved from another model, parameter set, run configuration or training set.
    #[error("it was saved for another model, configuration or data: {}", list(.0))]
    Mismatch(Vec<Difference>),
}

/// One thing that differs between a checkpoint and the run it is restored into.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// What differs, e.g. `model.hidden`, `run.batch`, `param model.norm.weight`.
    pub what: String,
    pub checkpoint: String,
    pub current: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} is {} in the checkpoint but {} here", self.what, self.checkpoint, self.current)
    }
}

fn list(d: &[Difference]) -> String {
    const SHOWN: usize = 8;
    let mut s = d.iter().take(SHOWN).map(|x| x.to_string()).collect::<Vec<_>>().join("; ");
    if d.len() > SHOWN {
        s += &format!("; and {} more", d.len() - SHOWN);
    }
    s
}

//! Typed configuration errors. Each one renders as a single line that names the variable,
//! file or field at fault and says what to do about it.

use thiserror::Error;

/// Everything that makes a configuration invalid. `modelmux` exits 2 on any of these,
/// before it starts a single process.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No source of models was given at all.
    #[error(
        "no model is configured: set MULTI_MODEL_CONFIG (JSON {{\"models\": [...]}}), \
         OCI_MODEL_GROUP_CUSTOM_METADATA, MODEL (single-model mode) or pass --config FILE"
    )]
    NoSource,

    /// A JSON document (an environment variable or a file) does not parse.
    #[error("{source_name}: malformed JSON at line {line}, column {column}: {message}")]
    Json {
        /// The variable or file that held the JSON.
        source_name: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What serde_json says is wrong.
        message: String,
    },

    /// The JSON parsed but has the wrong shape somewhere.
    #[error("{source_name}: {field}: {problem}")]
    Field {
        /// The variable or file the document came from.
        source_name: String,
        /// A JSON path such as `models[1].model_path`.
        field: String,
        /// What is wrong and what is expected instead.
        problem: String,
    },

    /// An environment variable (or its flag) holds a value of the wrong form.
    #[error("{var}={value:?}: {problem}")]
    Var {
        /// The variable's name, e.g. `PORT`.
        var: String,
        /// The value as given.
        value: String,
        /// What is expected instead.
        problem: String,
    },

    /// Engine arguments (a model's `params`, `PARAMS` or `VLLM_PARAMS`) are unusable.
    #[error("{origin}: {problem}")]
    Params {
        /// Where the arguments came from, e.g. `models[0].params`.
        origin: String,
        /// What is wrong and how to fix it.
        problem: String,
    },

    /// Two models, or a model and an adapter, would be served under the same name.
    #[error(
        "served name {name:?} is used by both {first} and {second}: give each model a unique \
         --served-model-name and each adapter a unique model_name"
    )]
    DuplicateName {
        /// The name served twice.
        name: String,
        /// The first owner, e.g. `models[0]`.
        first: String,
        /// The second owner.
        second: String,
    },

    /// A model or adapter path does not exist on disk and is not a Hugging Face id.
    #[error(
        "{field}: model path {path:?} does not exist{}; fix the path or mount the model there",
        root_hint(path, root)
    )]
    MissingPath {
        /// The field naming the path, e.g. `models[0].model_path`.
        field: String,
        /// The resolved path that was looked up.
        path: String,
        /// The model root used for relative paths.
        root: String,
    },

    /// A file named on the command line cannot be read.
    #[error("--config {path}: cannot read the file: {message}")]
    File {
        /// The path given.
        path: String,
        /// The OS error.
        message: String,
    },

    /// A GPU setting (`MODELMUX_GPUS`) is unusable; the gpu module says why.
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),

    /// An error about one model entry (`models[N]...`), with the variable or file the
    /// entry came from, so that the one line names both.
    #[error("{source_name}: {error}")]
    InSource {
        /// `MULTI_MODEL_CONFIG`, `--config FILE` or OCI's metadata.
        source_name: String,
        /// The error about the entry.
        error: Box<ConfigError>,
    },
}

/// Whether an error's line starts at a model entry (`models[1].params: ...`) or names two
/// of them: then it does not say yet which variable or file holds the entries.
pub(crate) fn names_an_entry(line: &str) -> bool {
    line.starts_with("models[") || line.starts_with("served name ")
}

/// For a path under the model root, where relative paths are resolved; nothing for a path
/// written as absolute elsewhere.
fn root_hint(path: &str, root: &str) -> String {
    if std::path::Path::new(path).starts_with(root) {
        format!(" (relative paths resolve against MODELMUX_MODEL_ROOT={root:?})")
    } else {
        String::new()
    }
}

impl ConfigError {
    /// This error with `source` in front when it names a model entry and not yet where the
    /// entries came from (single-model mode names its variables itself).
    pub fn in_source(self, source: &super::ConfigSource) -> Self {
        if *source == super::ConfigSource::SingleModel || !names_an_entry(&self.to_string()) {
            return self;
        }
        ConfigError::InSource {
            source_name: source.to_string(),
            error: Box::new(self),
        }
    }

    /// A shorthand for [`ConfigError::Field`].
    pub fn field(source: &str, field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Field {
            source_name: source.to_string(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A shorthand for [`ConfigError::Var`].
    pub fn var(var: &str, value: &str, problem: impl Into<String>) -> Self {
        ConfigError::Var {
            var: var.to_string(),
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// Wraps a serde_json error, keeping its line and column.
    pub fn json(source: &str, err: &serde_json::Error) -> Self {
        let message = err.to_string();
        // serde_json appends " at line L column C"; the variant prints its own.
        let message = match message.rfind(" at line ") {
            Some(cut) => message[..cut].to_string(),
            None => message,
        };
        ConfigError::Json {
            source_name: source.to_string(),
            line: err.line(),
            column: err.column(),
            message,
        }
    }
}

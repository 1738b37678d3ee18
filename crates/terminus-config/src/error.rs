use std::path::PathBuf;

/// A configuration problem. Every variant names the file (or `<command line>`), the key, and
/// what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the file: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

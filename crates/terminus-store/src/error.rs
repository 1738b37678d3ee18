use std::path::PathBuf;

use crate::seal::KeyFileError;

/// Errors of the durable store. None carries key material.
///
/// The engine's and the encoding's errors are kept as sources, so a caller can tell a failing
/// disk ([`StoreError::is_io`]) from a damaged file or record ([`StoreError::is_corruption`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store file {file}: {source}")]
    Open {
        file: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error(
        "the store file {file} is damaged: the storage engine failed while {during} ({message})"
    )]
    EnginePanic {
        file: PathBuf,
        during: &'static str,
        message: String,
    },
    #[error("store key: {0}")]
    MasterKey(#[from] KeyFileError),
    #[error("the store key does not open this data directory ({dir}): it was created with another key; restore the right key file or set TERMINUS_STORE_KEY")]
    WrongMasterKey { dir: PathBuf },
    #[error("store I/O failed: {0}")]
    Db(#[source] redb::Error),
    #[error("a stored record cannot be decoded: {0}")]
    Decode(#[source] postcard::Error),
    #[error("a record cannot be encoded: {0}")]
    Encode(#[source] postcard::Error),
    #[error("a stored record has schema version {version}, which this terminus does not know (it knows {known}): upgrade terminus")]
    UnknownSchema { version: u8, known: u8 },
    #[error("a stored record is empty")]
    Empty,
    #[error("a stored record does not match its checksum: its bytes were damaged")]
    RecordChecksum,
    #[error("encrypting a private key failed")]
    Seal,
    #[error("the store was opened read-only")]
    ReadOnly,
    #[error("{what} was changed by another router or request since it was read: read it again and retry; nothing was changed")]
    Conflict { what: String },
    #[error("the fleet's store: {0}")]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("the stored session-ticket keys do not open with the store key: they were damaged or written under another key")]
    TicketKeysSealed,
    #[error("the stored session-ticket keys cannot be read: {0}")]
    TicketKeys(#[source] terminus_tls::TicketKeyError),
}

impl StoreError {
    /// The disk or the file system failed (full disk, I/O error, permissions): the file may be
    /// fine once the cause is fixed.
    pub fn is_io(&self) -> bool {
        match self {
            Self::CreateDir { .. } | Self::File { .. } => true,
            Self::Open { source, .. } | Self::Db(source) => {
                matches!(source, redb::Error::Io(_) | redb::Error::PreviousIo)
            }
            _ => false,
        }
    }

    /// The fleet's shared store (etcd) could not be reached: nothing was written, and a
    /// retry may succeed once it is back.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Fleet(e) if e.is_unavailable())
    }

    /// What is stored is damaged: the file's structure or a record's bytes.
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::EnginePanic { .. } => true,
            Self::Open { source, .. } | Self::Db(source) => {
                matches!(source, redb::Error::Corrupted(_))
            }
            Self::Decode(_)
            | Self::Empty
            | Self::RecordChecksum
            | Self::TicketKeysSealed
            | Self::TicketKeys(_) => true,
            _ => false,
        }
    }
}

/// Every redb error type converts into `redb::Error`; the store keeps that as the source.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

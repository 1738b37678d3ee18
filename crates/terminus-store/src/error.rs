use std::path::PathBuf;

/// Errors of the durable store. None carries key material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {dir}: {detail}")]
    Open { dir: PathBuf, detail: String },
    #[error("store key: {detail}")]
    MasterKey { detail: String },
    #[error("the store key does not open this data directory ({dir}): it was created with another key; restore the right key file or set TERMINUS_STORE_KEY")]
    WrongMasterKey { dir: PathBuf },
    #[error("store I/O failed: {0}")]
    Db(String),
    #[error("a stored record cannot be decoded: {0}")]
    Decode(String),
    #[error("encrypting a private key failed")]
    Seal,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
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

/// Why a host name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("'{name}' is not a valid host name: {reason}")]
    Invalid { name: String, reason: &'static str },
}

impl NameError {
    pub(crate) fn with_name(self, name: &str) -> Self {
        match self {
            Self::Invalid { reason, .. } => Self::Invalid {
                name: name.to_owned(),
                reason,
            },
        }
    }
}

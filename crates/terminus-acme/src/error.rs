use std::time::Duration;

/// Why an ACME step failed. Never holds key material. The message of each variant is what an
/// operator sees as the domain's reason in `terminus certs:auto`.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA answered with a problem document (RFC 8555 §6.7).
    #[error("{}", problem_text(.problem))]
    Ca {
        problem: Box<instant_acme::Problem>,
        /// The CA's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// A challenge failed validation: the CA's reason.
    #[error("validation failed: {0}")]
    Invalid(String),
    #[error("the CA could not be reached or answered badly: {0}")]
    Client(#[source] instant_acme::Error),
    #[error("the CA did not finish the order in time (it stays open and is resumed)")]
    Timeout,
    #[error("{0}")]
    Unanswerable(String),
    /// No configured challenge type can validate this name (a wildcard without a DNS hook):
    /// retrying cannot help until the config changes.
    #[error("{0}")]
    NoChallenge(String),
    #[error("the issued certificate was refused: {0}")]
    Certificate(#[source] terminus_tls::CertError),
    #[error("the store failed: {0}")]
    Store(#[from] terminus_store::StoreError),
    #[error("generating a key failed: {0}")]
    Key(#[source] rcgen::Error),
    #[error("acme.directory_roots {path}: {message}")]
    Roots { path: String, message: String },
    #[error("the DNS hook failed: {0}")]
    Hook(String),
    /// The store is handed over to a new process (a binary upgrade).
    #[error("the store is handed over to a new process")]
    StoreHandedOver,
    /// The domain left ACM while its order ran (ACM disabled, domain removed): nothing to do.
    #[error("the domain is no longer under ACM")]
    Gone,
}

impl AcmeError {
    /// The CA's problem type without its namespace (`rateLimited`, `connection`, ...).
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            Self::Ca { problem, .. } => problem
                .r#type
                .as_deref()
                .map(|t| t.strip_prefix("urn:ietf:params:acme:error:").unwrap_or(t)),
            _ => None,
        }
    }

    pub fn is_rate_limited(&self) -> bool {
        self.problem_type() == Some("rateLimited")
    }

    /// The CA refused the name itself: retrying will not help until the operator changes
    /// something, so the domain goes to `Failed`.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::NoChallenge(_))
            || matches!(
                self.problem_type(),
                Some("rejectedIdentifier" | "unsupportedIdentifier" | "badCSR")
            )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Ca { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The metric label of an order that ended in this error.
    pub fn label(&self) -> &'static str {
        match self {
            _ if self.is_rate_limited() => "rate_limited",
            Self::Invalid(_) => "invalid",
            _ => "error",
        }
    }

    pub(crate) fn from_client(e: instant_acme::Error, retry_after: Option<Duration>) -> Self {
        match e {
            instant_acme::Error::Api(problem) => Self::Ca {
                problem: Box::new(problem),
                retry_after,
            },
            instant_acme::Error::Timeout(_) => Self::Timeout,
            other => Self::Client(other),
        }
    }
}

/// A problem as one line: its type, detail and any subproblems' details.
pub(crate) fn problem_text(p: &instant_acme::Problem) -> String {
    let kind = p
        .r#type
        .as_deref()
        .map(|t| t.strip_prefix("urn:ietf:params:acme:error:").unwrap_or(t))
        .unwrap_or("problem");
    let mut out = format!("{kind}: {}", p.detail.as_deref().unwrap_or("no detail"));
    for sub in &p.subproblems {
        if let Some(d) = &sub.detail {
            out.push_str("; ");
            out.push_str(d);
        }
    }
    out
}

pub type Result<T, E = AcmeError> = std::result::Result<T, E>;

//! What went wrong with a request (the client, a backend or the router), how it is answered,
//! and how it is logged.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Malformed or refused request (duplicate Host, missing Host, oversized request line).
    BadRequest(&'static str),
    /// A header line or the header count is over the limit.
    HeadersTooLarge(&'static str),
    /// The request head did not arrive completely within the request-head timeout.
    RequestHeadTimeout,
    /// `Expect` other than `100-continue`.
    ExpectationFailed,
    /// CONNECT is not proxied.
    MethodNotAllowed,
    /// The Host is not covered by the certificate served on this connection.
    Misdirected,
    /// No domain and no default app for the Host.
    UnknownHost,
    /// The client went away before the response was complete.
    ClientGone,
    /// The client stopped sending its request body.
    ClientIdle,
    /// The app has no backends.
    NoBackends,
    /// Every backend of the app is quarantined after connection failures.
    AllQuarantined,
    ConnectTimeout,
    ConnectRefused,
    /// No response head within the first-byte timeout.
    FirstByteTimeout,
    /// The backend closed the connection without a response.
    ClosedWithoutResponse,
    /// The backend stopped sending its response body.
    BackendIdle,
    /// The backend closed mid-response.
    BackendInterrupted,
    /// The backend's response could not be parsed.
    BadResponse,
    /// The backend's response head is over the limits.
    ResponseTooLarge,
}

impl Fault {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestHeadTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::UnknownHost => StatusCode::NOT_FOUND,
            Self::ClientGone | Self::ClientIdle => client_closed(),
            Self::ResponseTooLarge => StatusCode::BAD_GATEWAY,
            Self::NoBackends
            | Self::AllQuarantined
            | Self::ConnectTimeout
            | Self::ConnectRefused
            | Self::FirstByteTimeout
            | Self::ClosedWithoutResponse
            | Self::BackendIdle
            | Self::BackendInterrupted
            | Self::BadResponse => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The router error code, as in Heroku's table. Unknown hosts have none (a 404, not an error
    /// of the platform).
    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest(_)
            | Self::HeadersTooLarge(_)
            | Self::RequestHeadTimeout
            | Self::ExpectationFailed
            | Self::MethodNotAllowed => "H26",
            Self::Misdirected => "H31",
            Self::UnknownHost => "",
            Self::ClientGone => "H27",
            Self::ClientIdle => "H28",
            Self::NoBackends => "H14",
            Self::AllQuarantined => "H34",
            Self::ConnectTimeout => "H19",
            Self::ConnectRefused => "H21",
            Self::FirstByteTimeout => "H12",
            Self::ClosedWithoutResponse => "H13",
            Self::BackendIdle => "H15",
            Self::BackendInterrupted => "H18",
            Self::BadResponse => "H17",
            Self::ResponseTooLarge => "H25",
        }
    }

    pub fn desc(self) -> &'static str {
        match self {
            Self::BadRequest(_)
            | Self::RequestHeadTimeout
            | Self::ExpectationFailed
            | Self::MethodNotAllowed => "Request error",
            Self::HeadersTooLarge(_) => "Request header fields too large",
            Self::Misdirected => "Misdirected request",
            Self::UnknownHost => "No such app",
            Self::ClientGone => "Client request interrupted",
            Self::ClientIdle => "Client connection idle",
            Self::NoBackends => "No backends",
            Self::AllQuarantined => "All backends quarantined",
            Self::ConnectTimeout => "Backend connection timeout",
            Self::ConnectRefused => "Backend connection refused",
            Self::FirstByteTimeout => "Request timeout",
            Self::ClosedWithoutResponse => "Connection closed without response",
            Self::BackendIdle => "Idle connection",
            Self::BackendInterrupted => "Backend request interrupted",
            Self::BadResponse => "Bad HTTP response",
            Self::ResponseTooLarge => "HTTP restriction",
        }
    }

    /// `cause=` in the log line, for request errors.
    pub fn cause(self) -> Option<&'static str> {
        match self {
            Self::BadRequest(c) | Self::HeadersTooLarge(c) => Some(c),
            Self::RequestHeadTimeout => Some("request_head_timeout"),
            Self::ExpectationFailed => Some("unsupported_expect"),
            Self::MethodNotAllowed => Some("connect_not_allowed"),
            _ => None,
        }
    }

    /// The small plain-text body of the error response.
    pub fn body(self) -> String {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or(CLIENT_CLOSED_REASON);
        match (self.code(), self.cause()) {
            ("", _) => format!("{} {}: {}\n", status.as_u16(), reason, self.desc()),
            (code, Some(cause)) => format!(
                "{} {}: {} ({code}, {cause})\n",
                status.as_u16(),
                reason,
                self.desc()
            ),
            (code, None) => format!("{} {}: {} ({code})\n", status.as_u16(), reason, self.desc()),
        }
    }
}

/// The reason phrase of nginx's 499, which has none in the registry.
pub(crate) const CLIENT_CLOSED_REASON: &str = "Client Closed Request";

/// nginx's 499: the client closed the connection.
fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

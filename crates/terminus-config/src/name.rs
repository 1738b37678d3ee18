//! Names of apps and certificates: what an operator types on a command line, so one rule for
//! the config file and the API alike.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A validated app or certificate name: 1 to 64 of `a-z`, `0-9`, `-` and `_`, not starting
/// with `-` (so it never reads as a command-line flag).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// What is wrong with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong { len: usize },
    Character(char),
    LeadingDash,
}

/// A name that breaks the rule, with the operator-facing message saying what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{name}' is not a valid name ({problem}): use 1-64 of a-z, 0-9, '-' and '_', not starting with '-'")]
pub struct NameError {
    /// The rejected text, shortened if it was very long (messages stay readable).
    pub name: String,
    pub problem: NameProblem,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::TooLong { len } => write!(f, "it is {len} bytes long"),
            Self::Character(c) => write!(f, "{c:?} is not allowed"),
            Self::LeadingDash => f.write_str("it starts with '-'"),
        }
    }
}

impl Name {
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let problem = if text.is_empty() {
            Some(NameProblem::Empty)
        } else if let Some(c) = text.chars().find(|&c| !allowed(c)) {
            Some(NameProblem::Character(c))
        } else if text.len() > MAX_NAME_LEN {
            Some(NameProblem::TooLong { len: text.len() })
        } else if text.starts_with('-') {
            Some(NameProblem::LeadingDash)
        } else {
            None
        };
        match problem {
            None => Ok(Self(text.to_owned())),
            Some(problem) => Err(NameError {
                name: shorten(text),
                problem,
            }),
        }
    }

    /// `default`: the name of the quick start's certificate and app.
    pub(crate) fn quick_start() -> Self {
        Self("default".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

/// At most 80 characters of a rejected name go into a message.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 80;
    match text.char_indices().nth(SHOWN) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}...", &text[..end]),
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_an_operator_types() {
        for ok in ["web", "a", "my-app_2", "0", "_x", &"a".repeat(64)] {
            assert_eq!(Name::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_with_the_reason() {
        let cases = [
            ("", NameProblem::Empty),
            ("Web", NameProblem::Character('W')),
            ("web app", NameProblem::Character(' ')),
            ("wéb", NameProblem::Character('é')),
            ("-web", NameProblem::LeadingDash),
            (&"a".repeat(65), NameProblem::TooLong { len: 65 }),
        ];
        for (text, problem) in cases {
            let e = Name::parse(text).unwrap_err();
            assert_eq!(e.problem, problem, "{text}");
            let message = e.to_string();
            assert!(message.contains("is not a valid name"), "{message}");
            assert!(message.contains("use 1-64 of a-z, 0-9"), "{message}");
        }
    }

    #[test]
    fn a_huge_name_is_shortened_in_the_message() {
        let e = Name::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(e.to_string().len() < 300);
        assert_eq!(e.problem, NameProblem::TooLong { len: 10_000 });
    }

    #[test]
    fn serde_goes_through_the_rule() {
        let n: Name = serde_json_like("\"web\"").unwrap();
        assert_eq!(n, "web");
        assert!(serde_json_like("\"Web\"").is_err());
    }

    fn serde_json_like(text: &str) -> Result<Name, toml::de::Error> {
        #[derive(serde::Deserialize)]
        struct Holder {
            name: Name,
        }
        toml::from_str::<Holder>(&format!("name = {text}")).map(|h| h.name)
    }
}

use super::Checker;
use crate::raw::RawAcme;
use crate::{
    AcmeConfig, AcmeKeyType, ChallengeKind, Eab, Listener, Result, DEFAULT_ACME_HOOK_TIMEOUT,
    DEFAULT_ACME_MAX_IN_FLIGHT, DEFAULT_ACME_RETRY_MAX, DEFAULT_ACME_RETRY_MIN,
};

/// What the example config names, so the error for a missing directory says what to write.
const DIRECTORY_HINT: &str = "write the CA's directory URL, e.g. https://acme-staging-v02.api.letsencrypt.org/directory (Let's Encrypt staging) or https://acme-v02.api.letsencrypt.org/directory (production)";

pub(super) fn validate(
    c: &Checker<'_>,
    raw: &RawAcme,
    has_store: bool,
    listeners: &[Listener],
) -> Result<AcmeConfig> {
    if !has_store {
        return Err(c.err(
            "acme",
            "automated certificates need the store (their account key, orders and certificates must survive restarts): add a [store] section",
        ));
    }
    let directory = match raw.directory.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(c.err("acme.directory", format!("missing: {DIRECTORY_HINT}")))
        }
        Some(d) if !d.starts_with("https://") => {
            return Err(c.err(
                "acme.directory",
                format!("must be an https:// URL (RFC 8555 requires TLS): {DIRECTORY_HINT}"),
            ))
        }
        Some(d) => d.to_owned(),
    };
    if raw.terms_accepted != Some(true) {
        return Err(c.err(
            "acme.terms_accepted",
            "the CA's terms of service must be accepted to create an account: read them (the directory's meta.termsOfService) and set terms_accepted = true",
        ));
    }
    let contact = match raw.contact.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(email) => {
            let email = email.strip_prefix("mailto:").unwrap_or(email);
            let valid = email.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && host.contains('.') && !email.contains([' ', ',', '<', '>'])
            });
            if !valid {
                return Err(c.err(
                    "acme.contact",
                    "is not an email address: write one address, e.g. ops@example.com",
                ));
            }
            vec![format!("mailto:{email}")]
        }
    };
    let eab = match (&raw.eab_kid, &raw.eab_hmac_key) {
        (None, None) => None,
        (Some(kid), Some(key)) if !kid.trim().is_empty() && !key.trim().is_empty() => Some(Eab {
            kid: kid.trim().to_owned(),
            hmac_key: key.trim().to_owned(),
        }),
        _ => {
            return Err(c.err(
                "acme.eab_kid",
                "External Account Binding needs both eab_kid and eab_hmac_key, as the CA handed them out",
            ))
        }
    };
    let key_type = match raw.key_type.as_deref() {
        None | Some("ecdsa-p256") => AcmeKeyType::EcdsaP256,
        Some("rsa2048") => AcmeKeyType::Rsa2048,
        Some(_) => {
            return Err(c.err(
                "acme.key_type",
                "use \"ecdsa-p256\" (the default: smaller, faster handshakes) or \"rsa2048\" (for very old clients)",
            ))
        }
    };
    let renew_before = raw
        .renew_before
        .as_ref()
        .map(|t| c.duration("acme.renew_before", Some(t), DEFAULT_ACME_RETRY_MIN))
        .transpose()?;
    let max_in_flight = raw.max_in_flight.unwrap_or(DEFAULT_ACME_MAX_IN_FLIGHT);
    if !(1..=1000).contains(&max_in_flight) {
        return Err(c.err("acme.max_in_flight", "must be between 1 and 1000"));
    }
    let has_plain = listeners.iter().any(|l| !l.tls);
    let has_tls = listeners.iter().any(|l| l.tls);
    let challenges = match &raw.challenges {
        None => {
            let mut list = Vec::new();
            if has_plain {
                list.push(ChallengeKind::Http01);
            }
            if has_tls {
                list.push(ChallengeKind::TlsAlpn01);
            }
            if raw.dns_hook.is_some() {
                list.push(ChallengeKind::Dns01);
            }
            list
        }
        Some(names) => {
            let mut list = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let key = format!("acme.challenges[{i}]");
                let kind = match n.as_str() {
                    "http-01" => ChallengeKind::Http01,
                    "tls-alpn-01" => ChallengeKind::TlsAlpn01,
                    "dns-01" => ChallengeKind::Dns01,
                    _ => return Err(c.err(key, "use \"http-01\", \"tls-alpn-01\" or \"dns-01\"")),
                };
                if list.contains(&kind) {
                    return Err(c.err(key, "is listed twice"));
                }
                list.push(kind);
            }
            list
        }
    };
    if challenges.contains(&ChallengeKind::Http01) && !has_plain {
        return Err(c.err(
            "acme.challenges",
            "http-01 is answered on a plain-HTTP listener (port 80): add a [[listener]] with tls = false, or leave http-01 out",
        ));
    }
    if challenges.contains(&ChallengeKind::TlsAlpn01) && !has_tls {
        return Err(c.err(
            "acme.challenges",
            "tls-alpn-01 is answered on a TLS listener (port 443): add one, or leave tls-alpn-01 out",
        ));
    }
    if challenges.contains(&ChallengeKind::Dns01) && raw.dns_hook.is_none() {
        return Err(c.err(
            "acme.challenges",
            "dns-01 needs acme.dns_hook, the program that sets and clears the TXT record",
        ));
    }
    if challenges.is_empty() {
        return Err(c.err(
            "acme.challenges",
            "no challenge can be answered: add a listener (plain HTTP for http-01, TLS for tls-alpn-01) or a dns_hook",
        ));
    }
    let retry_min = c.duration(
        "acme.retry_min",
        raw.retry_min.as_ref(),
        DEFAULT_ACME_RETRY_MIN,
    )?;
    let retry_max = c.duration(
        "acme.retry_max",
        raw.retry_max.as_ref(),
        DEFAULT_ACME_RETRY_MAX,
    )?;
    if retry_max < retry_min {
        return Err(c.err("acme.retry_max", "must be at least acme.retry_min"));
    }
    Ok(AcmeConfig {
        directory,
        contact,
        eab,
        directory_roots: raw.directory_roots.as_deref().map(|p| c.path(p)),
        key_type,
        renew_before,
        max_in_flight,
        challenges,
        dns_hook: raw.dns_hook.as_deref().map(|p| c.path(p)),
        dns_hook_timeout: c.duration(
            "acme.dns_hook_timeout",
            raw.dns_hook_timeout.as_ref(),
            DEFAULT_ACME_HOOK_TIMEOUT,
        )?,
        retry_min,
        retry_max,
    })
}

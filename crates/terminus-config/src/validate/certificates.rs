use super::Checker;
use crate::raw::RawCertificate;
use crate::{CertificateFiles, Result};

pub(super) fn validate(c: &Checker<'_>, raw: &[RawCertificate]) -> Result<Vec<CertificateFiles>> {
    let mut certificates: Vec<CertificateFiles> = Vec::new();
    for (i, cert) in raw.iter().enumerate() {
        let key = format!("certificate[{i}].name");
        let name = c.name(&key, &cert.name)?;
        if certificates.iter().any(|other| other.name == name) {
            return Err(c.err(key, format!("certificate '{name}' is defined twice")));
        }
        for (field, value) in [("cert", &cert.cert), ("key", &cert.key)] {
            if value.trim().is_empty() {
                return Err(c.err(format!("certificate[{i}].{field}"), "must name a PEM file"));
            }
        }
        certificates.push(CertificateFiles {
            name,
            cert: c.path(&cert.cert),
            key: c.path(&cert.key),
        });
    }
    Ok(certificates)
}

use super::Checker;
use crate::raw::RawApp;
use crate::{AppConfig, Result};

pub(super) fn validate(c: &Checker<'_>, raw: &[RawApp]) -> Result<Vec<AppConfig>> {
    let mut apps: Vec<AppConfig> = Vec::new();
    for (i, app) in raw.iter().enumerate() {
        let key = format!("app[{i}].name");
        let name = c.name(&key, &app.name)?;
        if apps.iter().any(|other| other.name == name) {
            return Err(c.err(key, format!("app '{name}' is defined twice")));
        }
        let backends = app
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| c.backend(&format!("app[{i}].backends[{j}]"), b))
            .collect::<Result<Vec<_>>>()?;
        apps.push(AppConfig { name, backends });
    }
    Ok(apps)
}

use super::Checker;
use crate::raw::RawRouter;
use crate::{AppConfig, Result, RouterConfig, DEFAULT_ROUTER_NAME};

pub(super) fn validate(
    c: &Checker<'_>,
    raw: &RawRouter,
    apps: &[AppConfig],
) -> Result<RouterConfig> {
    let name = raw
        .name
        .clone()
        .unwrap_or_else(|| DEFAULT_ROUTER_NAME.to_owned());
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(c.err(
            "router.name",
            "must be a non-empty token without spaces (it is sent in Via headers)",
        ));
    }
    let threads = raw.threads.unwrap_or(0);
    if threads > 1024 {
        return Err(c.err("router.threads", "must be between 0 (one per CPU) and 1024"));
    }
    let default_app = match &raw.default_app {
        None => None,
        Some(app) => {
            let app = c.name("router.default_app", app)?;
            if !apps.iter().any(|a| a.name == app) {
                return Err(c.err(
                    "router.default_app",
                    format!("app '{app}' is not defined: add an [[app]] with that name"),
                ));
            }
            Some(app)
        }
    };
    Ok(RouterConfig {
        name,
        threads,
        default_app,
        access_log: raw.access_log.unwrap_or(true),
    })
}

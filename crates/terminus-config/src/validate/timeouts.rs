use super::Checker;
use crate::raw::RawTimeouts;
use crate::{Result, Timeouts};

pub(super) fn validate(c: &Checker<'_>, raw: &RawTimeouts) -> Result<Timeouts> {
    let d = Timeouts::default();
    Ok(Timeouts {
        connect: c.duration("timeouts.connect", raw.connect.as_ref(), d.connect)?,
        first_byte: c.duration("timeouts.first_byte", raw.first_byte.as_ref(), d.first_byte)?,
        idle: c.duration("timeouts.idle", raw.idle.as_ref(), d.idle)?,
        request_head: c.duration(
            "timeouts.request_head",
            raw.request_head.as_ref(),
            d.request_head,
        )?,
        pool_idle: c.duration("timeouts.pool_idle", raw.pool_idle.as_ref(), d.pool_idle)?,
        quarantine: c.duration("timeouts.quarantine", raw.quarantine.as_ref(), d.quarantine)?,
        shutdown_grace: c.duration(
            "timeouts.shutdown_grace",
            raw.shutdown_grace.as_ref(),
            d.shutdown_grace,
        )?,
    })
}

//! MetalLB's validating webhook for IPAddressPools, in process: a cluster running
//! MetalLB refuses a pool that would make its configuration invalid (a bad CIDR or
//! range, one overlapping another pool's, a pool outside `metallb-system`) before it is
//! stored, and so does the lab, with the webhook's name and MetalLB's own messages
//! (`lb::pool`, which the allocation controller also parses with). kubectl shows:
//!
//! ```text
//! Error from server (Forbidden): error when creating "pool.yaml": admission webhook
//! "ipaddresspoolvalidationwebhook.metallb.io" denied the request: CIDR "198.18.0.192/26"
//! in pool "b" overlaps with already defined CIDR "198.18.0.200/29"
//! ```
//!
//! Only this check of MetalLB's webhooks is here (the other kinds are checked by their
//! schemas only); in a real cluster kubewire installs no webhook, and its controller
//! logs a refused configuration and keeps the last valid one, as MetalLB's does.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Status};
use crate::store::Txn;

/// The webhook MetalLB registers for IPAddressPools.
const WEBHOOK: &str = "ipaddresspoolvalidationwebhook.metallb.io";

/// Refuses `pool` (about to be stored under `prefix` + its name) if the pools of its
/// namespace with it would not make a valid configuration.
pub(crate) fn admit_pool(txn: &Txn, prefix: &str, pool: &Value) -> Result<(), Error> {
    let deny = |message: String| -> Error {
        Status::new(
            403,
            "Forbidden",
            format!("admission webhook \"{WEBHOOK}\" denied the request: {message}"),
        )
        .into()
    };
    let namespace = pool["metadata"]["namespace"].as_str().unwrap_or_default();
    if namespace != lb::controller::DEFAULT_NAMESPACE {
        return Err(deny(format!(
            "resource must be created in {} namespace",
            lb::controller::DEFAULT_NAMESPACE
        )));
    }
    let parse = |v: &Value| -> Result<lb::crd::IPAddressPool, Error> {
        serde_json::from_value(v.clone()).map_err(|e| deny(e.to_string()))
    };
    let new = parse(pool)?;
    let mut all = Vec::new();
    for (_, existing) in txn.scan(prefix)? {
        let existing = parse(&existing)?;
        if existing.metadata.name != new.metadata.name {
            all.push(existing);
        }
    }
    // The pool written goes last, as MetalLB's webhook appends a new one to the list:
    // an overlap is reported as this pool's CIDR overlapping an existing one.
    all.push(new);
    // Namespace selectors do not make a configuration invalid; none are resolved here.
    lb::pool::parse_all(&all, &BTreeMap::new()).map_err(|e| deny(e.0))?;
    Ok(())
}

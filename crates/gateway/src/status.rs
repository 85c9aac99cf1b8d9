//! The statuses the compile decides: whole `status` objects per watched object, written by
//! the controller when they differ from what the object holds. Conditions carry no
//! `lastTransitionTime` here (a pure function has no clock): the controller keeps the
//! object's time where a condition's status did not change and stamps the others.

use serde_json::{Value, json};

/// A kind whose status the gateway writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Ingress,
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TlsRoute,
    TcpRoute,
    UdpRoute,
    BackendTlsPolicy,
    Mapping,
}

impl Kind {
    /// (group, version, kind, plural).
    pub const fn api(self) -> (&'static str, &'static str, &'static str, &'static str) {
        const GW: &str = crate::gatewayapi::GROUP;
        match self {
            Kind::Ingress => ("networking.k8s.io", "v1", "Ingress", "ingresses"),
            Kind::GatewayClass => (GW, "v1", "GatewayClass", "gatewayclasses"),
            Kind::Gateway => (GW, "v1", "Gateway", "gateways"),
            Kind::HttpRoute => (GW, "v1", "HTTPRoute", "httproutes"),
            Kind::GrpcRoute => (GW, "v1", "GRPCRoute", "grpcroutes"),
            Kind::TlsRoute => (GW, "v1", "TLSRoute", "tlsroutes"),
            Kind::TcpRoute => (GW, "v1", "TCPRoute", "tcproutes"),
            Kind::UdpRoute => (GW, "v1", "UDPRoute", "udproutes"),
            Kind::BackendTlsPolicy => (GW, "v1", "BackendTLSPolicy", "backendtlspolicies"),
            Kind::Mapping => ("getambassador.io", "v3alpha1", "Mapping", "mappings"),
        }
    }
}

/// The status one object should have.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    pub status: Value,
}

/// A metav1.Condition without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
}

impl Condition {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
        observed_generation: i64,
    ) -> Self {
        Condition {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "type": self.type_,
            "status": if self.status { "True" } else { "False" },
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
        })
    }
}

/// Conditions as a JSON list.
pub fn conditions(list: &[Condition]) -> Value {
    Value::Array(list.iter().map(Condition::to_json).collect())
}

/// `status` with each condition's `lastTransitionTime`: `old`'s where a condition of the
/// same type kept its status, `now` for the others. Applies to every `conditions` list
/// found at the same path in both (top level, per listener, per route parent).
pub fn stamp(new: &Value, old: &Value, now: &str) -> Value {
    match new {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let old_v = old.get(k).unwrap_or(&Value::Null);
                let v = if k == "conditions" {
                    stamp_conditions(v, old_v, now)
                } else {
                    stamp(v, old_v, now)
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let olds = old.as_array();
            Value::Array(
                items
                    .iter()
                    .map(|item| {
                        let old_item = olds
                            .and_then(|o| o.iter().find(|x| same_entry(x, item)))
                            .unwrap_or(&Value::Null);
                        stamp(item, old_item, now)
                    })
                    .collect(),
            )
        }
        v => v.clone(),
    }
}

/// List entries are matched by their identity: a listener by `name`, a route parent by
/// `parentRef` and `controllerName`.
fn same_entry(a: &Value, b: &Value) -> bool {
    (b.get("name").is_some() && a.get("name") == b.get("name"))
        || (b.get("parentRef").is_some()
            && a.get("parentRef") == b.get("parentRef")
            && a.get("controllerName") == b.get("controllerName"))
        || (b.get("ancestorRef").is_some()
            && a.get("ancestorRef") == b.get("ancestorRef")
            && a.get("controllerName") == b.get("controllerName"))
}

fn stamp_conditions(new: &Value, old: &Value, now: &str) -> Value {
    let Some(items) = new.as_array() else {
        return new.clone();
    };
    Value::Array(
        items
            .iter()
            .map(|c| {
                let mut c = c.clone();
                let time = old
                    .as_array()
                    .and_then(|o| {
                        o.iter()
                            .find(|x| x["type"] == c["type"] && x["status"] == c["status"])
                    })
                    .and_then(|x| x.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| json!(now));
                c["lastTransitionTime"] = time;
                c
            })
            .collect(),
    )
}

/// `status` without transition times, nulls, empty lists and empty objects: what an
/// object holds and what the compile decided compare equal when they mean the same
/// (an API server may drop an empty list, a merge patch writes `null` to remove).
pub fn unstamped(status: &Value) -> Value {
    fn empty(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        }
    }
    match status {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), unstamped(v)))
                .filter(|(_, v)| !empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(unstamped).collect()),
        v => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_time_while_its_status_holds() {
        let old = json!({"conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "t0"},
            {"type": "Programmed", "status": "False", "lastTransitionTime": "t0"},
        ], "listeners": [{"name": "http", "conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "t1"}]}]});
        let new = json!({"conditions": [
            {"type": "Accepted", "status": "True"},
            {"type": "Programmed", "status": "True"},
        ], "listeners": [{"name": "http", "conditions": [
            {"type": "Accepted", "status": "True"}]}]});
        let s = stamp(&new, &old, "t2");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t0");
        assert_eq!(s["conditions"][1]["lastTransitionTime"], "t2");
        assert_eq!(
            s["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "t1"
        );
        assert_eq!(unstamped(&s), new);
        assert_eq!(
            unstamped(&json!({"loadBalancer": {"ingress": null}, "parents": []})),
            unstamped(&json!({"loadBalancer": {}}))
        );
    }
}

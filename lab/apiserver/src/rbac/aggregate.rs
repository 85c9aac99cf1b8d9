//! ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation
//! controller does it: a ClusterRole with an `aggregationRule` holds the rules of every
//! other ClusterRole its `clusterRoleSelectors` match (by label), taken in name order,
//! each rule once. A worker thread recomputes them whenever a ClusterRole changes;
//! `admin`, `edit` and `view` are aggregated before the server serves.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;

use super::rules::Rule;
use crate::api::State;
use crate::error::Error;
use crate::store::EventType;

/// How long the worker sleeps between checks that the server still runs.
const RECHECK: Duration = Duration::from_secs(1);

/// Whether a `metav1.LabelSelector` (`matchLabels`, `matchExpressions`) matches
/// `labels`. An empty selector matches everything; a malformed one nothing.
pub(crate) fn selector_matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel.as_object() else {
        return false;
    };
    let by_labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| {
            v.as_str()
                .is_some_and(|v| labels.get(k).is_some_and(|l| l == v))
        });
    let by_expressions = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap_or("") {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

/// The aggregated ClusterRoles whose rules are not what their selectors gather, with
/// the rules they should hold.
fn stale(state: &State) -> Vec<(String, Vec<Rule>)> {
    let policy = state.authz.policy();
    let roles = &policy.cluster_roles;
    let mut out = Vec::new();
    for (name, role) in roles {
        let Some(rule) = &role.aggregation_rule else {
            continue;
        };
        let selectors = rule["clusterRoleSelectors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut rules: Vec<Rule> = Vec::new();
        for (other_name, other) in roles {
            if other_name == name
                || !selectors
                    .iter()
                    .any(|s| selector_matches(s, other.labels()))
            {
                continue;
            }
            for r in &other.rules {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
        if rules != role.rules {
            out.push((name.clone(), rules));
        }
    }
    out
}

/// Brings every aggregated ClusterRole's rules up to date with the roles it selects;
/// true when it changed one (an aggregated role that selects another, as `admin`
/// selects `edit`, takes another pass to settle).
pub(crate) fn aggregate(state: &State) -> Result<bool, Error> {
    let updates = stale(state);
    if updates.is_empty() {
        return Ok(false);
    }
    let rt = super::bootstrap::resource("clusterroles")?;
    state.store.write(|txn| {
        for (name, rules) in &updates {
            let key = rt.key("", name);
            let Some(mut obj) = txn.get(&key)? else {
                continue;
            };
            if obj["aggregationRule"].is_null() {
                continue;
            }
            obj["rules"] = serde_json::to_value(rules).unwrap_or(Value::Null);
            txn.put(&key, obj, EventType::Modified)?;
        }
        Ok(true)
    })
}

/// [`aggregate`] until nothing changes (at most a few passes: aggregated roles nest
/// `admin` > `edit` > `view` deep), before the server serves.
pub(crate) fn settle(state: &State) -> Result<(), Error> {
    for _ in 0..8 {
        if !aggregate(state)? {
            break;
        }
    }
    Ok(())
}

/// Starts the worker that aggregates after every ClusterRole change, until the server
/// state is dropped.
pub(crate) fn spawn_worker(state: &Arc<State>) {
    let weak: Weak<State> = Arc::downgrade(state);
    let authz = state.authz.clone();
    let spawned = std::thread::Builder::new()
        .name("apiserver-rbac".into())
        .spawn(move || {
            loop {
                let due = authz.wait_aggregation(RECHECK);
                let Some(state) = weak.upgrade() else { return };
                if due && let Err(e) = aggregate(&state) {
                    tracing::warn!(error = %k8s::ErrorChain(&e), "ClusterRole aggregation");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the ClusterRole aggregation worker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]
        .into();
        assert!(selector_matches(
            &json!({"matchLabels": {"a": "1"}}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchLabels": {"a": "2"}}),
            &labels
        ));
        assert!(selector_matches(&json!({}), &labels));
        assert!(!selector_matches(&Value::Null, &labels));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}, {"key": "c", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]}),
            &labels
        ));
    }
}

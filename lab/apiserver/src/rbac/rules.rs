//! Policy rules: whether a rule allows a request (kube-apiserver's RBAC matching),
//! whether one set of rules covers another (escalation prevention), and rules printed
//! the way kube-apiserver prints them in its refusals.

use serde::{Deserialize, Serialize};

use super::attributes::Attributes;

/// `*`: every verb, group, resource or non-resource URL.
pub(crate) const ALL: &str = "*";

/// One `rules[]` entry of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct Rule {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub(crate) verbs: Vec<String>,
    #[serde(
        default,
        rename = "apiGroups",
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(crate) api_groups: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(crate) resources: Vec<String>,
    #[serde(
        default,
        rename = "resourceNames",
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(crate) resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(crate) non_resource_urls: Vec<String>,
}

/// A JSON `null` list is an empty one (Go marshals a nil slice as `null`).
pub(crate) fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

impl Rule {
    /// A resource rule: `verbs` on `resources` of `groups`.
    pub(crate) fn new(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Rule {
        Rule {
            verbs: strings(verbs),
            api_groups: strings(groups),
            resources: strings(resources),
            ..Rule::default()
        }
    }

    /// The same rule limited to the objects named `names`.
    pub(crate) fn names(mut self, names: &[&str]) -> Rule {
        self.resource_names = strings(names);
        self
    }

    /// A non-resource rule: `verbs` on the URL paths `urls`.
    pub(crate) fn urls(verbs: &[&str], urls: &[&str]) -> Rule {
        Rule {
            verbs: strings(verbs),
            non_resource_urls: strings(urls),
            ..Rule::default()
        }
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == ALL || v == verb)
    }

    fn group_matches(&self, group: &str) -> bool {
        self.api_groups.iter().any(|g| g == ALL || g == group)
    }

    /// `resource/subresource` against the rule's resources: `*`, the exact name, or
    /// `*/subresource` for that subresource of every resource.
    fn resource_matches(&self, combined: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            r == ALL
                || r == combined
                || (!subresource.is_empty()
                    && r.strip_prefix("*/").is_some_and(|s| s == subresource))
        })
    }

    fn name_matches(&self, name: &str) -> bool {
        self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == name)
    }

    /// `*`, the exact path, or a prefix ending in `*`.
    fn url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| {
            u == ALL
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
        })
    }

    /// Whether this rule allows the request.
    pub(crate) fn allows(&self, a: &Attributes<'_>) -> bool {
        if !self.verb_matches(&a.verb) {
            return false;
        }
        match &a.resource {
            Some(r) => {
                let combined = r.combined();
                self.group_matches(&r.group)
                    && self.resource_matches(&combined, &r.subresource)
                    && self.name_matches(&r.name)
            }
            None => self.url_matches(&a.path),
        }
    }

    /// The rule split into rules of one verb, one group, one resource and at most one
    /// name (or one verb and one URL), which [`covers`] checks one by one.
    fn breakdown(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        for g in &self.api_groups {
            for r in &self.resources {
                for v in &self.verbs {
                    let one = Rule::new(&[v], &[g], &[r]);
                    if self.resource_names.is_empty() {
                        out.push(one);
                    } else {
                        for n in &self.resource_names {
                            out.push(one.clone().names(&[n]));
                        }
                    }
                }
            }
        }
        for u in &self.non_resource_urls {
            for v in &self.verbs {
                out.push(Rule::urls(&[v], &[u]));
            }
        }
        out
    }

    /// Whether this rule (any shape) covers `sub` (one verb, resource, name or URL).
    fn covers(&self, sub: &Rule) -> bool {
        let has = |set: &[String], x: &str| set.iter().any(|s| s == x);
        let has_all = |set: &[String], xs: &[String]| xs.iter().all(|x| has(set, x));
        let verbs = has(&self.verbs, ALL) || has_all(&self.verbs, &sub.verbs);
        let groups = has(&self.api_groups, ALL) || has_all(&self.api_groups, &sub.api_groups);
        let resources = has(&self.resources, ALL)
            || sub.resources.iter().all(|r| {
                has(&self.resources, r)
                    || r.split_once('/')
                        .is_some_and(|(_, s)| has(&self.resources, &format!("*/{s}")))
            });
        let urls = sub.non_resource_urls.iter().all(|p| {
            self.non_resource_urls.iter().any(|o| {
                o == p
                    || o.strip_suffix('*')
                        .is_some_and(|prefix| p.starts_with(prefix.trim_end_matches('*')))
            })
        });
        let names = if sub.resource_names.is_empty() {
            self.resource_names.is_empty()
        } else {
            self.resource_names.is_empty() || has_all(&self.resource_names, &sub.resource_names)
        };
        verbs && groups && resources && urls && names
    }

    /// kube-apiserver's compact form, as its escalation refusals print a rule:
    /// `{APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}`.
    pub(crate) fn compact_string(&self) -> String {
        let mut parts = Vec::new();
        let mut field = |name: &str, v: &[String]| {
            if !v.is_empty() {
                parts.push(format!("{name}:{}", go_quoted_list(v)));
            }
        };
        field("APIGroups", &self.api_groups);
        field("Resources", &self.resources);
        field("NonResourceURLs", &self.non_resource_urls);
        field("ResourceNames", &self.resource_names);
        field("Verbs", &self.verbs);
        format!("{{{}}}", parts.join(", "))
    }
}

/// Go's `%q` of one string: a double-quoted literal with Go's escapes.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub(crate) fn go_quoted_list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", q.join(" "))
}

/// Whether `owner` covers every rule of `requested`; if not, the missing parts (each of
/// one verb, resource or URL), as kube-apiserver's escalation check computes them.
pub(crate) fn covers(owner: &[Rule], requested: &[Rule]) -> (bool, Vec<Rule>) {
    let mut missing = Vec::new();
    for rule in requested {
        for sub in rule.breakdown() {
            if !owner.iter().any(|o| o.covers(&sub)) {
                missing.push(sub);
            }
        }
    }
    (missing.is_empty(), missing)
}

/// Merges rules of one group and one resource (and at most one name) that differ only
/// in their verbs, as kube-apiserver compacts the missing rules it reports.
pub(crate) fn compact(rules: Vec<Rule>) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut simple: Vec<Rule> = Vec::new();
    for r in rules {
        let is_simple = r.resource_names.len() <= 1
            && r.non_resource_urls.is_empty()
            && r.api_groups.len() == 1
            && r.resources.len() == 1;
        if !is_simple {
            out.push(r);
            continue;
        }
        match simple.iter_mut().find(|s| {
            s.api_groups == r.api_groups
                && s.resources == r.resources
                && s.resource_names == r.resource_names
        }) {
            Some(s) => s.verbs.extend(r.verbs),
            None => simple.push(r),
        }
    }
    out.extend(simple);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::User;
    use crate::rbac::attributes::ResourceAttributes;

    fn user() -> User {
        User {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
        }
    }

    fn res<'a>(
        u: &'a User,
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes<'a> {
        Attributes {
            user: u,
            verb: verb.into(),
            path: String::new(),
            resource: Some(ResourceAttributes {
                namespace: ns.into(),
                group: group.into(),
                version: "v1".into(),
                resource: resource.into(),
                subresource: sub.into(),
                name: name.into(),
                fields: Vec::new(),
            }),
        }
    }

    fn path<'a>(u: &'a User, verb: &str, path: &str) -> Attributes<'a> {
        Attributes {
            user: u,
            verb: verb.into(),
            path: path.into(),
            resource: None,
        }
    }

    #[test]
    fn verbs_groups_and_resources() {
        let u = user();
        let r = Rule::new(&["get", "list"], &[""], &["pods"]);
        assert!(r.allows(&res(&u, "get", "", "pods", "", "default", "web")));
        assert!(r.allows(&res(&u, "list", "", "pods", "", "", "")));
        assert!(!r.allows(&res(&u, "delete", "", "pods", "", "default", "web")));
        // Another group, another resource, or a subresource is not the resource.
        assert!(!r.allows(&res(&u, "get", "apps", "pods", "", "default", "web")));
        assert!(!r.allows(&res(&u, "get", "", "services", "", "default", "web")));
        assert!(!r.allows(&res(&u, "get", "", "pods", "log", "default", "web")));
        // A resource rule never matches a path, and the other way round.
        assert!(!r.allows(&path(&u, "get", "/api")));
        let all = Rule::new(&["*"], &["*"], &["*"]);
        assert!(all.allows(&res(
            &u,
            "escalate",
            "rbac.authorization.k8s.io",
            "roles",
            "",
            "x",
            ""
        )));
        assert!(all.allows(&res(&u, "get", "", "pods", "exec", "x", "y")));
        assert!(!all.allows(&path(&u, "get", "/healthz")));
    }

    #[test]
    fn subresources_names_and_urls() {
        let u = user();
        let log = Rule::new(&["get"], &[""], &["pods/log"]);
        assert!(log.allows(&res(&u, "get", "", "pods", "log", "default", "web")));
        assert!(!log.allows(&res(&u, "get", "", "pods", "", "default", "web")));
        let any_status = Rule::new(&["update"], &["apps"], &["*/status"]);
        assert!(any_status.allows(&res(
            &u,
            "update",
            "apps",
            "deployments",
            "status",
            "d",
            "x"
        )));
        assert!(!any_status.allows(&res(&u, "update", "apps", "deployments", "", "d", "x")));
        let named = Rule::new(&["get", "update"], &[""], &["configmaps"]).names(&["cfg"]);
        assert!(named.allows(&res(&u, "get", "", "configmaps", "", "d", "cfg")));
        assert!(!named.allows(&res(&u, "get", "", "configmaps", "", "d", "other")));
        // A list has no name: a rule limited to names does not allow it.
        assert!(!named.allows(&res(&u, "list", "", "configmaps", "", "d", "")));
        let urls = Rule::urls(&["get"], &["/healthz", "/api/*", "/apis"]);
        assert!(urls.allows(&path(&u, "get", "/healthz")));
        assert!(urls.allows(&path(&u, "get", "/api/v1")));
        assert!(urls.allows(&path(&u, "get", "/api/")));
        assert!(!urls.allows(&path(&u, "get", "/api")));
        assert!(!urls.allows(&path(&u, "get", "/apis/apps")));
        assert!(!urls.allows(&path(&u, "post", "/healthz")));
        assert!(Rule::urls(&["*"], &["*"]).allows(&path(&u, "delete", "/anything")));
    }

    #[test]
    fn covering_and_compacting() {
        let owner = vec![
            Rule::new(&["get", "list", "watch"], &[""], &["pods", "services"]),
            Rule::new(&["*"], &["apps"], &["deployments"]),
            Rule::new(&["get"], &[""], &["*/log"]),
            Rule::new(&["get"], &[""], &["configmaps"]).names(&["a", "b"]),
            Rule::urls(&["get"], &["/api/*"]),
        ];
        let ok = |r: Rule| covers(&owner, &[r]).0;
        assert!(ok(Rule::new(&["get", "list"], &[""], &["pods"])));
        assert!(ok(Rule::new(
            &["delete", "patch"],
            &["apps"],
            &["deployments"]
        )));
        assert!(ok(Rule::new(&["get"], &[""], &["pods/log"])));
        assert!(ok(Rule::new(&["get"], &[""], &["configmaps"]).names(&["a"])));
        assert!(!ok(Rule::new(&["get"], &[""], &["configmaps"])));
        assert!(ok(Rule::urls(&["get"], &["/api/v1"])));
        assert!(!ok(Rule::urls(&["get"], &["/apis"])));
        assert!(!ok(Rule::new(&["*"], &[""], &["pods"])));
        let (all, missing) = covers(
            &owner,
            &[Rule::new(
                &["get", "create", "delete"],
                &["", "apps"],
                &["pods", "secrets"],
            )],
        );
        assert!(!all);
        let mut printed: Vec<String> = compact(missing).iter().map(Rule::compact_string).collect();
        printed.sort();
        assert_eq!(
            printed,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["create" "delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "create" "delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["get" "create" "delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["secrets"], Verbs:["get" "create" "delete"]}"#,
            ]
        );
        assert_eq!(
            Rule::urls(&["get"], &["/metrics"]).compact_string(),
            r#"{NonResourceURLs:["/metrics"], Verbs:["get"]}"#
        );
    }

    #[test]
    fn decodes_nulls() {
        let r: Rule =
            serde_json::from_str(r#"{"verbs":["get"],"apiGroups":null,"resources":["pods"]}"#)
                .unwrap();
        assert_eq!(r, Rule::new(&["get"], &[], &["pods"]));
    }
}

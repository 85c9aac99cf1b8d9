//! A container's `securityContext` as a container runtime applies it to the process:
//! its capabilities (containerd's default set, plus `add`, minus `drop`, where `ALL`
//! means every one; a `privileged` container keeps them all) and `no_new_privs` for
//! `allowPrivilegeEscalation: false`, and its user and group (`runAsUser`,
//! `runAsGroup`, the container's over the pod's). So a pod that needs a capability it
//! does not ask for fails here as it would on a real node. Not applied: supplementary
//! groups, `readOnlyRootFilesystem`
//! (containers share the host's root), seccomp, AppArmor, SELinux.

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// containerd's default capabilities for a container (CRI's `DefaultCapabilities`).
pub(crate) const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `NET_ADMIN` for `CAP_NET_ADMIN` or `net_admin`.
fn name(cap: &str) -> String {
    let upper = cap.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
}

/// The capabilities the container keeps, by name without `CAP_`, sorted; `None` for
/// every one (privileged, or `add: [ALL]`).
pub(crate) fn capabilities(c: &Container) -> Option<Vec<String>> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged) == Some(true) {
        return None;
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let list = |l: Option<&Vec<String>>| -> Vec<String> {
        l.into_iter().flatten().map(|c| name(c)).collect()
    };
    let (add, drop) = (
        list(caps.and_then(|c| c.add.as_ref())),
        list(caps.and_then(|c| c.drop.as_ref())),
    );
    if add.iter().any(|c| c == "ALL") {
        return None;
    }
    let mut kept: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    kept.extend(add);
    kept.sort();
    kept.dedup();
    Some(kept)
}

/// Whether the container's process may not gain privileges (`no_new_privs`).
pub(crate) fn no_new_privs(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.allow_privilege_escalation)
        == Some(false)
}

/// The user and group the container's process runs as: `runAsUser` and `runAsGroup`
/// of the container, else of the pod; `None` when neither names a user (root). A
/// user without a group gets group 0, as runtimes do.
pub(crate) fn user(c: &Container, pod: Option<&PodSpec>) -> Option<(u32, u32)> {
    let pod = pod.and_then(|p| p.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.and_then(|p| p.run_as_user))?;
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod.and_then(|p| p.run_as_group))
        .unwrap_or(0);
    Some((u32::try_from(uid).ok()?, u32::try_from(gid).ok()?))
}

/// Drops every capability but `keep` from this process's bounding set, and clears its
/// inheritable and ambient sets: a root process it executes then has exactly `keep`.
/// Names the kernel does not know are refused.
pub(crate) fn restrict(keep: &[String]) -> std::io::Result<()> {
    use caps::CapSet;
    let mut wanted = Vec::new();
    for k in keep {
        let cap: caps::Capability = format!("CAP_{k}")
            .parse()
            .map_err(|_| std::io::Error::other(format!("unknown capability {k}")))?;
        wanted.push(cap);
    }
    let err = |e: caps::errors::CapsError| std::io::Error::other(e.to_string());
    for cap in caps::runtime::thread_all_supported() {
        if !wanted.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn container(security_context: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "securityContext": security_context})).unwrap()
    }

    #[test]
    fn capabilities_as_a_runtime_gives_them() {
        let default = capabilities(&container(json!({}))).unwrap();
        assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
        assert!(default.contains(&"NET_RAW".to_owned()));
        assert!(!default.contains(&"NET_ADMIN".to_owned()));
        assert_eq!(
            capabilities(&container(
                json!({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}})
            )),
            Some(vec!["NET_ADMIN".to_owned()])
        );
        assert_eq!(
            capabilities(&container(json!({"capabilities": {"drop": ["all"]}}))),
            Some(vec![])
        );
        let less = capabilities(&container(
            json!({"capabilities": {"drop": ["CAP_NET_RAW"], "add": ["sys_admin"]}}),
        ))
        .unwrap();
        assert!(!less.contains(&"NET_RAW".to_owned()) && less.contains(&"SYS_ADMIN".to_owned()));
        assert_eq!(capabilities(&container(json!({"privileged": true}))), None);
        assert!(no_new_privs(&container(
            json!({"allowPrivilegeEscalation": false})
        )));
        assert!(!no_new_privs(&container(json!({}))));
    }

    #[test]
    fn users_come_from_the_container_then_the_pod() {
        let pod: PodSpec = serde_json::from_value(
            json!({"containers": [], "securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}),
        )
        .unwrap();
        assert_eq!(user(&container(json!({})), None), None);
        assert_eq!(user(&container(json!({})), Some(&pod)), Some((1000, 3000)));
        assert_eq!(
            user(&container(json!({"runAsUser": 2102})), Some(&pod)),
            Some((2102, 3000))
        );
        assert_eq!(
            user(&container(json!({"runAsUser": 2102})), None),
            Some((2102, 0))
        );
    }
}

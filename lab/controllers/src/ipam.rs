//! Node IPAM (kube-controller-manager's range allocator): each Node without podCIDRs
//! gets the lowest free range of each cluster CIDR (`/24` and `/64` by default). The
//! ranges in use are read from the Nodes themselves, so the allocation is stable across
//! restarts and there is no state to lose.

use std::collections::HashSet;
use std::sync::Arc;

use futures::FutureExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use crate::cache::{self, Outcome};
use crate::{Config, Ctx, Error};

/// Checks the flags: at most one CIDR per family, node masks inside them.
pub fn check_config(c: &Config) -> Result<(), Error> {
    let mut v4 = 0;
    let mut v6 = 0;
    for cidr in &c.cluster_cidrs {
        let (mask, count) = match cidr {
            IpNet::V4(_) => (c.node_mask_v4, &mut v4),
            IpNet::V6(_) => (c.node_mask_v6, &mut v6),
        };
        *count += 1;
        if mask < cidr.prefix_len() || mask > cidr.max_prefix_len() {
            return Err(Error::Config(format!(
                "--cluster-cidr {cidr}: node mask size {mask} must be between {} and {}",
                cidr.prefix_len(),
                cidr.max_prefix_len()
            )));
        }
    }
    if v4 > 1 || v6 > 1 {
        return Err(Error::Config(
            "--cluster-cidr: at most one range per address family".into(),
        ));
    }
    Ok(())
}

fn node_cidrs(node: &Node) -> Vec<IpNet> {
    let spec = node.spec.clone().unwrap_or_default();
    let mut v: Vec<String> = spec.pod_cidrs.unwrap_or_default();
    if v.is_empty() {
        v.extend(spec.pod_cidr);
    }
    v.iter().filter_map(|c| c.parse().ok()).collect()
}

/// The podCIDRs to give each node that has none, in node-name order: for every cluster
/// CIDR the lowest range of the node mask that no node uses yet.
pub fn allocate(nodes: &[&Node], config: &Config) -> Vec<(String, Vec<IpNet>)> {
    let mut used: HashSet<IpNet> = nodes.iter().flat_map(|n| node_cidrs(n)).collect();
    let mut todo: Vec<&&Node> = nodes
        .iter()
        .filter(|n| node_cidrs(n).is_empty() && n.metadata.deletion_timestamp.is_none())
        .collect();
    todo.sort_by_key(|n| n.name_any());
    let mut out = vec![];
    for node in todo {
        let mut got = vec![];
        for cidr in &config.cluster_cidrs {
            let mask = match cidr {
                IpNet::V4(_) => config.node_mask_v4,
                IpNet::V6(_) => config.node_mask_v6,
            };
            let Ok(mut subnets) = cidr.subnets(mask) else {
                continue;
            };
            // A range overlapping one in use (e.g. written by hand with another mask)
            // is taken too.
            let free = subnets.find(|s| !used.iter().any(|u| u.contains(s) || s.contains(u)));
            if let Some(s) = free {
                used.insert(s);
                got.push(s);
            }
        }
        if got.len() == config.cluster_cidrs.len() {
            out.push((node.name_any(), got));
        } else {
            warn!(node = %node.name_any(), "no free pod range left in the cluster CIDRs");
        }
    }
    out
}

/// Runs node IPAM.
pub async fn run(ctx: Ctx) {
    if ctx.config.cluster_cidrs.is_empty() {
        return futures::future::pending().await;
    }
    let c = &ctx.caches;
    let ready = vec![cache::ready(&c.nodes)];
    let triggers = vec![c.nodes.subscribe()];
    let resync = ctx.config.resync;
    cache::run_loop("nodeipam", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        async move { pass(&ctx).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx) -> Outcome {
    // Nodes of a lab register together: a moment's wait lets them arrive, so that they
    // get their ranges in name order (node-1 the first) rather than in arrival order.
    if ctx
        .caches
        .nodes
        .all()
        .iter()
        .any(|n| node_cidrs(n).is_empty())
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let nodes: Vec<Arc<Node>> = ctx.caches.nodes.all();
    let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
    let mut out = Outcome::default();
    let api: Api<Node> = Api::all(ctx.client.clone());
    for (name, cidrs) in allocate(&refs, &ctx.config) {
        let strs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        let patch = json!({"spec": {"podCIDR": strs[0], "podCIDRs": strs}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(w) => {
                info!(node = %name, pod_cidrs = ?strs, "allocated");
                out.expect.push(cache::seen(
                    &ctx.caches.nodes,
                    "",
                    &name,
                    w.metadata.resource_version,
                ));
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                warn!(error = %k8s::ErrorChain(&Error::api(format!("setting spec.podCIDRs of node {name}"))(e)), "nodeipam");
                out.failed = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidrs: &[&str]) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"podCIDRs": cidrs}}))
            .unwrap()
    }

    #[test]
    fn lowest_free_ranges_in_name_order_skipping_used() {
        let cfg = Config::default();
        let a = node("node-1", &["10.244.0.0/24", "fd00:10:244::/64"]);
        let b = node("node-3", &[]);
        let c = node("node-2", &[]);
        let got = allocate(&[&a, &b, &c], &cfg);
        let s: Vec<(String, Vec<String>)> = got
            .into_iter()
            .map(|(n, c)| (n, c.iter().map(ToString::to_string).collect()))
            .collect();
        assert_eq!(
            s,
            [
                (
                    "node-2".to_string(),
                    vec![
                        "10.244.1.0/24".to_string(),
                        "fd00:10:244:1::/64".to_string()
                    ]
                ),
                (
                    "node-3".to_string(),
                    vec![
                        "10.244.2.0/24".to_string(),
                        "fd00:10:244:2::/64".to_string()
                    ]
                ),
            ]
        );
    }

    #[test]
    fn exhausted_ranges_and_bad_flags() {
        let cfg = Config {
            cluster_cidrs: vec!["10.0.0.0/23".parse().unwrap()],
            ..Config::default()
        };
        let nodes: Vec<Node> = (0..3).map(|i| node(&format!("n{i}"), &[])).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        assert_eq!(allocate(&refs, &cfg).len(), 2);
        let bad = Config {
            node_mask_v4: 8,
            ..Config::default()
        };
        assert!(
            check_config(&bad)
                .unwrap_err()
                .to_string()
                .contains("node mask size 8")
        );
    }
}

//! Tier 2: the LoadBalancer controller (`lb::controller`, run by the controllers) on the
//! embedded API server in process: MetalLB's IPAddressPool CRD installed as upstream
//! ships it, a pool, Services; a restart of the controllers with a Service created while
//! they were down never hands out an address another Service holds.

mod common;

use common::{create, eventually, start};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const CRD: &str =
    include_str!("../../../crates/lb/crds/metallb-v0.16.1/metallb.io_ipaddresspools.yaml");

fn svc(name: &str) -> serde_json::Value {
    json!({
        "metadata": { "name": name },
        "spec": { "type": "LoadBalancer", "ports": [{ "port": 80 }] },
    })
}

async fn addresses(api: &Api<Service>, name: &str) -> Vec<String> {
    api.get(name)
        .await
        .ok()
        .and_then(|s| s.status?.load_balancer?.ingress)
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_given_once_and_kept_across_a_restart() {
    let mut h = start();
    let c = h.client.clone();
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(CRD).unwrap();
    Api::<CustomResourceDefinition>::all(c.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let ns: Namespace = common::obj(json!({ "metadata": { "name": "metallb-system" } }));
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let pool: lb::crd::IPAddressPool = common::obj(json!({
        "metadata": { "name": "p", "namespace": "metallb-system" },
        "spec": { "addresses": ["10.0.0.1-10.0.0.3"] },
    }));
    Api::<lb::crd::IPAddressPool>::namespaced(c.clone(), "metallb-system")
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();

    let services: Api<Service> = Api::namespaced(c.clone(), "default");
    // Every version of "a" the watch shows, from before it exists.
    let mut versions = watcher(
        services.clone(),
        watcher::Config::default().fields("metadata.name=a"),
    )
    .boxed();
    while !matches!(versions.next().await, Some(Ok(watcher::Event::InitDone))) {}
    let _: Service = create(&c, "default", svc("a")).await;
    let a = eventually("a's address", || async {
        let ips = addresses(&services, "a").await;
        (!ips.is_empty()).then_some(ips)
    })
    .await;
    assert_eq!(a, ["10.0.0.1"]);
    // The address and its pool annotation come in one write: no version has one
    // without the other.
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), versions.next());
        let s = match next.await.expect("the watch shows a's versions") {
            Some(Ok(watcher::Event::Apply(s))) => s,
            None => panic!("the watch ended"),
            _ => continue,
        };
        let pool = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(lb::crd::ALLOCATED_FROM_POOL).cloned());
        let has_address = s
            .status
            .and_then(|st| st.load_balancer?.ingress)
            .is_some_and(|i| !i.is_empty());
        assert_eq!(
            pool.is_some(),
            has_address,
            "{pool:?} without the address, or the reverse"
        );
        if has_address {
            break;
        }
    }
    drop(versions);
    let got = services.get("a").await.unwrap();
    assert_eq!(
        got.metadata.annotations.unwrap()[lb::crd::ALLOCATED_FROM_POOL],
        "p"
    );
    eventually("an IPAllocated event", || async {
        let events = Api::<Event>::namespaced(c.clone(), "default")
            .list(&ListParams::default())
            .await
            .ok()?;
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("IPAllocated"))
            .then_some(())
    })
    .await;

    // Down: a Service appears holding .2 (as after a move from MetalLB), another
    // without an address.
    h.controllers.take().unwrap().shutdown().await;
    let _: Service = create(&c, "default", svc("held")).await;
    services
        .patch_status(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.2" }] } } }),
            ),
        )
        .await
        .unwrap();
    let _: Service = create(&c, "default", svc("new")).await;

    let _again = controllers::start(c.clone(), common::config());
    let new = eventually("new's address", || async {
        let ips = addresses(&services, "new").await;
        (!ips.is_empty()).then_some(ips)
    })
    .await;
    assert_eq!(new, ["10.0.0.3"], "the held address is not given again");
    assert_eq!(addresses(&services, "held").await, ["10.0.0.2"]);
    assert_eq!(addresses(&services, "a").await, ["10.0.0.1"]);
    // The held one is adopted: it gets the pool annotation.
    eventually("held's annotation", || async {
        let s = services.get("held").await.ok()?;
        (s.metadata.annotations?.get(lb::crd::ALLOCATED_FROM_POOL)? == "p").then_some(())
    })
    .await;
    // The pool's status counts the three.
    let pools: Api<lb::crd::IPAddressPool> = Api::namespaced(c.clone(), "metallb-system");
    eventually("pool status", || async {
        let st = pools.get("p").await.ok()?.status?;
        (st.assigned_ipv4 == 3 && st.available_ipv4 == 0).then_some(())
    })
    .await;
}

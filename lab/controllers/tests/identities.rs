//! The controllers under enforced RBAC with kube's identities: the process as
//! `system:kube-controller-manager` (which may list and watch everything, and make
//! ServiceAccounts and their tokens, but write no workload), each controller with the
//! token of its own ServiceAccount in kube-system, the scheduler as
//! `system:kube-scheduler`. Workloads still run, so each controller's writes fit its
//! `system:controller:*` role; and a controller's token is refused what its role does
//! not give, with kube-apiserver's 403.

mod common;

use std::collections::BTreeSet;

use common::{create, eventually, fake_kubelet, ready_node};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn controllers_run_as_their_service_accounts_under_rbac() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let r = apiserver::router(&apiserver::Config::new(dir.path())).unwrap();
    let admin = Client::new(r.clone(), "default");
    let authenticated = ["system:authenticated"];
    let clients = controllers::credentials::Clients {
        root: Client::new(
            r.as_user("system:kube-controller-manager", &authenticated),
            "default",
        ),
        anonymous: Some(Client::new(r.with_service_account_tokens(), "default")),
        scheduler: Some(Client::new(
            r.as_user("system:kube-scheduler", &authenticated),
            "default",
        )),
    };
    let controllers = controllers::start(clients, common::config());
    ready_node(&admin, "node-1", json!({})).await;
    ready_node(&admin, "node-2", json!({})).await;
    let kubelet = fake_kubelet(&admin);

    // A Deployment scales (deployment, replicaset controllers; the scheduler binds).
    create::<Deployment>(
        &admin,
        "default",
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    eventually("the deployment's 2 replicas ready", || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas == Some(2)).then_some(())
    })
    .await;

    // A controller whose ServiceAccount was deleted (its token now refused, 401) gets
    // it back with a new token, and goes on.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "kube-system");
    sas.delete("replicaset-controller", &Default::default())
        .await
        .unwrap();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    eventually("3 replicas ready after the token was renewed", || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas == Some(3)).then_some(())
    })
    .await;

    // A Service gets its EndpointSlice and Endpoints (endpointslice, endpoint).
    create::<Service>(
        &admin,
        "default",
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"port": 80}]}}),
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
    eventually("an endpointslice with 3 endpoints", || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        let n: usize = l
            .items
            .iter()
            .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
            .sum();
        (n == 3).then_some(())
    })
    .await;
    let endpoints: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
    eventually("endpoints with 3 addresses", || async {
        let e = endpoints.get("web").await.ok()?;
        let n: usize = e
            .subsets?
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum();
        (n == 3).then_some(())
    })
    .await;

    // A Job completes (job controller), then goes after its TTL (ttl-after-finished).
    create::<Job>(
        &admin,
        "default",
        json!({"metadata": {"name": "once"}, "spec": {"ttlSecondsAfterFinished": 0,
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod = eventually("the job's pod running", || async {
        let l = pods
            .list(&ListParams::default().labels("job-name=once"))
            .await
            .ok()?;
        let p = l.items.into_iter().next()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let done = json!({"status": {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False"}]}});
    pods.patch_status(
        pod.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(done),
    )
    .await
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(admin.clone(), "default");
    eventually(
        "the job complete and then deleted after its TTL",
        || async { jobs.get_opt("once").await.ok()?.is_none().then_some(()) },
    )
    .await;

    // A DaemonSet and a StatefulSet run their pods; nodes get podCIDRs (node-controller).
    create::<DaemonSet>(
        &admin,
        "default",
        json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "agent"}]}}}}),
    )
    .await;
    create::<StatefulSet>(
        &admin,
        "default",
        json!({"metadata": {"name": "db"}, "spec": {"replicas": 2, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "db"}]}}}}),
    )
    .await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), "default");
    let statefulsets: Api<StatefulSet> = Api::namespaced(admin.clone(), "default");
    eventually(
        "the daemonset on both nodes and the statefulset ready",
        || async {
            let ds = daemonsets.get("agent").await.ok()?.status?;
            let sts = statefulsets.get("db").await.ok()?.status?;
            (ds.number_ready == 2 && sts.ready_replicas == Some(2)).then_some(())
        },
    )
    .await;
    let nodes: Api<Node> = Api::all(admin.clone());
    eventually("podCIDRs on the nodes", || async {
        let l = nodes.list(&ListParams::default()).await.ok()?;
        l.items
            .iter()
            .all(|n| n.spec.as_ref().is_some_and(|s| s.pod_cidr.is_some()))
            .then_some(())
    })
    .await;

    // Each controller has its ServiceAccount in kube-system, made by the process.
    let have: BTreeSet<String> = sas
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    for want in [
        "deployment-controller",
        "replicaset-controller",
        "replication-controller",
        "job-controller",
        "ttl-after-finished-controller",
        "cronjob-controller",
        "statefulset-controller",
        "daemon-set-controller",
        "node-controller",
        "endpointslice-controller",
        "endpoint-controller",
    ] {
        assert!(have.contains(want), "{want} in {have:?}");
    }

    // The replicaset controller's token is refused what its role does not give.
    let token = sas
        .create_token_request(
            "replicaset-controller",
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec::default()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let as_rs = Client::new(
        Bearer {
            r: r.with_service_account_tokens(),
            token,
        },
        "default",
    );
    let secrets: Api<Secret> = Api::namespaced(as_rs.clone(), "default");
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert_eq!(
                s.message,
                "secrets is forbidden: User \"system:serviceaccount:kube-system:replicaset-controller\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
            );
        }
        other => panic!("listing secrets as the replicaset controller: {other:?}"),
    }
    // ... and allowed what it gives.
    let as_rs_pods: Api<Pod> = Api::namespaced(as_rs, "default");
    as_rs_pods.list(&ListParams::default()).await.unwrap();
    // The process's own identity writes no workload.
    let kcm: Api<Pod> = Api::namespaced(
        Client::new(
            r.as_user("system:kube-controller-manager", &authenticated),
            "default",
        ),
        "default",
    );
    match kcm
        .delete(pod.metadata.name.as_deref().unwrap(), &Default::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("deleting a pod as kube-controller-manager: {other:?}"),
    }

    kubelet.abort();
    controllers.shutdown().await;
}

/// `r` with `Authorization: Bearer TOKEN` on every request.
#[derive(Clone)]
struct Bearer {
    r: apiserver::Router,
    token: String,
}

impl tower_service::Service<http::Request<kube::client::Body>> for Bearer {
    type Response = http::Response<apiserver::ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<kube::client::Body>) -> Self::Future {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        let r = self.r.clone();
        Box::pin(async move { Ok(r.handle(req).await) })
    }
}

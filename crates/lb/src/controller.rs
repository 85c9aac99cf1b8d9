//! The allocation controller (`kubewire lb-controller`; in the lab it runs inside
//! `kubewire controllers`), MetalLB's controller: it watches Services, the
//! IPAddressPools of its namespace (`metallb-system`, where MetalLB reads its
//! configuration) and Namespaces (for `serviceAllocation.namespaceSelectors`), computes
//! every assignment with [`alloc::plan`] and writes only what differs:
//!
//! - a Service's `status.loadBalancer.ingress` (`ipMode: VIP`) and its
//!   `metallb.io/ip-allocated-from-pool` annotation, by which the announcers find its
//!   advertisements; both in one write to the status subresource (which takes a
//!   built-in type's metadata too), so an announcer never sees an address without its
//!   pool;
//! - core/v1 Events on the Service with MetalLB's reasons (`IPAllocated`,
//!   `AllocationFailed`, `ClearAssignment`, ...), each told once, not at every pass;
//! - each IPAddressPool's status (addresses assigned and available per family).
//!
//! Nothing is decided before every watch has listed once: the first pass sees every
//! Service with the addresses it already holds, and [`alloc::plan`] takes those in
//! before it gives any out (restart safety). What the controller wrote counts over an
//! older copy in its view until the watch brings the write back (by resourceVersion),
//! so a lagging watch never makes it give an address a second time. A configuration
//! MetalLB would refuse (overlapping pools, a bad CIDR: what a validating webhook keeps
//! out of a cluster) is logged and the last good one kept, as MetalLB does.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s::{Mirror, ObjectKey, Store};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::alloc::{self, Decision, ServiceView};
use crate::crd::{ALLOCATED_FROM_POOL, IPAddressPool, IPAddressPoolStatus};
use crate::pool::{self, Pool};

/// The name it writes and reports as (field manager, Events' source).
pub const COMPONENT: &str = "kubewire-lb-controller";
/// Where MetalLB's configuration lives, and so where this controller reads pools.
pub const DEFAULT_NAMESPACE: &str = "metallb-system";
/// Writes in flight at once.
const CONCURRENT_WRITES: usize = 8;
/// After a failed write, the next try.
const RETRY: Duration = Duration::from_secs(1);

/// What stops the controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable API connection (fix the kubeconfig).
    #[error(transparent)]
    Client(#[from] k8s::Error),
    /// The signal handlers could not be installed.
    #[error("handling SIGTERM")]
    Signals(#[source] std::io::Error),
}

/// `kubewire lb-controller` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// The namespace of the IPAddressPools (MetalLB's configuration namespace).
    #[arg(long = "config-namespace", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// The `spec.loadBalancerClass` served besides Services that set none.
    #[arg(long, default_value = alloc::LOAD_BALANCER_CLASS)]
    pub load_balancer_class: String,
}

impl Args {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = self.client.to_args();
        args.push(format!("--config-namespace={}", self.namespace).into());
        args.push(format!("--load-balancer-class={}", self.load_balancer_class).into());
        args
    }
}

/// What the controller needs besides its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The IPAddressPools' namespace.
    pub namespace: String,
    /// The served `loadBalancerClass`.
    pub class: String,
    /// How often everything is recomputed without a change.
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: DEFAULT_NAMESPACE.into(),
            class: alloc::LOAD_BALANCER_CLASS.into(),
            resync: Duration::from_secs(30),
        }
    }
}

impl From<&Args> for Config {
    fn from(a: &Args) -> Config {
        Config {
            namespace: a.namespace.clone(),
            class: a.load_balancer_class.clone(),
            ..Config::default()
        }
    }
}

/// `kubewire lb-controller`: runs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut shutdown = k8s::Shutdown::new().map_err(Error::Signals)?;
    let client = args.client.client().await?;
    info!(namespace = %args.namespace, class = %args.load_balancer_class, "lb-controller started");
    tokio::select! {
        () = control(client, Config::from(&args)) => {}
        () = shutdown.recv() => info!("lb-controller stopping"),
    }
    Ok(())
}

/// A Service as the controller keeps it.
struct Svc {
    view: ServiceView,
    name: String,
    uid: Option<String>,
    rv: u64,
}

/// The Services that matter to the controller: LoadBalancers, and Services of any other
/// type that still carry an address or pool annotation to take off. The others (most of
/// a cluster's Services) are not kept: `alloc::plan` decides nothing for them. Boxed,
/// so the table grows by a pointer per slot, not a whole record.
#[derive(Default)]
struct Services(HashMap<ObjectKey, Box<Svc>>);

/// What tells one outcome's events apart from another's (their reasons and messages),
/// computed without copying them: the controller compares it at every pass for every
/// Service.
fn fingerprint(events: &[alloc::Event]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for e in events {
        e.reason.hash(&mut h);
        e.message.hash(&mut h);
    }
    h.finish()
}

fn rv_of(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Store<Service> for Services {
    fn apply(&mut self, key: ObjectKey, obj: Service) -> bool {
        let view = ServiceView::new(&obj);
        if !view.load_balancer && view.current.is_empty() && view.current_pool.is_none() {
            return self.0.remove(&key).is_some();
        }
        let svc = Box::new(Svc {
            view,
            name: obj.metadata.name.clone().unwrap_or_default(),
            uid: obj.metadata.uid.clone(),
            rv: rv_of(&obj.metadata),
        });
        let changed = self.0.get(&key).is_none_or(|old| old.view != svc.view);
        self.0.insert(key, svc);
        changed
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().cloned().collect()
    }
}

#[derive(Default)]
struct Pools(BTreeMap<ObjectKey, IPAddressPool>);

impl Store<IPAddressPool> for Pools {
    fn apply(&mut self, key: ObjectKey, mut obj: IPAddressPool) -> bool {
        obj.metadata.managed_fields = None;
        let changed = self.0.get(&key).is_none_or(|old| {
            old.spec != obj.spec
                || old.status != obj.status
                || old.metadata.name != obj.metadata.name
        });
        self.0.insert(key, obj);
        changed
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().cloned().collect()
    }
}

#[derive(Default)]
struct Namespaces(BTreeMap<String, BTreeMap<String, String>>);

impl Store<Namespace> for Namespaces {
    fn apply(&mut self, key: ObjectKey, obj: Namespace) -> bool {
        let labels = obj.metadata.labels.unwrap_or_default();
        let changed = self.0.get(&*key) != Some(&labels);
        self.0.insert(key.into(), labels);
        changed
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().map(|k| k.as_str().into()).collect()
    }
}

/// One watcher event of any watched kind.
enum Watched {
    Service(Box<watcher::Event<Service>>),
    Pool(Box<watcher::Event<IPAddressPool>>),
    Namespace(Box<watcher::Event<Namespace>>),
}

/// What the controller wrote on a Service, counted until the watch brings it back.
struct Written {
    rv: u64,
    ips: Vec<IpAddr>,
    pool: Option<String>,
}

/// The controller's state between passes.
struct Controller {
    client: kube::Client,
    config: Config,
    services: Services,
    pools: Pools,
    namespaces: Namespaces,
    mirrors: [Mirror; 3],
    /// The last configuration that parsed, and the last refusal logged.
    good: BTreeMap<String, Pool>,
    refused: Option<String>,
    written: HashMap<String, Written>,
    /// The events last told per Service, as a [`fingerprint`]: the texts themselves
    /// were a third of what the controller held per Service.
    told: HashMap<String, u64>,
}

/// Runs the controller with `client` forever (the lab's controllers spawn this).
pub async fn control(client: kube::Client, config: Config) {
    let services = k8s::watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(|e| e.map(|e| Watched::Service(Box::new(e))))
    .boxed();
    let pools = k8s::watch(
        Api::<IPAddressPool>::namespaced(client.clone(), &config.namespace),
        watcher::Config::default(),
    )
    .map(|e| e.map(|e| Watched::Pool(Box::new(e))))
    .boxed();
    let namespaces = k8s::watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(|e| e.map(|e| Watched::Namespace(Box::new(e))))
    .boxed();
    let mut events = futures::stream::select_all([services, pools, namespaces]);
    let resync = config.resync;
    let mut c = Controller {
        client,
        config,
        services: Services::default(),
        pools: Pools::default(),
        namespaces: Namespaces::default(),
        mirrors: Default::default(),
        good: BTreeMap::new(),
        refused: None,
        written: HashMap::new(),
        told: HashMap::new(),
    };
    let mut next_pass = tokio::time::Instant::now() + resync;
    loop {
        let mut changed = false;
        tokio::select! {
            e = events.next() => {
                let Some(e) = e else { return };
                changed |= c.step(e);
                // Take in whatever else is ready before computing.
                while let Some(Some(e)) = events.next().now_or_never() {
                    changed |= c.step(e);
                }
            }
            () = tokio::time::sleep_until(next_pass) => changed = true,
        }
        if !changed || !c.mirrors.iter().all(Mirror::synced) {
            continue;
        }
        let started = std::time::Instant::now();
        let ok = c.pass().await;
        debug!(took = ?started.elapsed(), "pass");
        next_pass = tokio::time::Instant::now() + if ok { resync } else { RETRY };
    }
}

impl Controller {
    /// Takes in one watcher event; returns whether anything read changed.
    fn step(&mut self, e: Result<Watched, watcher::Error>) -> bool {
        match e {
            Ok(Watched::Service(e)) => self.mirrors[0].step(&mut self.services, *e),
            Ok(Watched::Pool(e)) => self.mirrors[1].step(&mut self.pools, *e),
            Ok(Watched::Namespace(e)) => self.mirrors[2].step(&mut self.namespaces, *e),
            Err(e) => {
                // The watcher backs off and re-lists by itself.
                warn!(error = %k8s::ErrorChain(&e), "watch failed; retrying");
                false
            }
        }
    }

    /// The pools in effect: the configuration if it parses, else the last that did.
    fn pools(&mut self) -> BTreeMap<String, Pool> {
        match pool::parse_all(self.pools.0.values(), &self.namespaces.0) {
            Ok(p) => {
                self.refused = None;
                self.good = p;
            }
            Err(e) => {
                if self.refused.as_deref() != Some(e.0.as_str()) {
                    warn!(error = %e, "IPAddressPools refused; keeping the last configuration that was valid");
                    self.refused = Some(e.0);
                }
            }
        }
        self.good.clone()
    }

    /// One pass: computes every assignment and writes what differs. Returns whether
    /// every write went through.
    async fn pass(&mut self) -> bool {
        let computed = std::time::Instant::now();
        let pools = self.pools();
        self.written
            .retain(|k, w| self.services.0.get(k.as_str()).is_some_and(|s| s.rv < w.rv));
        self.told
            .retain(|k, _| self.services.0.contains_key(k.as_str()));
        // The stored views as they are, but for the few whose writes the watch has not
        // brought back yet: those are copied with what was written.
        let views: Vec<Cow<'_, ServiceView>> = self
            .services
            .0
            .values()
            .map(|s| match self.written.get(&s.view.key) {
                None => Cow::Borrowed(&s.view),
                Some(w) => {
                    let mut v = s.view.clone();
                    v.current = w.ips.clone();
                    v.current_pool = w.pool.clone();
                    Cow::Owned(v)
                }
            })
            .collect();
        let plan = alloc::plan(&pools, &views, &self.config.class);

        let mut writes = Vec::new();
        // Events are recorded once the writes are done: they are not on the way from a
        // change to its address.
        let mut told_now = Vec::new();
        for view in &views {
            let outcome = &plan.services[&view.key];
            let svc = &self.services.0[view.key.as_str()];
            let want: Option<(&[IpAddr], &str)> = match &outcome.decision {
                Decision::NotOurs => continue,
                Decision::Assigned { ips, pool } => Some((ips, pool)),
                Decision::None => None,
            };
            let have = (view.current.as_slice(), view.current_pool.as_deref());
            let differs = match want {
                Some((ips, pool)) => have != (ips, Some(pool)),
                None => !view.current.is_empty() || view.current_pool.is_some(),
            };
            if differs {
                writes.push(write(
                    self.client.clone(),
                    view.namespace.clone(),
                    svc.name.clone(),
                    view.key.clone(),
                    want.map(|(ips, pool)| (ips.to_vec(), pool.to_owned())),
                    (have.0.to_vec(), have.1.map(str::to_owned)),
                ));
            }
            if outcome.events.is_empty() {
                self.told.remove(&view.key);
                continue;
            }
            let told = fingerprint(&outcome.events);
            if self.told.get(&view.key) != Some(&told) {
                for e in &outcome.events {
                    if e.type_ == alloc::EventType::Warning {
                        info!(service = %view.key, reason = e.reason, "{}", e.message);
                    } else {
                        debug!(service = %view.key, reason = e.reason, "{}", e.message);
                    }
                    told_now.push((view.namespace.clone(), svc.name.clone(), svc.uid.clone(), e));
                }
                self.told.insert(view.key.clone(), told);
            }
        }
        let n_writes = writes.len();
        debug!(compute = ?computed.elapsed(), writes = n_writes, "planned");
        let mut ok = true;
        let mut results = futures::stream::iter(writes).buffer_unordered(CONCURRENT_WRITES);
        while let Some((key, result)) = results.next().await {
            match result {
                Ok(w) => {
                    self.written.insert(key, w);
                }
                Err(e) => {
                    warn!(service = %key, error = %k8s::ErrorChain(&e), "writing the service's addresses; retrying");
                    ok = false;
                }
            }
        }
        drop(results);
        for (namespace, name, uid, e) in told_now {
            record(&self.client, &namespace, &name, uid, e);
        }
        ok & self.write_pool_statuses(&pools, &plan.usage).await
    }

    /// IPAddressPool status: what each pool has given out and has left.
    async fn write_pool_statuses(
        &mut self,
        pools: &BTreeMap<String, Pool>,
        usage: &BTreeMap<String, alloc::Usage>,
    ) -> bool {
        let mut ok = true;
        let api: Api<IPAddressPool> = Api::namespaced(self.client.clone(), &self.config.namespace);
        for cr in self.pools.0.values_mut() {
            let name = cr.metadata.name.clone().unwrap_or_default();
            let (Some(pool), Some(used)) = (pools.get(&name), usage.get(&name)) else {
                continue;
            };
            let cap = pool.capacity();
            let count = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
            let status = IPAddressPoolStatus {
                assigned_ipv4: count(used.v4.into()),
                assigned_ipv6: count(used.v6.into()),
                available_ipv4: count(cap.v4.saturating_sub(used.v4.into())),
                available_ipv6: count(cap.v6.saturating_sub(used.v6.into())),
            };
            if cr.status.as_ref() == Some(&status) {
                continue;
            }
            let patch = Patch::Merge(json!({ "status": status }));
            match api.patch_status(&name, &params(), &patch).await {
                Ok(_) => cr.status = Some(status),
                Err(e) => {
                    warn!(pool = %name, error = %k8s::ErrorChain(&e), "writing the pool's status");
                    ok = false;
                }
            }
        }
        ok
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(COMPONENT.into()),
        ..PatchParams::default()
    }
}

/// Writes a Service's addresses and pool annotation (`want`), or takes them off,
/// where they differ from what it has (`have`). One write to the status subresource
/// carries both: a built-in type's status write takes its metadata too (kube-apiserver's
/// Service status strategy resets only the spec), so the address and the pool it came
/// from appear together and go together, and a change reaches watchers in one write.
async fn write(
    client: kube::Client,
    namespace: String,
    name: String,
    key: String,
    want: Option<(Vec<IpAddr>, String)>,
    have: (Vec<IpAddr>, Option<String>),
) -> (String, Result<Written, kube::Error>) {
    let api: Api<Service> = Api::namespaced(client, &namespace);
    let (ips, pool) = match want {
        Some((ips, pool)) => (ips, Some(pool)),
        None => (Vec::new(), None),
    };
    let mut patch = serde_json::Map::new();
    if have.1 != pool {
        patch.insert(
            "metadata".into(),
            json!({ "annotations": { ALLOCATED_FROM_POOL: pool } }),
        );
    }
    if have.0 != ips {
        let ingress = if ips.is_empty() {
            serde_json::Value::Null
        } else {
            ips.iter()
                .map(|ip| json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
                .collect()
        };
        patch.insert(
            "status".into(),
            json!({ "loadBalancer": { "ingress": ingress } }),
        );
    }
    let t = std::time::Instant::now();
    let result = api
        .patch_status(
            &name,
            &params(),
            &Patch::Merge(serde_json::Value::Object(patch)),
        )
        .await
        .map(|svc| Written {
            rv: rv_of(&svc.metadata),
            ips,
            pool,
        });
    tracing::trace!(service = %key, took = ?t.elapsed(), "written");
    (key, result)
}

/// Records a core/v1 Event about the Service (what `kubectl describe` and
/// `kubectl get events` list); a lost event is only logged.
fn record(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    uid: Option<String>,
    e: &alloc::Event,
) {
    let service = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        uid,
        ..Default::default()
    };
    k8s::events::record(
        client,
        k8s::events::new(
            service,
            COMPONENT,
            e.type_.as_str(),
            e.reason,
            e.message.clone(),
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip() {
        let args = Args {
            client: k8s::ClientArgs {
                kubeconfig: Some("/x/kubeconfig".into()),
                server: None,
            },
            namespace: "lb".into(),
            load_balancer_class: "example.com/lb".into(),
        };
        let argv: Vec<String> = args
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        assert_eq!(k8s::parse_flags::<Args>(&argv), args);
        let defaults = k8s::parse_flags::<Args>(&[]);
        assert_eq!(defaults.namespace, "metallb-system");
        assert_eq!(defaults.load_balancer_class, "kubewire.io/lb");
    }
}

//! The gateway's controller: the one reconcile shape (ARCHITECTURE.md) with routes as
//! the desired state.
//!
//! - **Watch** (`k8s::watch` + `Mirror` into plain stores): Ingresses, IngressClasses,
//!   the Gateway API kinds, Emissary Mappings, Services, EndpointSlices, Namespaces (for
//!   `allowedRoutes` selectors), ConfigMaps (BackendTLSPolicy CAs) and Secrets of type
//!   `kubernetes.io/tls` only (a field selector: no other Secret is ever read). A kind
//!   whose CRD is not installed counts as empty, so a cluster without Gateway API or
//!   Emissary's CRDs still gets its Ingresses served.
//! - **Compute**: once every watch has listed, each burst of events (whatever is ready
//!   is taken in first) rebuilds the [`World`] and runs [`crate::compile`].
//! - **Apply**: the [`Config`] is sent on the data plane's `watch` channel only when it
//!   differs from the one it holds; statuses are written only when they differ from what
//!   the object holds, and only by the replica holding the Lease (`coordination.k8s.io`,
//!   in the gateway Service's namespace), so two replicas never fight over them. Route
//!   parents and BackendTLSPolicy ancestors of other controllers are kept as they are.
//! - **Resync** every 30 s: everything is recomputed and every status compared again,
//!   which repairs a status someone changed by hand.
//!
//! The addresses written into Ingress `status.loadBalancer` are those of the gateway's
//! own LoadBalancer Service (`--service`). Each Gateway gets a LoadBalancer Service of its
//! own beside it ([`crate::gatewayapi::services`]), with a port per listener port, and
//! its addresses go into the Gateway's `status.addresses`: the Lease holder creates,
//! changes and deletes those Services (only those it labelled) as the compile says.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s::{Mirror, ObjectKey, Store};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::gatewayapi::services::{
    GATEWAY_ANNOTATION, GATEWAY_LABEL, GatewayService, LB_IPS_ANNOTATION,
};
use crate::gatewayapi::types as gw;
use crate::status::{self, Kind, Update};
use crate::world::{Obj, Settings, World};

/// The name it writes and reports as (field manager, Lease holder prefix).
pub const COMPONENT: &str = "kubewire-gateway";
/// The gateway's own LoadBalancer Service, as the install names it.
pub const DEFAULT_SERVICE: &str = "kube-system/kubewire-gateway";
/// The Lease the replicas elect their status writer with.
pub const LEASE: &str = "kubewire-gateway";
const LEASE_SECONDS: i32 = 15;
const RENEW: Duration = Duration::from_secs(5);
const RESYNC: Duration = Duration::from_secs(30);
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
    /// `--service` is not `namespace/name`.
    #[error("--service {0:?}: expected namespace/name")]
    Service(String),
    /// The data plane failed (a listener or the admin port could not be bound).
    #[error("the data plane")]
    Proxy(#[source] crate::proxy::Error),
}

/// `kubewire gateway` flags: the controller's and the data plane's.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// The gateway's own LoadBalancer Service, `namespace/name`: its addresses go into
    /// the statuses of Ingresses and Gateways, and the replicas' Lease lives in its
    /// namespace.
    #[arg(long, default_value = DEFAULT_SERVICE)]
    pub service: String,
    /// GatewayClasses with this controllerName are served.
    #[arg(long, default_value = crate::gatewayapi::CONTROLLER_NAME)]
    pub controller_name: String,
    /// IngressClass names served, comma-separated (besides IngressClasses whose
    /// spec.controller is kubewire.io/gateway).
    #[arg(
        long = "ingress-class",
        value_delimiter = ',',
        default_value = "kubewire,ambassador"
    )]
    pub ingress_classes: Vec<String>,
    /// The Emissary `ambassador_id` served (Mappings naming another are left alone).
    #[arg(long, default_value = "default")]
    pub ambassador_id: String,
    /// The GatewayClass the controller keeps in existence for its controllerName (as
    /// istiod keeps its own); empty for none. A manifest cannot carry it beside the CRDs:
    /// `kubectl apply` maps every object before the CRDs exist.
    #[arg(long, default_value = DEFAULT_GATEWAY_CLASS)]
    pub gateway_class: String,
    /// The data plane's settings.
    #[command(flatten)]
    pub proxy: crate::proxy::Options,
}

/// The GatewayClass created by default.
pub const DEFAULT_GATEWAY_CLASS: &str = "kubewire";

impl Args {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = self.client.to_args();
        args.push(format!("--service={}", self.service).into());
        args.push(format!("--controller-name={}", self.controller_name).into());
        args.push(format!("--ingress-class={}", self.ingress_classes.join(",")).into());
        args.push(format!("--ambassador-id={}", self.ambassador_id).into());
        args.push(format!("--gateway-class={}", self.gateway_class).into());
        args.extend(self.proxy.to_args());
        args
    }
}

/// What the controller needs besides its client and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The gateway's Service (namespace, name).
    pub service: (String, String),
    /// What is served (addresses are filled in from the Service).
    pub settings: Settings,
    /// This replica's name in the Lease.
    pub identity: String,
    /// The GatewayClass to keep in existence (none when empty).
    pub gateway_class: String,
}

impl TryFrom<&Args> for Options {
    type Error = Error;
    fn try_from(a: &Args) -> Result<Options, Error> {
        let (ns, name) = a
            .service
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .ok_or_else(|| Error::Service(a.service.clone()))?;
        Ok(Options {
            service: (ns.into(), name.into()),
            settings: Settings {
                controller_name: a.controller_name.clone(),
                ingress_classes: a.ingress_classes.clone(),
                addresses: Vec::new(),
                service: (ns.into(), name.into()),
                ambassador_id: a.ambassador_id.clone(),
            },
            identity: identity(),
            gateway_class: a.gateway_class.clone(),
        })
    }
}

/// The pod's name (its hostname) and this process, unique among the replicas.
fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}_{}", std::process::id())
}

/// `kubewire gateway`: the controller and the data plane, until SIGTERM or SIGINT. The
/// data plane starts serving with the controller's first compile (so `/ready` never
/// answers for an empty configuration taken before the watches synced), and on the signal
/// drains its connections before the process exits.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut shutdown = k8s::Shutdown::new().map_err(Error::Signals)?;
    let options = Options::try_from(&args)?;
    let client = args.client.client().await?;
    let (tx, mut rx) = watch::channel(Arc::new(Config::default()));
    info!(service = %args.service, identity = %options.identity, "gateway started");
    let controller = tokio::spawn(control(client, options, tx));
    tokio::select! {
        first = rx.changed() => {
            if first.is_err() {
                // The controller ended (its watches closed) before its first compile.
                return Ok(());
            }
        }
        () = shutdown.recv() => {
            controller.abort();
            return Ok(());
        }
    }
    let stopping = async move {
        shutdown.recv().await;
        info!("gateway stopping: draining connections");
    };
    let served = crate::proxy::serve(rx, args.proxy.clone(), stopping).await;
    controller.abort();
    served.map_err(Error::Proxy)
}

/// Marks a custom kind for [`Custom`].
pub trait CustomKind: Send + Sync + 'static {
    /// (group, version, kind, plural).
    const API: (&'static str, &'static str, &'static str, &'static str);
}

macro_rules! custom_kinds {
    ($($marker:ident => $kind:expr),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq)]
        pub struct $marker;
        impl CustomKind for $marker {
            const API: (&'static str, &'static str, &'static str, &'static str) = $kind;
        }
    )*};
}

custom_kinds! {
    GatewayClassKind => Kind::GatewayClass.api(),
    GatewayKind => Kind::Gateway.api(),
    HttpRouteKind => Kind::HttpRoute.api(),
    GrpcRouteKind => Kind::GrpcRoute.api(),
    TlsRouteKind => Kind::TlsRoute.api(),
    TcpRouteKind => Kind::TcpRoute.api(),
    UdpRouteKind => Kind::UdpRoute.api(),
    BackendTlsPolicyKind => Kind::BackendTlsPolicy.api(),
    MappingKind => Kind::Mapping.api(),
    ReferenceGrantKind => (crate::gatewayapi::GROUP, "v1", "ReferenceGrant", "referencegrants"),
}

/// A custom resource as JSON (its spec parsed at compile time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Custom<M: CustomKind> {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(default)]
    pub status: Value,
    #[serde(skip)]
    marker: PhantomData<M>,
}

impl<M: CustomKind> kube::Resource for Custom<M> {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        M::API.2.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        M::API.0.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        M::API.1.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        M::API.3.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<M: CustomKind, S: serde::de::DeserializeOwned> From<&Custom<M>> for Obj<S> {
    fn from(c: &Custom<M>) -> Obj<S> {
        Obj::from_json(&json!({"metadata": c.metadata, "spec": c.spec}))
    }
}

/// One custom kind's objects, their specs parsed once as they arrive (not at every
/// compile: at 10,000 routes, parsing them all again took longer than the compile), and
/// the statuses they hold. A change of status alone is not a change the compile reads
/// (`apply` says false): it is noted in `statuses_changed` for the status writer's side.
pub struct Customs<M, S> {
    objects: BTreeMap<ObjectKey, (Obj<S>, Value)>,
    statuses_changed: bool,
    marker: PhantomData<M>,
}

impl<M, S> Default for Customs<M, S> {
    fn default() -> Self {
        Customs {
            objects: BTreeMap::new(),
            statuses_changed: false,
            marker: PhantomData,
        }
    }
}

impl<M: CustomKind, S: serde::de::DeserializeOwned + PartialEq> Store<Custom<M>> for Customs<M, S> {
    fn apply(&mut self, key: ObjectKey, mut c: Custom<M>) -> bool {
        c.metadata.managed_fields = None;
        c.metadata.resource_version = None;
        let obj: Obj<S> = Obj::from(&c);
        let (changed, status_changed) = match self.objects.get(&key) {
            None => (true, false),
            Some((o, status)) => (
                o.meta != obj.meta || o.spec != obj.spec,
                *status != c.status,
            ),
        };
        self.statuses_changed |= status_changed;
        self.objects.insert(key, (obj, c.status));
        changed
    }
    fn delete(&mut self, key: &str) -> bool {
        self.objects.remove(key).is_some()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.objects.keys().cloned().collect()
    }
}

impl<M, S: Clone> Customs<M, S> {
    fn objs(&self) -> Vec<Obj<S>> {
        self.objects.values().map(|(o, _)| o.clone()).collect()
    }
    fn status(&self, key: &str) -> Option<Value> {
        self.objects.get(key).map(|(_, s)| s.clone())
    }
    fn contains(&self, key: &str) -> bool {
        self.objects.contains_key(key)
    }
    fn take_statuses_changed(&mut self) -> bool {
        std::mem::take(&mut self.statuses_changed)
    }
}

/// One kind's objects, as the API holds them (without resourceVersion and managed
/// fields, so that a write that changes nothing read is no change).
pub struct Kept<K>(BTreeMap<ObjectKey, Arc<K>>);

impl<K> Default for Kept<K> {
    fn default() -> Self {
        Kept(BTreeMap::new())
    }
}

impl<K: kube::Resource + PartialEq> Store<K> for Kept<K> {
    fn apply(&mut self, key: ObjectKey, mut obj: K) -> bool {
        let meta = obj.meta_mut();
        meta.managed_fields = None;
        meta.resource_version = None;
        let changed = self.0.get(&key).map(|o| &**o) != Some(&obj);
        self.0.insert(key, Arc::new(obj));
        changed
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().cloned().collect()
    }
}

/// One kind as [`Kept`], where a change counts only if the last compile read the
/// Service it belongs to (found or not, see [`World::service`]), or the object is one a
/// compile always reads. At 1,000 Services that no route names, each replica compiled
/// everything again at every Service event.
struct ByService<K> {
    kept: Kept<K>,
    /// `namespace/name` of each Service the last compile read; `None` before the first.
    read: Option<HashSet<ObjectKey>>,
    /// The gateway's own Service, `namespace/name`.
    own: ObjectKey,
}

impl<K> Default for ByService<K> {
    fn default() -> Self {
        ByService {
            kept: Kept::default(),
            read: None,
            own: ObjectKey::default(),
        }
    }
}

/// What ties an object to a Service, for [`ByService`].
trait OfService {
    /// `namespace/name` of the Service the object (kept under `key`) belongs to.
    fn service(&self, key: &str) -> Option<ObjectKey>;
    /// Read by every compile whatever the routes name.
    fn always_read(&self, _key: &str, _own: &str) -> bool {
        false
    }
}

impl OfService for Service {
    fn service(&self, key: &str) -> Option<ObjectKey> {
        Some(key.into())
    }
    /// The gateway's own Service, and a Gateway's (by its label).
    fn always_read(&self, key: &str, own: &str) -> bool {
        key == own
            || self
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(GATEWAY_LABEL))
    }
}

impl OfService for EndpointSlice {
    fn service(&self, _key: &str) -> Option<ObjectKey> {
        let m = &self.metadata;
        let service = m.labels.as_ref()?.get("kubernetes.io/service-name")?;
        Some(format!("{}/{service}", m.namespace.as_deref()?).into())
    }
}

impl<K: OfService> ByService<K> {
    fn matters(&self, key: &str, obj: &K) -> bool {
        self.read
            .as_ref()
            .is_none_or(|r| obj.service(key).is_some_and(|s| r.contains(&s)))
            || obj.always_read(key, &self.own)
    }
}

impl<K: kube::Resource + PartialEq + OfService> Store<K> for ByService<K> {
    fn apply(&mut self, key: ObjectKey, obj: K) -> bool {
        let matters = self.matters(&key, &obj)
            || self
                .kept
                .0
                .get(&key)
                .is_some_and(|old| self.matters(&key, old));
        self.kept.apply(key, obj) && matters
    }
    fn delete(&mut self, key: &str) -> bool {
        let matters = self
            .kept
            .0
            .get(key)
            .is_some_and(|old| self.matters(key, old));
        self.kept.delete(key) && matters
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.kept.keys()
    }
}

impl<K> std::ops::Deref for ByService<K> {
    type Target = Kept<K>;
    fn deref(&self) -> &Kept<K> {
        &self.kept
    }
}

impl<K> std::ops::DerefMut for ByService<K> {
    fn deref_mut(&mut self) -> &mut Kept<K> {
        &mut self.kept
    }
}

/// Everything watched.
#[derive(Default)]
struct Stores {
    namespaces: Kept<Namespace>,
    services: ByService<Service>,
    slices: ByService<EndpointSlice>,
    secrets: Kept<Secret>,
    config_maps: Kept<ConfigMap>,
    ingress_classes: Kept<IngressClass>,
    ingresses: Kept<Ingress>,
    gateway_classes: Customs<GatewayClassKind, gw::GatewayClassSpec>,
    gateways: Customs<GatewayKind, gw::GatewaySpec>,
    http_routes: Customs<HttpRouteKind, gw::HttpRouteSpec>,
    grpc_routes: Customs<GrpcRouteKind, gw::GrpcRouteSpec>,
    tls_routes: Customs<TlsRouteKind, gw::TlsRouteSpec>,
    tcp_routes: Customs<TcpRouteKind, gw::L4RouteSpec>,
    udp_routes: Customs<UdpRouteKind, gw::L4RouteSpec>,
    grants: Customs<ReferenceGrantKind, gw::ReferenceGrantSpec>,
    policies: Customs<BackendTlsPolicyKind, gw::BackendTlsPolicySpec>,
    mappings: Customs<MappingKind, crate::mapping::MappingSpec>,
}

/// A watcher event applied to the stores; returns whether anything read changed.
type Step = Box<dyn FnOnce(&mut Stores, &mut [Watched]) -> bool + Send>;

/// One watch's state.
#[derive(Default)]
struct Watched {
    mirror: Mirror,
    /// Its kind is not served (no CRD): it counts as listed and empty.
    absent: bool,
    kind: String,
}

impl Watched {
    fn ready(&self) -> bool {
        self.mirror.synced() || self.absent
    }
}

fn watch_into<K, St: Store<K> + 'static>(
    client: &kube::Client,
    config: watcher::Config,
    index: usize,
    store: fn(&mut Stores) -> &mut St,
) -> BoxStream<'static, Step>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + PartialEq
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    k8s::watch(Api::<K>::all(client.clone()), config)
        .map(move |event| -> Step {
            Box::new(move |stores: &mut Stores, watched: &mut [Watched]| match event {
                Ok(e) => {
                    watched[index].absent = false;
                    watched[index].mirror.step(store(stores), e)
                }
                Err(e) => {
                    let not_found = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.code == 404
                    );
                    let w = &mut watched[index];
                    if not_found && !w.mirror.synced() {
                        let first = !w.absent;
                        w.absent = true;
                        if first {
                            info!(kind = %w.kind, "not served by the API server (CRD not installed?); taken as empty");
                        }
                        return first;
                    }
                    warn!(kind = %w.kind, error = %k8s::ErrorChain(&e), "watch failed; retrying");
                    false
                }
            })
        })
        .boxed()
}

fn objects<K: Clone>(k: &Kept<K>) -> Vec<K> {
    k.0.values().map(|o| (**o).clone()).collect()
}

fn keyed<K: kube::Resource, V, M: FromIterator<((String, String), V)>>(
    k: &Kept<K>,
    value: impl Fn(&Arc<K>) -> V,
) -> M {
    k.0.values()
        .map(|o| {
            let m = o.meta();
            (
                (
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                ),
                value(o),
            )
        })
        .collect()
}

impl Stores {
    /// Whether a status changed alone since the last call (what only the status writer
    /// compares).
    fn take_statuses_changed(&mut self) -> bool {
        // Not short-circuited: every flag is taken.
        [
            self.gateway_classes.take_statuses_changed(),
            self.gateways.take_statuses_changed(),
            self.http_routes.take_statuses_changed(),
            self.grpc_routes.take_statuses_changed(),
            self.tls_routes.take_statuses_changed(),
            self.tcp_routes.take_statuses_changed(),
            self.udp_routes.take_statuses_changed(),
            self.grants.take_statuses_changed(),
            self.policies.take_statuses_changed(),
            self.mappings.take_statuses_changed(),
        ]
        .contains(&true)
    }

    fn world(&self, options: &Options) -> World {
        let mut settings = options.settings.clone();
        let (ns, name) = &options.service;
        settings.addresses = self
            .services
            .0
            .get(format!("{ns}/{name}").as_str())
            .map(|s| crate::gatewayapi::services::load_balancer_addresses(s))
            .unwrap_or_default();
        World {
            settings,
            namespaces: self
                .namespaces
                .0
                .values()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            services: keyed(&self.services.kept, Arc::clone),
            endpoint_slices: crate::world::slices_by_service(
                self.slices.kept.0.values().map(|s| (**s).clone()),
            ),
            secrets: keyed(&self.secrets, |o| (**o).clone()),
            config_maps: keyed(&self.config_maps, |o| (**o).clone()),
            ingress_classes: objects(&self.ingress_classes),
            ingresses: objects(&self.ingresses),
            gateway_classes: self.gateway_classes.objs(),
            gateways: self.gateways.objs(),
            http_routes: self.http_routes.objs(),
            grpc_routes: self.grpc_routes.objs(),
            tls_routes: self.tls_routes.objs(),
            tcp_routes: self.tcp_routes.objs(),
            udp_routes: self.udp_routes.objs(),
            reference_grants: self.grants.objs(),
            backend_tls_policies: self.policies.objs(),
            mappings: self.mappings.objs(),
            http_faults: Vec::new(),
            backends: Default::default(),
            services_read: Default::default(),
        }
    }

    /// Takes in what a compile of `world` read: from now on only changes to those
    /// Services and their EndpointSlices call for another.
    fn note_read(&mut self, world: &World) {
        let read: HashSet<ObjectKey> = world
            .services_read
            .take()
            .into_iter()
            .map(|(ns, name)| format!("{ns}/{name}").into())
            .collect();
        self.slices.read = Some(read.clone());
        self.services.read = Some(read);
    }

    /// The status an object holds now.
    fn status_of(&self, u: &Update) -> Option<Value> {
        let key = if u.namespace.is_empty() {
            u.name.clone()
        } else {
            format!("{}/{}", u.namespace, u.name)
        };
        let key = key.as_str();
        match u.kind {
            Kind::Ingress => self
                .ingresses
                .0
                .get(key)
                .map(|i| serde_json::to_value(&i.status).unwrap_or(Value::Null)),
            Kind::GatewayClass => self.gateway_classes.status(key),
            Kind::Gateway => self.gateways.status(key),
            Kind::HttpRoute => self.http_routes.status(key),
            Kind::GrpcRoute => self.grpc_routes.status(key),
            Kind::TlsRoute => self.tls_routes.status(key),
            Kind::TcpRoute => self.tcp_routes.status(key),
            Kind::UdpRoute => self.udp_routes.status(key),
            Kind::BackendTlsPolicy => self.policies.status(key),
            Kind::Mapping => self.mappings.status(key),
        }
    }
}

/// The list of a kind's status that several controllers share, each its own entries.
fn shared_list(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute | Kind::TcpRoute | Kind::UdpRoute => {
            Some("parents")
        }
        Kind::BackendTlsPolicy => Some("ancestors"),
        _ => None,
    }
}

/// Whether writing `desired` over `current` is none of our business: a shared list
/// where neither holds an entry of ours (a route of another controller's Gateway).
pub fn not_ours(kind: Kind, desired: &Value, current: &Value, controller: &str) -> bool {
    let Some(list) = shared_list(kind) else {
        return false;
    };
    let ours = |v: &Value| {
        v[list]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["controllerName"] == json!(controller))
    };
    !ours(desired) && !ours(current)
}

/// The status to write: `desired`, with the list entries of other controllers that
/// `current` holds kept (route `parents`, policy `ancestors`).
pub fn merged(kind: Kind, desired: &Value, current: &Value, controller: &str) -> Value {
    let Some(list) = shared_list(kind) else {
        return desired.clone();
    };
    let mut out = desired.clone();
    let others: Vec<Value> = current[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["controllerName"] != json!(controller))
        .cloned()
        .collect();
    let ours = desired[list].as_array().cloned().unwrap_or_default();
    out[list] = Value::Array(others.into_iter().chain(ours).collect());
    out
}

/// Runs the controller with `client` forever, keeping `config` fed (the entry the data
/// plane's half joins).
pub async fn control(client: kube::Client, options: Options, config: watch::Sender<Arc<Config>>) {
    let all = watcher::Config::default;
    let tls_only = || watcher::Config::default().fields("type=kubernetes.io/tls");
    let streams: Vec<(&str, BoxStream<'static, Step>)> = vec![
        (
            "Namespace",
            watch_into(&client, all(), 0, |s| &mut s.namespaces),
        ),
        (
            "Service",
            watch_into(&client, all(), 1, |s| &mut s.services),
        ),
        (
            "EndpointSlice",
            watch_into(&client, all(), 2, |s| &mut s.slices),
        ),
        (
            "Secret",
            watch_into(&client, tls_only(), 3, |s| &mut s.secrets),
        ),
        (
            "ConfigMap",
            watch_into(&client, all(), 4, |s| &mut s.config_maps),
        ),
        (
            "IngressClass",
            watch_into(&client, all(), 5, |s| &mut s.ingress_classes),
        ),
        (
            "Ingress",
            watch_into(&client, all(), 6, |s| &mut s.ingresses),
        ),
        (
            "GatewayClass",
            watch_into(&client, all(), 7, |s| &mut s.gateway_classes),
        ),
        (
            "Gateway",
            watch_into(&client, all(), 8, |s| &mut s.gateways),
        ),
        (
            "HTTPRoute",
            watch_into(&client, all(), 9, |s| &mut s.http_routes),
        ),
        (
            "GRPCRoute",
            watch_into(&client, all(), 10, |s| &mut s.grpc_routes),
        ),
        (
            "TLSRoute",
            watch_into(&client, all(), 11, |s| &mut s.tls_routes),
        ),
        (
            "TCPRoute",
            watch_into(&client, all(), 12, |s| &mut s.tcp_routes),
        ),
        (
            "UDPRoute",
            watch_into(&client, all(), 13, |s| &mut s.udp_routes),
        ),
        (
            "ReferenceGrant",
            watch_into(&client, all(), 14, |s| &mut s.grants),
        ),
        (
            "BackendTLSPolicy",
            watch_into(&client, all(), 15, |s| &mut s.policies),
        ),
        (
            "Mapping",
            watch_into(&client, all(), 16, |s| &mut s.mappings),
        ),
    ];
    let mut watched: Vec<Watched> = streams
        .iter()
        .map(|(k, _)| Watched {
            kind: (*k).to_string(),
            ..Watched::default()
        })
        .collect();
    let mut events = futures::stream::select_all(streams.into_iter().map(|(_, s)| s));
    // The watches are read by a task of their own, into a queue the passes empty: read
    // only between passes, a watch gave about one event per pass once the passes were
    // long (each HTTP chunk is read when the body is asked for more), and a replica fell
    // minutes behind with 10,000 routes.
    let (step_tx, mut steps) = tokio::sync::mpsc::unbounded_channel::<Step>();
    tokio::spawn(async move {
        while let Some(step) = events.next().await {
            if step_tx.send(step).is_err() {
                return;
            }
        }
    });
    let (leader_tx, mut leader) = watch::channel(false);
    tokio::spawn(lead(
        client.clone(),
        options.service.0.clone(),
        options.identity.clone(),
        leader_tx,
    ));
    let mut stores = Stores::default();
    stores.services.own = format!("{}/{}", options.service.0, options.service.1).into();
    let (jobs, jobs_rx) = watch::channel(Arc::new(StatusJob::default()));
    tokio::spawn(write_statuses(client.clone(), jobs_rx));
    let mut next_pass = tokio::time::Instant::now() + RESYNC;
    // The first compile is always sent, even when empty: the data plane waits for it.
    let mut first = true;
    loop {
        let mut changed = false;
        let mut resync = false;
        tokio::select! {
            step = steps.recv() => {
                let Some(step) = step else { return };
                changed |= step(&mut stores, &mut watched);
                while let Ok(step) = steps.try_recv() {
                    changed |= step(&mut stores, &mut watched);
                }
            }
            r = leader.changed() => {
                if r.is_err() { return }
                changed = true;
                resync = true;
            }
            () = tokio::time::sleep_until(next_pass) => {
                changed = true;
                resync = true;
            }
        }
        // A status changed alone (most often one just written coming back) needs a
        // pass only where statuses are written.
        changed |= stores.take_statuses_changed() && *leader.borrow();
        if !changed || !watched.iter().all(Watched::ready) {
            continue;
        }
        let started = std::time::Instant::now();
        let world = stores.world(&options);
        let world_took = started.elapsed();
        let compiled = crate::compile(&world);
        stores.note_read(&world);
        let compile_took = started.elapsed() - world_took;
        let routes: usize = compiled
            .config
            .listeners
            .iter()
            .map(|l| match &l.kind {
                crate::config::ListenerKind::Http(h)
                | crate::config::ListenerKind::Tls { hosts: h, .. } => {
                    h.hosts.iter().map(|v| v.routes.len()).sum()
                }
                _ => 1,
            })
            .sum();
        let listeners = compiled.config.listeners.len();
        // Moved, not copied: the data plane takes the compile's own configuration.
        let new = compiled.config;
        let sent = config.send_if_modified(|current| {
            if !std::mem::take(&mut first) && **current == new {
                false
            } else {
                *current = Arc::new(new);
                true
            }
        });
        if sent {
            info!(listeners, routes, took = ?started.elapsed(), world = ?world_took, compile = ?compile_took, "configuration changed");
        }
        let mut ok = true;
        if *leader.borrow() {
            let writes = status_writes(
                &stores,
                &compiled.statuses,
                &options.settings.controller_name,
            );
            // Sent only when there is something to write or forget.
            if resync || !writes.is_empty() || !jobs.borrow().writes.is_empty() {
                jobs.send_replace(Arc::new(StatusJob { writes, resync }));
            }
            let class = &options.gateway_class;
            if !class.is_empty()
                && watched[7].mirror.synced()
                && !stores.gateway_classes.contains(class.as_str())
            {
                ok &= ensure_class(&client, class, &options.settings.controller_name).await;
            }
            if watched[1].mirror.synced() {
                let changes = service_changes(&stores, &options.service, &compiled.services);
                ok &= write_services(&client, &options.service.0, changes).await;
            }
        } else if !jobs.borrow().writes.is_empty() {
            // The Lease lost: the writer stops with what it was writing.
            jobs.send_replace(Arc::new(StatusJob::default()));
        }
        debug!(took = ?started.elapsed(), "pass");
        next_pass = tokio::time::Instant::now() + if ok { RESYNC } else { RETRY };
    }
}

/// A status to write: the merged status wanted (to know it when the watch brings it
/// back) and the same with its conditions' transition times.
#[derive(Clone, Debug, PartialEq)]
struct StatusWrite {
    kind: Kind,
    namespace: String,
    name: String,
    want: Value,
    stamped: Value,
}

/// What the status writer is to make so: the statuses that differ from what their
/// objects hold, as of the last pass.
#[derive(Clone, Debug, Default)]
struct StatusJob {
    writes: Vec<StatusWrite>,
    /// Forget what was written (a resync writes again what someone changed back).
    resync: bool,
}

/// The statuses of `updates` that differ from what their objects hold in `stores`
/// (other controllers' entries kept), stamped with `now` where a condition changes.
fn status_writes(stores: &Stores, updates: &[Update], controller: &str) -> Vec<StatusWrite> {
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut out = Vec::new();
    for u in updates {
        let Some(current) = stores.status_of(u) else {
            continue; // deleted meanwhile
        };
        if not_ours(u.kind, &u.status, &current, controller) {
            continue;
        }
        let want = merged(u.kind, &u.status, &current, controller);
        if status::unstamped(&current) == status::unstamped(&want) {
            continue;
        }
        let stamped = status::stamp(&want, &current, &now);
        out.push(StatusWrite {
            kind: u.kind,
            namespace: u.namespace.clone(),
            name: u.name.clone(),
            want,
            stamped,
        });
    }
    out
}

/// The status writer: a task of its own, so that a backlog of writes (10,000 routes
/// just applied) never holds up the next compile and the configuration it sends. It
/// takes the newest job, writes what it has not written yet (remembered until the watch
/// brings the status back and the pass stops asking for it), and tries again after
/// [`RETRY`] when a write fails.
async fn write_statuses(client: kube::Client, mut jobs: watch::Receiver<Arc<StatusJob>>) {
    let mut written: BTreeMap<(Kind, String, String), Value> = BTreeMap::new();
    let params = PatchParams {
        field_manager: Some(COMPONENT.into()),
        ..PatchParams::default()
    };
    loop {
        let job = Arc::clone(&jobs.borrow_and_update());
        if job.resync {
            written.clear();
        }
        let live: BTreeSet<(Kind, &str, &str)> = job
            .writes
            .iter()
            .map(|w| (w.kind, w.namespace.as_str(), w.name.as_str()))
            .collect();
        written.retain(|(kind, ns, name), _| live.contains(&(*kind, ns.as_str(), name.as_str())));
        let mut ok = true;
        for w in &job.writes {
            if jobs.has_changed().unwrap_or(true) {
                break; // a newer job: take it
            }
            let key = (w.kind, w.namespace.clone(), w.name.clone());
            if written.get(&key) == Some(&w.want) {
                continue; // written; the watch has not brought it back yet
            }
            let (group, version, kind, plural) = w.kind.api();
            let ar = ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: if group.is_empty() {
                    version.into()
                } else {
                    format!("{group}/{version}")
                },
                kind: kind.into(),
                plural: plural.into(),
            };
            let api: Api<DynamicObject> = if w.namespace.is_empty() {
                Api::all_with(client.clone(), &ar)
            } else {
                Api::namespaced_with(client.clone(), &w.namespace, &ar)
            };
            match api
                .patch_status(
                    &w.name,
                    &params,
                    &Patch::Merge(json!({"status": w.stamped})),
                )
                .await
            {
                Ok(_) => {
                    debug!(kind, namespace = %w.namespace, name = %w.name, "status written");
                    written.insert(key, w.want.clone());
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(kind, namespace = %w.namespace, name = %w.name, error = %k8s::ErrorChain(&e), "writing status; retrying");
                    ok = false;
                }
            }
        }
        if ok || jobs.has_changed().unwrap_or(true) {
            if jobs.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                r = jobs.changed() => if r.is_err() { return },
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// A change to the Gateways' Services.
#[derive(Clone, Debug, PartialEq)]
enum ServiceChange {
    Create(Value),
    /// A merge patch of the Service named.
    Patch(String, Value),
    Delete(String),
}

/// What makes the Services in `main`'s namespace the ones `wanted` lists: created when
/// missing, patched where what the controller sets differs (ports, selector, the
/// addresses asked for), and deleted when they carry our label but no Gateway wants them.
fn service_changes(
    stores: &Stores,
    main: &(String, String),
    wanted: &[GatewayService],
) -> Vec<ServiceChange> {
    let (ns, main_name) = main;
    let main_svc = stores.services.0.get(format!("{ns}/{main_name}").as_str());
    let mut out = Vec::new();
    // A Service needs a port: a Gateway with no listener to serve gets none.
    let wanted: Vec<&GatewayService> = wanted.iter().filter(|w| !w.ports.is_empty()).collect();
    let names: BTreeSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    for w in wanted {
        let manifest = w.manifest(ns, main_svc.map(|s| &**s));
        let Some(have) = stores.services.0.get(format!("{ns}/{}", w.name).as_str()) else {
            out.push(ServiceChange::Create(manifest));
            continue;
        };
        let have = serde_json::to_value(&**have).unwrap_or(Value::Null);
        // Ports compared on what we set (the API server adds node ports).
        let ports = |v: &Value| -> Vec<Value> {
            v["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| json!([p["name"], p["port"], p["protocol"], p["targetPort"]]))
                .collect()
        };
        let annotation = |v: &Value, k: &str| v["metadata"]["annotations"][k].clone();
        let same = ports(&have) == ports(&manifest)
            && have["spec"]["selector"] == manifest["spec"]["selector"]
            && [GATEWAY_ANNOTATION, LB_IPS_ANNOTATION]
                .iter()
                .all(|k| annotation(&have, k) == annotation(&manifest, k));
        if !same {
            let mut patch = json!({
                "metadata": {
                    "labels": manifest["metadata"]["labels"],
                    "annotations": manifest["metadata"]["annotations"],
                },
                "spec": {
                    "ports": manifest["spec"]["ports"],
                    "selector": manifest["spec"]["selector"],
                },
            });
            if manifest["metadata"]["annotations"][LB_IPS_ANNOTATION].is_null() {
                patch["metadata"]["annotations"][LB_IPS_ANNOTATION] = Value::Null;
            }
            out.push(ServiceChange::Patch(w.name.clone(), patch));
        }
    }
    for svc in stores.services.0.values() {
        let meta = &svc.metadata;
        if meta.namespace.as_deref() == Some(ns.as_str())
            && meta
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(GATEWAY_LABEL))
            && let Some(name) = meta.name.as_deref()
            && !names.contains(name)
        {
            out.push(ServiceChange::Delete(name.to_owned()));
        }
    }
    out
}

/// Applies `changes` in `ns`. Returns whether all were made.
async fn write_services(client: &kube::Client, ns: &str, changes: Vec<ServiceChange>) -> bool {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let params = PatchParams {
        field_manager: Some(COMPONENT.into()),
        ..PatchParams::default()
    };
    let mut ok = true;
    for change in changes {
        let (what, name, result) = match change {
            ServiceChange::Create(manifest) => {
                let name = manifest["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let result = match serde_json::from_value::<Service>(manifest) {
                    Ok(svc) => api
                        .create(
                            &PostParams {
                                field_manager: Some(COMPONENT.into()),
                                ..PostParams::default()
                            },
                            &svc,
                        )
                        .await
                        .map(drop),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                };
                ("created", name, result)
            }
            ServiceChange::Patch(name, patch) => {
                let result = api
                    .patch(&name, &params, &Patch::Merge(&patch))
                    .await
                    .map(drop);
                ("changed", name, result)
            }
            ServiceChange::Delete(name) => {
                let result = api.delete(&name, &Default::default()).await.map(drop);
                ("deleted", name, result)
            }
        };
        match result {
            Ok(()) => info!(service = %format!("{ns}/{name}"), "Gateway Service {what}"),
            // Already so: the watch has not brought it yet.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => {
                warn!(service = %format!("{ns}/{name}"), error = %k8s::ErrorChain(&e), "Gateway Service not {what}; retrying");
                ok = false;
            }
        }
    }
    ok
}

/// Creates the GatewayClass `name` for `controller` (another one's of that name is left
/// as it is). Returns whether it exists now.
async fn ensure_class(client: &kube::Client, name: &str, controller: &str) -> bool {
    let (group, version, kind, plural) = Kind::GatewayClass.api();
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let class: DynamicObject = match serde_json::from_value(json!({
        "apiVersion": ar.api_version,
        "kind": kind,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
        "spec": {"controllerName": controller},
    })) {
        Ok(c) => c,
        Err(_) => return false,
    };
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => {
            info!(name, "GatewayClass created");
            true
        }
        Err(kube::Error::Api(s)) if s.code == 409 => true,
        Err(e) => {
            warn!(name, error = %k8s::ErrorChain(&e), "creating the GatewayClass; retrying");
            false
        }
    }
}

/// Holds the Lease `namespace/LEASE` while it can, telling `leader` whether it does.
async fn lead(
    client: kube::Client,
    namespace: String,
    identity: String,
    leader: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let held = match hold(&api, &identity).await {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %k8s::ErrorChain(&e), "renewing the leader Lease");
                false
            }
        };
        leader.send_if_modified(|l| {
            if *l != held {
                info!(leader = held, "status writer");
                *l = held;
                true
            } else {
                false
            }
        });
        tokio::time::sleep(RENEW).await;
    }
}

/// One attempt to take or renew the Lease; whether this replica holds it.
async fn hold(api: &Api<Lease>, identity: &str) -> Result<bool, kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let fresh = LeaseSpec {
        holder_identity: Some(identity.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    };
    let Some(mut lease) = api.get_opt(LEASE).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(fresh),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(identity);
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        t.0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(duration))
            .is_ok_and(|end| end < now)
    });
    if !mine && !expired {
        return Ok(false);
    }
    if !mine {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = fresh.holder_identity;
        spec.acquire_time = fresh.acquire_time;
    }
    spec.renew_time = fresh.renew_time;
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    match api.replace(LEASE, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_services_a_compile_read_call_for_another() {
        let svc = |ns: &str, name: &str, labels: Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"namespace": ns, "name": name, "labels": labels}}),
            )
            .unwrap()
        };
        let slice = |ns: &str, service: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": format!("{service}-x"),
                    "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": [],
            }))
            .unwrap()
        };
        let mut stores = Stores::default();
        stores.services.own = "kube-system/gw".into();
        // Before the first compile, everything counts.
        assert!(
            stores
                .services
                .apply("a/x".into(), svc("a", "x", json!({})))
        );
        assert!(stores.slices.apply("a/x-x".into(), slice("a", "x")));
        // A compile that looked a/web up (not there yet) and nothing else.
        let world = World::default();
        assert!(world.service("a", "web").is_none());
        stores.note_read(&world);
        assert!(
            stores
                .services
                .apply("a/web".into(), svc("a", "web", json!({}))),
            "the Service a route waited for"
        );
        assert!(
            !stores
                .services
                .apply("a/x".into(), svc("a", "x", json!({"v": "2"}))),
            "a Service no compile reads"
        );
        assert!(!stores.services.delete("a/x"));
        assert!(
            stores
                .services
                .apply("kube-system/gw".into(), svc("kube-system", "gw", json!({}))),
            "the gateway's own"
        );
        let gateways = json!({ GATEWAY_LABEL: "one" });
        assert!(
            stores.services.apply(
                "kube-system/gw-one".into(),
                svc("kube-system", "gw-one", gateways)
            ),
            "a Gateway's"
        );
        assert!(
            stores.services.delete("kube-system/gw-one"),
            "a Gateway's, gone"
        );
        assert!(stores.slices.apply("a/web-x".into(), slice("a", "web")));
        assert!(!stores.slices.apply("a/x-x".into(), {
            let mut s = slice("a", "x");
            s.address_type = "IPv6".into();
            s
        }));
        assert!(!stores.slices.delete("a/x-x"));
        assert!(stores.slices.delete("a/web-x"));
        // Unchanged is no change, read or not.
        assert!(
            !stores
                .services
                .apply("a/web".into(), svc("a", "web", json!({})))
        );
    }

    #[test]
    fn gateway_services_are_created_changed_and_deleted_as_wanted() {
        let main = ("kube-system".to_string(), "gw".to_string());
        let mut stores = Stores::default();
        let svc = |v: Value| -> Service { serde_json::from_value(v).unwrap() };
        let put = |stores: &mut Stores, s: Service| {
            let key = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap(),
                s.metadata.name.as_deref().unwrap()
            );
            stores.services.0.insert(key.into(), Arc::new(s));
        };
        put(
            &mut stores,
            svc(
                json!({"metadata": {"name": "gw", "namespace": "kube-system"},
                "spec": {"selector": {"app": "gw"}, "externalTrafficPolicy": "Local"}}),
            ),
        );
        let want =
            |name: &str, ports: Vec<((u16, bool), u16)>, addresses: Vec<String>| GatewayService {
                name: name.into(),
                gateway: ("default".into(), name.into()),
                ports,
                addresses,
            };
        let a = want(
            "gw-a",
            vec![((53, true), 20001), ((80, false), 20000)],
            vec![],
        );
        let changes = service_changes(&stores, &main, std::slice::from_ref(&a));
        let [ServiceChange::Create(created)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(created["spec"]["selector"], json!({"app": "gw"}));
        assert_eq!(created["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(
            created["spec"]["ports"],
            json!([
                {"name": "listener-53-udp", "port": 53, "protocol": "UDP", "targetPort": 20001},
                {"name": "listener-80", "port": 80, "protocol": "TCP", "targetPort": 20000},
            ])
        );
        // Once it exists (with node ports the API server added) there is nothing to do.
        let mut made = created.clone();
        made["spec"]["ports"][0]["nodePort"] = json!(31000);
        put(&mut stores, svc(made));
        assert_eq!(
            service_changes(&stores, &main, std::slice::from_ref(&a)),
            []
        );
        // An address asked for, then a port more: a patch each.
        let b = want(
            "gw-a",
            vec![((53, true), 20001), ((80, false), 20000)],
            vec!["198.18.0.210".into()],
        );
        let changes = service_changes(&stores, &main, std::slice::from_ref(&b));
        let [ServiceChange::Patch(name, patch)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(name, "gw-a");
        assert_eq!(
            patch["metadata"]["annotations"][LB_IPS_ANNOTATION],
            "198.18.0.210"
        );
        // A Service of ours no Gateway wants goes; the gateway's own and others stay.
        put(
            &mut stores,
            svc(
                json!({"metadata": {"name": "gw-old", "namespace": "kube-system",
                "labels": {GATEWAY_LABEL: "x"}}}),
            ),
        );
        put(
            &mut stores,
            svc(json!({"metadata": {"name": "other", "namespace": "kube-system"}})),
        );
        let changes = service_changes(&stores, &main, std::slice::from_ref(&a));
        assert_eq!(changes, [ServiceChange::Delete("gw-old".into())]);
        // A Gateway with no listener to serve has no Service (one needs a port).
        let empty = want("gw-a", vec![], vec![]);
        let changes = service_changes(&stores, &main, std::slice::from_ref(&empty));
        assert!(
            changes.contains(&ServiceChange::Delete("gw-a".into())),
            "{changes:?}"
        );
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, ServiceChange::Create(_)))
        );
    }

    /// A route is parsed once as it arrives; a change of its status alone is no change
    /// to what the compile reads, and is noted for the status writer instead.
    #[test]
    fn custom_resources_are_parsed_on_arrival_and_status_changes_are_apart() {
        let mut routes: Customs<HttpRouteKind, gw::HttpRouteSpec> = Customs::default();
        let route = |path: &str, status: Value| -> Custom<HttpRouteKind> {
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": "r", "resourceVersion": "7"},
                "spec": {"parentRefs": [{"name": "gw"}],
                    "rules": [{"matches": [{"path": {"value": path}}]}]},
                "status": status,
            }))
            .unwrap()
        };
        let key: ObjectKey = "default/r".into();
        assert!(routes.apply(key.clone(), route("/a", Value::Null)));
        assert!(!routes.take_statuses_changed());
        let objs = routes.objs();
        assert_eq!(objs[0].name(), "r");
        assert_eq!(objs[0].meta.resource_version, None);
        assert!(
            objs[0]
                .spec
                .as_ref()
                .is_ok_and(|s| s.parent_refs.len() == 1)
        );
        // The same again: nothing changed.
        assert!(!routes.apply(key.clone(), route("/a", Value::Null)));
        // Its status alone.
        let status = json!({"parents": []});
        assert!(!routes.apply(key.clone(), route("/a", status.clone())));
        assert!(routes.take_statuses_changed());
        assert!(!routes.take_statuses_changed(), "taken");
        assert_eq!(routes.status("default/r"), Some(status.clone()));
        // Its spec.
        assert!(routes.apply(key.clone(), route("/b", status)));
        assert!(routes.delete("default/r"));
        assert!(routes.objs().is_empty());
    }

    #[test]
    fn flags_round_trip() {
        let args: Args = k8s::parse_flags(&[
            "--service=gw/lb",
            "--ingress-class=a,b",
            "--controller-name=example.com/gw",
            "--ambassador-id=blue",
            "--gateway-class=",
        ]);
        assert_eq!(args.gateway_class, "");
        assert_eq!(args.ingress_classes, ["a", "b"]);
        let argv: Vec<String> = args
            .to_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        assert_eq!(k8s::parse_flags::<Args>(&refs), args);
        let defaults: Args = k8s::parse_flags(&[]);
        assert_eq!(defaults.service, DEFAULT_SERVICE);
        assert_eq!(defaults.ingress_classes, ["kubewire", "ambassador"]);
        let o = Options::try_from(&args).unwrap();
        assert_eq!(o.service, ("gw".to_string(), "lb".to_string()));
        assert_eq!(o.settings.ambassador_id, "blue");
        assert!(Options::try_from(&k8s::parse_flags::<Args>(&["--service=lb"])).is_err());
    }

    #[test]
    fn other_controllers_route_parents_are_kept() {
        let current = json!({"parents": [
            {"controllerName": "example.com/other", "parentRef": {"name": "x"}},
            {"controllerName": "kubewire.io/gateway", "parentRef": {"name": "old"}},
        ]});
        let desired = json!({"parents": [
            {"controllerName": "kubewire.io/gateway", "parentRef": {"name": "gw"}},
        ]});
        let m = merged(Kind::HttpRoute, &desired, &current, "kubewire.io/gateway");
        assert_eq!(
            m["parents"],
            json!([
                {"controllerName": "example.com/other", "parentRef": {"name": "x"}},
                {"controllerName": "kubewire.io/gateway", "parentRef": {"name": "gw"}},
            ])
        );
        assert_eq!(merged(Kind::Gateway, &desired, &current, "c"), desired);
        // A parent of ours that the route no longer names leaves; a route that never
        // had one is not written.
        let none = json!({"parents": []});
        assert!(!not_ours(
            Kind::HttpRoute,
            &none,
            &current,
            "kubewire.io/gateway"
        ));
        assert_eq!(
            merged(Kind::HttpRoute, &none, &current, "kubewire.io/gateway")["parents"],
            json!([{"controllerName": "example.com/other", "parentRef": {"name": "x"}}])
        );
        assert!(not_ours(
            Kind::HttpRoute,
            &none,
            &Value::Null,
            "kubewire.io/gateway"
        ));
        assert!(not_ours(
            Kind::HttpRoute,
            &none,
            &json!({"parents": [
            {"controllerName": "example.com/other"}]}),
            "kubewire.io/gateway"
        ));
    }

    #[test]
    fn custom_kinds_name_their_api() {
        use kube::Resource;
        assert_eq!(
            Custom::<MappingKind>::api_version(&()),
            "getambassador.io/v3alpha1"
        );
        assert_eq!(Custom::<ReferenceGrantKind>::plural(&()), "referencegrants");
        assert_eq!(Custom::<HttpRouteKind>::kind(&()), "HTTPRoute");
        let c: Custom<GatewayKind> = serde_json::from_value(json!({
            "metadata": {"name": "gw", "namespace": "default"},
            "spec": {"gatewayClassName": "kubewire", "listeners": []},
        }))
        .unwrap();
        let o: Obj<crate::gatewayapi::types::GatewaySpec> = (&c).into();
        assert_eq!(o.spec.unwrap().gateway_class_name, "kubewire");
    }
}

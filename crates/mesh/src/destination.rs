//! Discovery for the proxies (Linkerd's destination service, kept on the node): the
//! agent mirrors Services, EndpointSlices and Pods and answers, for an address a pod
//! connected to, where that connection may go and which of those endpoints are meshed
//! with which identity. A proxy then holds no watch of its own.
//!
//! `GET /v1/destination?addr=IP:PORT` answers a [`Destination`]:
//! - a Service's cluster IP and port: its ready endpoints, at the port the Service's
//!   port names in the EndpointSlices;
//! - a pod's address: that pod;
//! - anything else: no endpoints, and the proxy connects where the app asked.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s::{Mirror, ObjectKey, Store};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The port the agent serves discovery on, at the node's address.
pub const PORT: u16 = 4196;

/// What a destination resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// `service` (a Service's cluster IP), `pod`, or `unknown`.
    pub kind: String,
    /// The Service, `namespace/name`, for `service`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Where connections may go.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The pod's address and the port it serves on.
    pub addr: SocketAddr,
    /// The pod's `namespace/name`, if a pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// For a meshed pod, its identity's path in the trust domain (`ns/NS/sa/SA`): its
    /// proxy speaks mutual TLS with that identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A meshed pod's identity path.
fn identity_path(namespace: &str, service_account: &str) -> String {
    format!("ns/{namespace}/sa/{service_account}")
}

/// A Service as discovery reads it: its cluster IPs and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    ips: Vec<IpAddr>,
    /// port → the port's name.
    ports: BTreeMap<u16, String>,
}

/// An EndpointSlice's ready addresses and named ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    service: String,
    ports: BTreeMap<String, u16>,
    /// (address, the pod's `namespace/name`)
    addresses: Vec<(IpAddr, String)>,
}

/// A pod as discovery reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodView {
    key: String,
    ips: Vec<IpAddr>,
    /// Set for a meshed pod.
    identity: Option<String>,
}

/// The whole view, behind one lock.
#[derive(Debug, Default)]
pub struct View {
    services: HashMap<ObjectKey, Svc>,
    by_cluster_ip: HashMap<IpAddr, ObjectKey>,
    slices: HashMap<ObjectKey, Slice>,
    pods: HashMap<ObjectKey, PodView>,
    pod_by_ip: HashMap<IpAddr, ObjectKey>,
}

impl View {
    /// Where a connection to `addr` may go.
    pub fn resolve(&self, addr: SocketAddr) -> Destination {
        if let Some(key) = self.by_cluster_ip.get(&addr.ip())
            && let Some(svc) = self.services.get(key)
        {
            let Some(port_name) = svc.ports.get(&addr.port()) else {
                return Destination {
                    kind: "service".into(),
                    service: key.to_string(),
                    endpoints: vec![],
                };
            };
            let mut endpoints: Vec<Endpoint> = self
                .slices
                .values()
                .filter(|s| *s.service == **key)
                .filter_map(|s| Some((s, *s.ports.get(port_name)?)))
                .flat_map(|(s, port)| {
                    s.addresses
                        .iter()
                        .filter(|(ip, _)| ip.is_ipv4() == addr.is_ipv4())
                        .map(move |(ip, pod)| (SocketAddr::new(*ip, port), pod))
                })
                .map(|(a, pod)| Endpoint {
                    addr: a,
                    pod: pod.clone(),
                    identity: self.identity_of(a.ip()),
                })
                .collect();
            endpoints.sort_by_key(|e| e.addr);
            endpoints.dedup_by_key(|e| e.addr);
            return Destination {
                kind: "service".into(),
                service: key.to_string(),
                endpoints,
            };
        }
        if let Some(key) = self.pod_by_ip.get(&addr.ip()) {
            return Destination {
                kind: "pod".into(),
                service: String::new(),
                endpoints: vec![Endpoint {
                    addr,
                    pod: key.to_string(),
                    identity: self.identity_of(addr.ip()),
                }],
            };
        }
        Destination {
            kind: "unknown".into(),
            ..Destination::default()
        }
    }

    fn identity_of(&self, ip: IpAddr) -> Option<String> {
        let key = self.pod_by_ip.get(&ip)?;
        self.pods.get(key)?.identity.clone()
    }
}

impl Store<Service> for View {
    fn apply(&mut self, key: ObjectKey, s: Service) -> bool {
        let spec = s.spec.unwrap_or_default();
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .chain(spec.cluster_ip.as_ref())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.unwrap_or_default())))
            .collect();
        let svc = Svc { ips, ports };
        if self.services.get(&key) == Some(&svc) {
            return false;
        }
        Store::<Service>::delete(self, &key);
        for ip in &svc.ips {
            self.by_cluster_ip.insert(*ip, key.clone());
        }
        self.services.insert(key, svc);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.services.remove(key) else {
            return false;
        };
        for ip in old.ips {
            if self.by_cluster_ip.get(&ip).is_some_and(|k| &**k == key) {
                self.by_cluster_ip.remove(&ip);
            }
        }
        true
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.services.keys().cloned().collect()
    }
}

impl Store<EndpointSlice> for View {
    fn apply(&mut self, key: ObjectKey, s: EndpointSlice) -> bool {
        let namespace = s.metadata.namespace.clone().unwrap_or_default();
        let Some(service) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            return Store::<EndpointSlice>::delete(self, &key);
        };
        let ports = s
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        let addresses = s
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| {
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .map(|r| {
                        format!(
                            "{}/{}",
                            r.namespace.as_deref().unwrap_or(&namespace),
                            r.name.as_deref().unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                e.addresses
                    .iter()
                    .filter_map(move |a| Some((a.parse().ok()?, pod.clone())))
            })
            .collect();
        let slice = Slice {
            service: format!("{namespace}/{service}"),
            ports,
            addresses,
        };
        self.slices.insert(key, slice.clone()) != Some(slice)
    }

    fn delete(&mut self, key: &str) -> bool {
        self.slices.remove(key).is_some()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.slices.keys().cloned().collect()
    }
}

impl Store<Pod> for View {
    fn apply(&mut self, key: ObjectKey, p: Pod) -> bool {
        let spec = p.spec.unwrap_or_default();
        let status = p.status.unwrap_or_default();
        if spec.host_network == Some(true)
            || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        {
            return Store::<Pod>::delete(self, &key);
        }
        let ips: Vec<IpAddr> = status
            .pod_ips
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        let meshed = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .any(|c| c.name == cni::capture::PROXY_CONTAINER);
        let namespace = p.metadata.namespace.unwrap_or_default();
        let identity = meshed.then(|| {
            let sa = spec
                .service_account_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            identity_path(&namespace, &sa)
        });
        let view = PodView {
            key: key.to_string(),
            ips,
            identity,
        };
        if self.pods.get(&key) == Some(&view) {
            return false;
        }
        Store::<Pod>::delete(self, &key);
        for ip in &view.ips {
            self.pod_by_ip.insert(*ip, key.clone());
        }
        self.pods.insert(key, view);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        for ip in old.ips {
            if self.pod_by_ip.get(&ip).is_some_and(|k| &**k == key) {
                self.pod_by_ip.remove(&ip);
            }
        }
        true
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.pods.keys().cloned().collect()
    }
}

/// Mirrors the cluster into `view` until the watches end.
pub async fn mirror(client: kube::Client, view: Arc<RwLock<View>>) {
    let mut services = k8s::mirror::watch(
        kube::Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut slices = k8s::mirror::watch(
        kube::Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut pods = k8s::mirror::watch(kube::Api::<Pod>::all(client), watcher::Config::default());
    let (mut m_svc, mut m_slice, mut m_pod) = (Mirror::new(), Mirror::new(), Mirror::new());
    loop {
        let write = || {
            view.write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        tokio::select! {
            Some(e) = services.next() => match e {
                Ok(e) => { m_svc.step(&mut *write(), e); }
                Err(e) => warn!(error = %e, "destination: watching Services"),
            },
            Some(e) = slices.next() => match e {
                Ok(e) => { m_slice.step(&mut *write(), e); }
                Err(e) => warn!(error = %e, "destination: watching EndpointSlices"),
            },
            Some(e) = pods.next() => match e {
                Ok(e) => { m_pod.step(&mut *write(), e); }
                Err(e) => warn!(error = %e, "destination: watching Pods"),
            },
            else => return,
        }
    }
}

/// Serves discovery on `listen` from a view mirrored with `client`, until the task is
/// dropped.
pub async fn serve(client: kube::Client, listen: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(addr = %listen, "mesh destination serving");
    let view = Arc::new(RwLock::new(View::default()));
    let mirrored = tokio::spawn(mirror(client, view.clone()));
    k8s::http::serve(listener, move |parts| answer(&view, parts)).await;
    mirrored.abort();
    Ok(())
}

fn answer(view: &RwLock<View>, parts: &http::request::Parts) -> k8s::http::Response {
    if parts.method != http::Method::GET || parts.uri.path() != "/v1/destination" {
        return k8s::http::response(404, "text/plain", "not found\n");
    }
    let query = parts.uri.query().unwrap_or_default();
    let addr = k8s::http::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "addr")
        .map(|(_, v)| v);
    let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return k8s::http::response(
            400,
            "text/plain",
            "addr: Required value: the address as IP:PORT\n",
        );
    };
    let d = view
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .resolve(addr);
    k8s::http::response(
        200,
        "application/json",
        serde_json::to_vec(&d).unwrap_or_default(),
    )
}

/// Asks the destination service at `server` about `addr` (plain HTTP/1.1, one request
/// per connection: the proxy caches the answers).
pub async fn ask(server: SocketAddr, addr: SocketAddr) -> std::io::Result<Destination> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(server).await?;
    let request = format!(
        "GET /v1/destination?addr={addr} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    (&mut conn).take(1 << 20).read_to_end(&mut reply).await?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("the destination service's answer has no body"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "the destination service answered {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    serde_json::from_str(body).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn apply<K>(view: &mut View, obj: serde_json::Value)
    where
        View: Store<K>,
        K: kube::Resource + serde::de::DeserializeOwned,
    {
        let o: K = serde_json::from_value(obj).unwrap();
        let key = k8s::mirror::object_key(&o);
        Store::<K>::apply(view, key, o);
    }

    fn view() -> View {
        let mut v = View::default();
        apply::<Service>(
            &mut v,
            json!({"metadata": {"name": "web", "namespace": "demo"},
                   "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        );
        apply::<EndpointSlice>(
            &mut v,
            json!({"metadata": {"name": "web-x", "namespace": "demo",
                                "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [
                     {"addresses": ["10.244.1.5"], "conditions": {"ready": true},
                      "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "demo"}},
                     {"addresses": ["10.244.2.6"], "conditions": {"ready": true},
                      "targetRef": {"kind": "Pod", "name": "web-2", "namespace": "demo"}},
                     {"addresses": ["10.244.2.7"], "conditions": {"ready": false}}]}),
        );
        apply::<Pod>(
            &mut v,
            json!({"metadata": {"name": "web-1", "namespace": "demo"},
                   "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}],
                            "initContainers": [{"name": "kubewire-proxy", "restartPolicy": "Always"}]},
                   "status": {"podIPs": [{"ip": "10.244.1.5"}]}}),
        );
        apply::<Pod>(
            &mut v,
            json!({"metadata": {"name": "web-2", "namespace": "demo"},
                   "spec": {"containers": [{"name": "app"}]},
                   "status": {"podIPs": [{"ip": "10.244.2.6"}]}}),
        );
        v
    }

    #[test]
    fn a_services_ready_endpoints_at_the_target_port_with_meshed_identities() {
        let d = view().resolve("10.96.0.20:80".parse().unwrap());
        assert_eq!(d.kind, "service");
        assert_eq!(d.service, "demo/web");
        assert_eq!(
            d.endpoints,
            [
                Endpoint {
                    addr: "10.244.1.5:8080".parse().unwrap(),
                    pod: "demo/web-1".into(),
                    identity: Some("ns/demo/sa/web".into()),
                },
                Endpoint {
                    addr: "10.244.2.6:8080".parse().unwrap(),
                    pod: "demo/web-2".into(),
                    identity: None,
                },
            ]
        );
        // A port the Service does not have: nowhere to go.
        assert!(
            view()
                .resolve("10.96.0.20:81".parse().unwrap())
                .endpoints
                .is_empty()
        );
    }

    #[test]
    fn a_pods_address_is_that_pod_and_the_rest_is_unknown() {
        let v = view();
        let d = v.resolve("10.244.1.5:9000".parse().unwrap());
        assert_eq!(d.kind, "pod");
        assert_eq!(d.endpoints[0].identity.as_deref(), Some("ns/demo/sa/web"));
        assert_eq!(v.resolve("192.0.2.1:443".parse().unwrap()).kind, "unknown");
        // A deleted Service's address is forgotten.
        let mut v = view();
        assert!(Store::<Service>::delete(&mut v, "demo/web"));
        assert_eq!(v.resolve("10.96.0.20:80".parse().unwrap()).kind, "unknown");
    }
}

//! The pods bound to this node: a watch on `spec.nodeName=NODE` hands each pod (by uid)
//! to its own worker task, which steps it through sandbox setup (network namespace +
//! CNI ADD), container starts, restarts with backoff, probes and status reports, and on
//! deletion through graceful termination, CNI DEL and removal of everything it made.
//! Workers are level-triggered: each round looks at the latest pod object and the
//! processes, and reports the status only when it changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cni::{self, RuntimeConf};
use crate::init::{BindMount, ExitRecord, InitSpec};
use crate::probe::{self, Kind, ProbeState};
use crate::sandbox::{self, ContainerRecord, SandboxFile};
use crate::{Ctx, Error, PodLogs, env, files, time};

/// The first restart waits this long, doubling per restart up to [`MAX_BACKOFF`]
/// (kubelet: 10 s to 5 min; the lab is shorter so crash loops are visible quickly).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A container that ran this long without exiting starts its backoff over.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// How often a worker looks at its processes.
const TICK: Duration = Duration::from_millis(200);
/// Service-account tokens last 24 h and are rewritten every hour.
const TOKEN_REFRESH: Duration = Duration::from_secs(3600);

/// Watches the pods bound to this node and runs one worker per pod.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    // Containers get the Services' variables at start: have the Services first (one
    // waiter here rather than one per pod; give up waiting after a while).
    let _ = tokio::time::timeout(Duration::from_secs(10), ctx.services.wait_until_ready()).await;
    let mut sandboxes = sandbox::load_all(&ctx.args.data_dir);
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.args.node_name));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut listing: Option<HashSet<String>> = None;
    let mut synced = false;
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            ev = stream.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Err(e) => tracing::warn!("watching pods: {e}"),
                    Ok(Event::Init) => listing = Some(HashSet::new()),
                    Ok(Event::InitApply(p) | Event::Apply(p)) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        if let Some(l) = listing.as_mut() {
                            l.insert(uid.clone());
                        }
                        match workers.get(&uid) {
                            Some(tx) => {
                                tx.send_replace(Some(p));
                            }
                            None => {
                                let (tx, rx) = watch::channel(Some(p));
                                workers.insert(uid.clone(), tx);
                                let adopted = sandboxes.remove(&uid);
                                let (ctx, done) = (ctx.clone(), done_tx.clone());
                                tokio::spawn(async move {
                                    Worker::run(ctx, rx, adopted).await;
                                    let _ = done.send(uid);
                                });
                            }
                        }
                    }
                    Ok(Event::Delete(p)) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        if let Some(tx) = workers.get(&uid) {
                            tx.send_replace(None);
                        }
                    }
                    Ok(Event::InitDone) => {
                        let seen = listing.take().unwrap_or_default();
                        for (uid, tx) in &workers {
                            if !seen.contains(uid) {
                                tx.send_replace(None);
                            }
                        }
                        if !synced {
                            synced = true;
                            // Sandboxes of pods that no longer exist: tear them down.
                            for (_, sb) in std::mem::take(&mut sandboxes) {
                                let ctx = ctx.clone();
                                tokio::spawn(async move { teardown_orphan(&ctx, sb).await });
                            }
                        }
                    }
                }
            }
        }
    }
}

fn signal_group(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Sends `sig` to a container's own process (its pid file, written by container-init,
/// checked to be container-init's child so a reused pid is never hit), or, before that
/// exists, to the container's whole process group.
fn signal_container(rec: &ContainerRecord, sig: Signal) {
    let pid_file = Path::new(&rec.spec).with_extension("pid");
    let main = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|p| sandbox::parent(*p) == Some(rec.pid));
    match main.and_then(|p| i32::try_from(p).ok()) {
        Some(p) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
        None => signal_group(rec.pid, sig),
    }
}

fn uid_hex(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_lowercase()
}

async fn teardown_orphan(ctx: &Ctx, sb: SandboxFile) {
    tracing::info!(pod = %format!("{}/{}", sb.namespace, sb.name), uid = %sb.uid, "removing the sandbox of a pod that is gone");
    for c in sb.containers.values() {
        if sandbox::alive(c) {
            signal_group(c.pid, Signal::SIGKILL);
        }
    }
    let dir = ctx.args.data_dir.join("pods").join(&sb.uid);
    release_network(ctx, &sb).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// CNI DEL (with the cached result) and removal of the pod's network namespace.
async fn release_network(ctx: &Ctx, sb: &SandboxFile) {
    if sb.host_network || sb.netns_name.is_empty() {
        return;
    }
    if !sb.sandbox_id.is_empty() {
        let rt = runtime_conf(sb, Value::Null);
        let net = cni::load(&ctx.args.cni_conf_dir).ok();
        let network = if sb.network.is_empty() {
            net.as_ref().map(|n| n.name.clone()).unwrap_or_default()
        } else {
            sb.network.clone()
        };
        for attempt in 0..3 {
            match ctx.cni.del(net.as_ref(), &network, &rt).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", sb.namespace, sb.name), attempt, "CNI DEL: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    let name = sb.netns_name.clone();
    let res = tokio::task::spawn_blocking(move || netlink::netns::delete(&name)).await;
    if let Ok(Err(e)) = res {
        tracing::warn!("removing network namespace {}: {e}", sb.netns_name);
    }
}

fn runtime_conf(sb: &SandboxFile, capability_args: Value) -> RuntimeConf {
    RuntimeConf {
        container_id: sb.sandbox_id.clone(),
        netns: sb.netns.clone(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), sb.namespace.clone()),
            ("K8S_POD_NAME".into(), sb.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), sb.sandbox_id.clone()),
            ("K8S_POD_UID".into(), sb.uid.clone()),
        ],
        capability_args,
    }
}

/// A container's state as the API shows it.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: String,
        started_at: String,
        finished_at: String,
        id: String,
    },
}

impl State {
    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
                id,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason, "startedAt": started_at,
                    "finishedAt": finished_at, "containerID": id});
                if let Some(s) = signal {
                    t["signal"] = json!(s);
                }
                if !message.is_empty() {
                    t["message"] = json!(message);
                }
                json!({"terminated": t})
            }
        }
    }
}

enum Proc {
    /// Started by this process: reaped through the handle.
    Child(tokio::process::Child),
    /// Found running at start-up (started by an earlier node process).
    Adopted,
}

struct Ctr {
    spec: Container,
    /// An init container: runs to completion, in order, before the app containers.
    init: bool,
    restart_count: u32,
    /// The running process and its record in sandbox.json.
    proc: Option<(Proc, ContainerRecord)>,
    state: State,
    last: Option<State>,
    /// When to start (again); `None` once it will not run again.
    next_start: Option<Instant>,
    backoff: Duration,
    ever_started: bool,
    started_instant: Instant,
    probes: Vec<ProbeState>,
    id: String,
    /// Why the node killed it (liveness/startup failure), for the terminated message.
    killed_for: Option<String>,
}

impl Ctr {
    fn new(spec: Container, init: bool) -> Self {
        Ctr {
            spec,
            init,
            restart_count: 0,
            proc: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            next_start: Some(Instant::now()),
            backoff: FIRST_BACKOFF,
            ever_started: false,
            started_instant: Instant::now(),
            probes: Vec::new(),
            id: String::new(),
            killed_for: None,
        }
    }

    /// An init container that exited 0.
    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { exit_code: 0, .. }) && self.proc.is_none()
    }

    fn probe(&self, kind: Kind) -> Option<&ProbeState> {
        self.probes.iter().find(|p| p.kind == kind)
    }

    /// Startup probe passed (or none).
    fn started(&self) -> bool {
        self.proc.is_some() && self.probe(Kind::Startup).is_none_or(|p| p.ok)
    }

    fn ready(&self) -> bool {
        self.started() && self.probe(Kind::Readiness).is_none_or(|p| p.ok)
    }

    fn make_probes(&mut self) {
        let now = Instant::now();
        self.probes = [
            (Kind::Startup, &self.spec.startup_probe),
            (Kind::Liveness, &self.spec.liveness_probe),
            (Kind::Readiness, &self.spec.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.clone().map(|p| ProbeState::new(k, p, now)))
        .collect();
    }
}

/// One pod's worker.
struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    dir: PathBuf,
    pod: Pod,
    sb: SandboxFile,
    sandbox_ready: bool,
    sandbox_error: Option<String>,
    next_sandbox_try: Instant,
    /// When the service-account token was last written.
    token_written: Instant,
    ctrs: Vec<Ctr>,
    start_time: String,
    /// Condition type → (status, lastTransitionTime).
    conditions: BTreeMap<&'static str, (bool, String)>,
    last_status: Value,
    probe_tx: mpsc::UnboundedSender<(usize, u32, Kind, bool)>,
}

enum Wake {
    Pod(bool),
    Probe((usize, u32, Kind, bool)),
    Tick,
}

impl Worker {
    async fn run(
        ctx: Arc<Ctx>,
        mut rx: watch::Receiver<Option<Pod>>,
        adopted: Option<SandboxFile>,
    ) {
        let Some(pod) = rx.borrow_and_update().clone() else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = ctx.args.data_dir.join("pods").join(&uid);
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
        let spec = pod.spec.clone().unwrap_or_default();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| time::rfc3339(SystemTime::now()));
        let mut w = Worker {
            sb: SandboxFile {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: uid.clone(),
                host_network: spec.host_network.unwrap_or(false),
                ..Default::default()
            },
            ctrs: spec
                .init_containers
                .iter()
                .flatten()
                .cloned()
                .map(|c| Ctr::new(c, true))
                .chain(spec.containers.iter().cloned().map(|c| Ctr::new(c, false)))
                .collect(),
            ctx,
            uid,
            dir,
            pod,
            sandbox_ready: false,
            sandbox_error: None,
            next_sandbox_try: Instant::now(),
            token_written: Instant::now(),
            start_time,
            conditions: BTreeMap::new(),
            last_status: Value::Null,
            probe_tx,
        };
        if let Some(a) = adopted {
            w.adopt(a);
        }
        loop {
            let current = rx.borrow_and_update().clone();
            let gone = current.is_none();
            if let Some(p) = current {
                w.pod = p;
            }
            if gone || w.pod.metadata.deletion_timestamp.is_some() {
                w.terminate(gone).await;
                return;
            }
            if !w.sandbox_ready && Instant::now() >= w.next_sandbox_try {
                match w.setup_sandbox().await {
                    Ok(()) => {
                        w.sandbox_ready = true;
                        w.sandbox_error = None;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %w.key(), "sandbox: {e}");
                        w.sandbox_error = Some(e.to_string());
                        w.next_sandbox_try = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            if w.sandbox_ready && w.token_written.elapsed() >= TOKEN_REFRESH {
                w.refresh_token().await;
            }
            if w.sandbox_ready {
                w.reap(false);
                w.start_due().await;
                w.run_probes();
            }
            w.publish().await;
            let wake = tokio::select! {
                r = rx.changed() => Wake::Pod(r.is_ok()),
                Some(r) = probe_rx.recv() => Wake::Probe(r),
                () = tokio::time::sleep(TICK) => Wake::Tick,
            };
            match wake {
                // The node is stopping: leave the pod running for the next start.
                Wake::Pod(false) => return,
                Wake::Probe(r) => w.apply_probe(r),
                Wake::Pod(true) | Wake::Tick => {}
            }
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.sb.namespace, self.sb.name)
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn grace(&self) -> u64 {
        let g = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        u64::try_from(g).unwrap_or(0)
    }

    fn adopt(&mut self, a: SandboxFile) {
        let netns_ok =
            a.host_network || (!a.netns_name.is_empty() && netlink::netns::exists(&a.netns_name));
        if netns_ok && !a.ips.is_empty() {
            self.sandbox_ready = true;
            // The token on disk was written by an earlier node process: renew it now.
            self.token_written = Instant::now()
                .checked_sub(TOKEN_REFRESH)
                .unwrap_or_else(Instant::now);
            // App containers ran, so the init containers had completed.
            let apps_ran = self
                .ctrs
                .iter()
                .any(|c| !c.init && a.containers.contains_key(&c.spec.name));
            for c in &mut self.ctrs {
                if c.init && apps_ran && !a.containers.contains_key(&c.spec.name) {
                    c.ever_started = true;
                    c.next_start = None;
                    c.state = State::Terminated {
                        exit_code: 0,
                        signal: None,
                        reason: "Completed".into(),
                        message: String::new(),
                        started_at: String::new(),
                        finished_at: String::new(),
                        id: String::new(),
                    };
                    continue;
                }
                if let Some(rec) = a.containers.get(&c.spec.name) {
                    c.restart_count = rec.restart_count;
                    c.ever_started = true;
                    c.next_start = None;
                    c.state = State::Running {
                        started_at: rec.started_at.clone(),
                    };
                    c.id = format!(
                        "kubewire://{}-{}-{}",
                        short(&a.sandbox_id),
                        c.spec.name,
                        rec.restart_count
                    );
                    c.make_probes();
                    c.proc = Some((Proc::Adopted, rec.clone()));
                }
            }
            tracing::info!(pod = %format!("{}/{}", a.namespace, a.name), "adopted the existing sandbox");
        }
        self.sb = a;
    }

    /// The pod's hostPorts as libcni's `portMappings` capability argument.
    fn port_mappings(&self) -> Value {
        let mut maps = Vec::new();
        for c in self.pod.spec.iter().flat_map(|s| &s.containers) {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                    let mut m = json!({"hostPort": hp, "containerPort": p.container_port,
                        "protocol": p.protocol.as_deref().unwrap_or("TCP").to_lowercase()});
                    if let Some(ip) = p.host_ip.as_deref().filter(|i| !i.is_empty()) {
                        m["hostIP"] = json!(ip);
                    }
                    maps.push(m);
                }
            }
        }
        json!({"portMappings": maps})
    }

    async fn setup_sandbox(&mut self) -> Result<(), Error> {
        std::fs::create_dir_all(self.dir.join("etc"))
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let ctx = self.ctx.clone();
        if self.sb.host_network {
            let named = netlink::netns::path(&ctx.netns_name);
            self.sb.netns = if named.exists() {
                named.display().to_string()
            } else {
                format!("/proc/{}/ns/net", std::process::id())
            };
            self.sb.ips = ctx.args.node_ip.iter().map(ToString::to_string).collect();
        } else if self.sb.ips.is_empty() || !netlink::netns::exists(&self.sb.netns_name) {
            let net = cni::load(&ctx.args.cni_conf_dir).map_err(|_| {
                Error::Cni(format!(
                    "network not ready: no network config in {} (cni plugin not initialized)",
                    ctx.args.cni_conf_dir.display()
                ))
            })?;
            let hex = uid_hex(&self.uid);
            let name = format!("{}-p{}", ctx.netns_name, &hex[..8.min(hex.len())]);
            self.sb.sandbox_id = hex;
            self.sb.netns_name = name.clone();
            self.sb.netns = netlink::netns::path(&name).display().to_string();
            self.sb.network = net.name.clone();
            if netlink::netns::exists(&name) {
                // Left by a crash mid-setup: release what may be attached, start over.
                release_network(&ctx, &self.sb).await;
            }
            let n = name.clone();
            tokio::task::spawn_blocking(move || netlink::netns::create(&n))
                .await
                .map_err(|e| Error::Cni(format!("creating network namespace {name}: {e}")))??;
            let rt = runtime_conf(&self.sb, self.port_mappings());
            match ctx.cni.add(&net, &rt).await {
                Ok(result) => self.sb.ips = cni::result_ips(&result),
                Err(e) => {
                    // libcni's caller tears a failed ADD down before retrying.
                    let _ = ctx.cni.del(Some(&net), &net.name, &rt).await;
                    let n = name.clone();
                    let _ = tokio::task::spawn_blocking(move || netlink::netns::delete(&n)).await;
                    self.sb.ips.clear();
                    return Err(e);
                }
            }
            tracing::info!(pod = %self.key(), ips = ?self.sb.ips, netns = %name, "sandbox ready");
        }
        self.write_files().await?;
        self.sb.write(&self.dir)
    }

    /// resolv.conf, hosts, hostname and the service-account files.
    async fn write_files(&self) -> Result<(), Error> {
        let ctx = &self.ctx;
        let etc = self.dir.join("etc");
        let w = |name: &str, text: String| {
            let p = etc.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(format!("writing {}", p.display()), e))
        };
        w("resolv.conf", files::resolv_conf(&self.pod, &ctx.dns))?;
        let hosts = if self.sb.host_network {
            files::host_network_hosts(
                &self.pod,
                &std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            )
        } else {
            files::hosts(&self.pod, &self.sb.ips, &ctx.args.cluster_domain)
        };
        w("hosts", hosts)?;
        w("hostname", format!("{}\n", files::hostname(&self.pod)))?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        if spec.automount_service_account_token != Some(false) {
            let sa_dir = self.dir.join("serviceaccount");
            std::fs::create_dir_all(&sa_dir)
                .map_err(|e| Error::io(format!("creating {}", sa_dir.display()), e))?;
            let sa = spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into());
            let token = self.token(&sa).await.unwrap_or_else(|e| {
                tracing::warn!(pod = %self.key(), "service account token for {sa}: {e}");
                String::new()
            });
            let put = |n: &str, t: &str| {
                let p = sa_dir.join(n);
                std::fs::write(&p, t).map_err(|e| Error::io(format!("writing {}", p.display()), e))
            };
            put("token", &token)?;
            put("ca.crt", &ctx.ca_pem)?;
            put("namespace", &self.sb.namespace)?;
        }
        Ok(())
    }

    /// Writes a fresh token (kubelet renews at 80% of the lifetime; in-cluster clients
    /// such as kube-rs re-read the file).
    async fn refresh_token(&mut self) {
        self.token_written = Instant::now();
        let dir = self.dir.join("serviceaccount");
        if !dir.exists() {
            return;
        }
        let sa = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        match self.token(&sa).await {
            Ok(t) => {
                let tmp = dir.join(".token.tmp");
                if let Err(e) =
                    std::fs::write(&tmp, t).and_then(|()| std::fs::rename(&tmp, dir.join("token")))
                {
                    tracing::warn!(pod = %self.key(), "writing the service account token: {e}");
                }
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), "refreshing the service account token: {e}")
            }
        }
    }

    /// A bound token from the API server's TokenRequest, as kubelet's projected volume.
    async fn token(&self, sa: &str) -> Result<String, Error> {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 86400,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.sb.name, "uid": self.uid}}});
        let url = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{sa}/token",
            self.sb.namespace
        );
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .map_err(|e| Error::Api(e.to_string()))?;
        let resp: Value = self
            .ctx
            .client
            .request(req)
            .await
            .map_err(|e| Error::Api(e.to_string()))?;
        resp["status"]["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Api("TokenRequest answered without status.token".into()))
    }

    /// The ConfigMaps and Secrets the container's environment refers to (missing ones
    /// are left out; `container_env` decides whether that is an error).
    async fn env_sources(&self, c: &Container) -> env::Sources {
        let (cms, secrets) = env::referenced(c);
        let mut out = env::Sources::default();
        let client = self.ctx.client.clone();
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &self.sb.namespace);
        for n in cms {
            if let Ok(Some(cm)) = cm_api.get_opt(&n).await {
                out.config_maps.insert(n, cm.data.unwrap_or_default());
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(client, &self.sb.namespace);
        for n in secrets {
            if let Ok(Some(sec)) = secret_api.get_opt(&n).await {
                let data = sec
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .chain(sec.string_data.unwrap_or_default())
                    .collect();
                out.secrets.insert(n, data);
            }
        }
        out
    }

    /// The program a container runs (see docs/node.md, "Images").
    fn argv(&self, c: &Container) -> Vec<String> {
        let exe = self.ctx.exe.display().to_string();
        let args = c.args.clone().unwrap_or_default();
        if let Some(cmd) = c.command.as_ref().filter(|c| !c.is_empty()) {
            return cmd.iter().chain(&args).cloned().collect();
        }
        workload_argv(&exe, c)
    }

    async fn start(&mut self, i: usize) -> Result<(), Error> {
        let ctx = self.ctx.clone();
        let c = &self.ctrs[i];
        let spec_c = c.spec.clone();
        let name = spec_c.name.clone();
        let restart = if c.ever_started {
            c.restart_count + 1
        } else {
            0
        };
        let host_network = self.sb.host_network;
        let rt = env::Runtime {
            pod_ips: self.sb.ips.clone(),
            host_ips: ctx.args.node_ip.iter().map(ToString::to_string).collect(),
            node_name: ctx.args.node_name.clone(),
        };
        let services = ctx
            .services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect::<Vec<_>>();
        let sources = self.env_sources(&spec_c).await;
        let mut envs = env::container_env(&self.pod, &spec_c, &rt, &services, &sources)
            .map_err(|e| Error::Api(format!("container {name} of pod {}: {e}", self.key())))?;
        if spec_c.command.as_ref().is_none_or(|c| c.is_empty()) {
            for (k, v) in [
                ("KUBEWIRE_POD_NAME", self.sb.name.clone()),
                ("KUBEWIRE_POD_NAMESPACE", self.sb.namespace.clone()),
                (
                    "KUBEWIRE_POD_IP",
                    rt.pod_ips.first().cloned().unwrap_or_default(),
                ),
                ("KUBEWIRE_NODE_NAME", ctx.args.node_name.clone()),
            ] {
                envs.push((k.into(), v));
            }
        }
        let etc = self.dir.join("etc");
        let mut mounts = vec![BindMount {
            source: etc.join("resolv.conf"),
            target: "/etc/resolv.conf".into(),
            read_only: false,
            mkdir: false,
        }];
        // hostNetwork pods keep the node's hostname; their hosts file is the node's
        // plus hostAliases.
        let own = if host_network {
            &["hosts"][..]
        } else {
            &["hosts", "hostname"][..]
        };
        for f in own {
            mounts.push(BindMount {
                source: etc.join(f),
                target: Path::new("/etc").join(f),
                read_only: false,
                mkdir: false,
            });
        }
        let sa_dir = self.dir.join("serviceaccount");
        if sa_dir.exists() {
            mounts.push(BindMount {
                source: sa_dir,
                target: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                read_only: true,
                mkdir: true,
            });
        }
        let cdir = self.dir.join("containers");
        let ldir = self.dir.join("logs").join(&name);
        for d in [&cdir, &ldir] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let log = ldir.join(format!("{restart}.log"));
        let exit_file = cdir.join(format!("{name}.exit"));
        let _ = std::fs::remove_file(&exit_file);
        let _ = std::fs::remove_file(exit_file.with_extension("pid"));
        let init = InitSpec {
            netns: (!host_network).then(|| PathBuf::from(&self.sb.netns)),
            mounts,
            hostname: (!host_network).then(|| files::hostname(&self.pod)),
            argv: self.argv(&spec_c),
            env: envs,
            workdir: spec_c
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            log: log.clone(),
            exit_file,
        };
        let spec_path = cdir.join(format!("{name}.json"));
        std::fs::write(
            &spec_path,
            serde_json::to_vec_pretty(&init).unwrap_or_default(),
        )
        .map_err(|e| Error::io(format!("writing {}", spec_path.display()), e))?;
        let child = tokio::process::Command::new(&ctx.exe)
            .arg(crate::init::SUBCOMMAND)
            .arg("run")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("starting container {name} of {}", self.key()), e))?;
        let pid = child.id().unwrap_or(0);
        let started_at = time::rfc3339(SystemTime::now());
        let rec = ContainerRecord {
            pid,
            log: log.display().to_string(),
            restart_count: restart,
            started_at: started_at.clone(),
            start_ticks: sandbox::start_ticks(pid).unwrap_or(0),
            spec: spec_path.display().to_string(),
        };
        self.sb.containers.insert(name.clone(), rec.clone());
        let sid = short(&self.sb.sandbox_id).to_owned();
        let c = &mut self.ctrs[i];
        if c.ever_started {
            c.restart_count += 1;
        }
        c.ever_started = true;
        c.next_start = None;
        c.killed_for = None;
        c.started_instant = Instant::now();
        c.id = format!("kubewire://{sid}-{name}-{restart}");
        c.state = State::Running { started_at };
        c.proc = Some((Proc::Child(child), rec));
        c.make_probes();
        tracing::info!(pod = %self.key(), container = %name, pid, restart, "container started");
        self.sb.write(&self.dir)
    }

    async fn start_due(&mut self) {
        let now = Instant::now();
        // Init containers one at a time, in order; app containers once all succeeded.
        let gate = self.ctrs.iter().position(|c| c.init && !c.succeeded());
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            let allowed = match gate {
                Some(g) => i == g,
                None => !c.init,
            };
            if allowed
                && c.proc.is_none()
                && c.next_start.is_some_and(|t| t <= now)
                && let Err(e) = self.start(i).await
            {
                tracing::warn!(pod = %self.key(), "{e}");
                let c = &mut self.ctrs[i];
                c.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message: e.to_string(),
                };
                c.next_start = Some(now + c.backoff);
                c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
            }
        }
        self.update_logs();
    }

    /// Notices exited containers; schedules restarts unless `terminating`.
    fn reap(&mut self, terminating: bool) {
        let policy = self.restart_policy();
        let mut changed = false;
        for c in &mut self.ctrs {
            let Some((proc, rec)) = c.proc.as_mut() else {
                continue;
            };
            let exit: Option<(i32, Option<i32>)> = match proc {
                Proc::Child(child) => match child.try_wait() {
                    Ok(Some(st)) => {
                        use std::os::unix::process::ExitStatusExt;
                        Some(match (st.code(), st.signal()) {
                            (Some(code), _) => (code, None),
                            (None, Some(s)) => (128 + s, Some(s)),
                            _ => (1, None),
                        })
                    }
                    Ok(None) => None,
                    Err(_) => Some((1, None)),
                },
                Proc::Adopted => (!sandbox::alive(rec)).then(|| {
                    let exit_file = Path::new(&rec.spec).with_extension("exit");
                    std::fs::read(&exit_file)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<ExitRecord>(&b).ok())
                        .map_or((137, None), |r| (r.exit_code, r.signal))
                }),
            };
            let Some((code, signal)) = exit else { continue };
            changed = true;
            let started_at = rec.started_at.clone();
            c.proc = None;
            let reason = if c.killed_for.is_some() || code != 0 {
                "Error"
            } else {
                "Completed"
            };
            let term = State::Terminated {
                exit_code: code,
                signal,
                reason: reason.into(),
                message: c.killed_for.clone().unwrap_or_default(),
                started_at,
                finished_at: time::rfc3339(SystemTime::now()),
                id: c.id.clone(),
            };
            tracing::info!(container = %c.spec.name, code, "container exited");
            c.state = term.clone();
            c.last = Some(term);
            // Init containers rerun only when they failed (and the policy allows it).
            let restart = !terminating
                && if c.init {
                    code != 0 && policy != "Never"
                } else {
                    policy == "Always" || (policy == "OnFailure" && code != 0)
                };
            if restart {
                if c.started_instant.elapsed() >= BACKOFF_RESET {
                    c.backoff = FIRST_BACKOFF;
                }
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
            } else {
                c.next_start = None;
            }
            self.sb.containers.remove(&c.spec.name);
        }
        if changed {
            let _ = self.sb.write(&self.dir);
            self.update_logs();
        }
    }

    fn update_logs(&self) {
        let entry = PodLogs {
            dir: self.dir.clone(),
            containers: self
                .ctrs
                .iter()
                .filter(|c| c.ever_started)
                .map(|c| (c.spec.name.clone(), (c.restart_count, c.proc.is_some())))
                .collect(),
        };
        if let Ok(mut logs) = self.ctx.logs.lock() {
            logs.insert((self.sb.namespace.clone(), self.sb.name.clone()), entry);
        }
    }

    fn run_probes(&mut self) {
        let now = Instant::now();
        let ip = self.sb.ips.first().and_then(|i| i.parse().ok());
        for (i, c) in self.ctrs.iter_mut().enumerate() {
            let Some((_, rec)) = &c.proc else { continue };
            let started = c
                .probes
                .iter()
                .find(|p| p.kind == Kind::Startup)
                .is_none_or(|p| p.ok);
            let target = probe::Target {
                ip,
                ports: c.spec.ports.clone().unwrap_or_default(),
                exe: self.ctx.exe.clone(),
                spec: PathBuf::from(&rec.spec),
                pid: rec.pid,
            };
            let run_id = c.restart_count;
            for p in &mut c.probes {
                // Liveness and readiness wait for the startup probe, as in kubelet.
                let eligible =
                    p.kind == Kind::Startup && !p.ok || p.kind != Kind::Startup && started;
                if !eligible || p.in_flight || now < p.next {
                    continue;
                }
                p.in_flight = true;
                let (probe, kind, target, tx) = (
                    p.probe.clone(),
                    p.kind,
                    target.clone(),
                    self.probe_tx.clone(),
                );
                tokio::spawn(async move {
                    let ok = probe::run(&probe, &target).await;
                    let _ = tx.send((i, run_id, kind, ok));
                });
            }
        }
    }

    fn apply_probe(&mut self, (i, run_id, kind, ok): (usize, u32, Kind, bool)) {
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let key = self.key();
        let Some(c) = self.ctrs.get_mut(i) else {
            return;
        };
        if c.restart_count != run_id || c.proc.is_none() {
            return;
        }
        let Some(p) = c.probes.iter_mut().find(|p| p.kind == kind) else {
            return;
        };
        if p.record(ok) {
            tracing::info!(pod = %key, container = %c.spec.name, ?kind, ok = p.ok, "probe verdict changed");
        }
        if matches!(kind, Kind::Liveness | Kind::Startup) && p.failed() && c.killed_for.is_none() {
            let what = if kind == Kind::Liveness {
                "liveness"
            } else {
                "startup"
            };
            c.killed_for = Some(format!(
                "Container {} failed {what} probe, will be restarted",
                c.spec.name
            ));
            if let Some((_, rec)) = &c.proc {
                kill_gracefully(rec.clone(), u64::try_from(grace).unwrap_or(30));
            }
        }
    }

    fn status(&mut self) -> Value {
        let policy = self.restart_policy();
        let now = time::rfc3339(SystemTime::now());
        let initialized = self.ctrs.iter().filter(|c| c.init).all(Ctr::succeeded);
        let to_status = |c: &Ctr| {
            let state = match (&c.state, &c.next_start) {
                (State::Waiting { .. }, _) if !self.sandbox_ready => State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: self.sandbox_error.clone().unwrap_or_default(),
                },
                (State::Terminated { .. }, Some(_)) => State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off restarting failed container {} in pod {}",
                        c.spec.name, self.sb.name
                    ),
                },
                (State::Waiting { .. }, _) if !c.init && !initialized => State::Waiting {
                    reason: "PodInitializing".into(),
                    message: String::new(),
                },
                (s, _) => s.clone(),
            };
            let mut v = json!({
                "name": c.spec.name,
                "image": c.spec.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": if c.init { c.succeeded() } else { c.ready() },
                "started": c.started(),
                "restartCount": c.restart_count,
                "state": state.to_json(),
                "lastState": c.last.as_ref().filter(|_| c.proc.is_some() || c.next_start.is_some()).map_or(json!({}), State::to_json),
            });
            if c.ever_started && !c.id.is_empty() {
                v["containerID"] = json!(c.id);
            }
            v
        };
        let statuses: Vec<Value> = self
            .ctrs
            .iter()
            .filter(|c| !c.init)
            .map(to_status)
            .collect();
        let init_statuses: Vec<Value> =
            self.ctrs.iter().filter(|c| c.init).map(to_status).collect();
        let apps = || self.ctrs.iter().filter(|c| !c.init);
        // An init container that failed and will not run again fails the pod.
        let init_failed = self.ctrs.iter().any(|c| {
            c.init && c.proc.is_none() && c.next_start.is_none() && c.ever_started && !c.succeeded()
        });
        let all_done = apps().all(|c| c.proc.is_none() && c.next_start.is_none() && c.ever_started);
        let code_of = |c: &Ctr| match &c.state {
            State::Terminated { exit_code, .. } => *exit_code,
            _ => 0,
        };
        let phase = if init_failed {
            "Failed"
        } else if all_done {
            if apps().all(|c| code_of(c) == 0) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if apps().any(|c| c.ever_started) {
            "Running"
        } else {
            "Pending"
        };
        let _ = policy;
        let ready =
            self.sandbox_ready && initialized && apps().count() > 0 && apps().all(Ctr::ready);
        let wanted: [(&'static str, bool); 5] = [
            ("PodReadyToStartContainers", self.sandbox_ready),
            ("Initialized", initialized),
            ("Ready", ready),
            ("ContainersReady", ready),
            ("PodScheduled", true),
        ];
        let mut conditions = Vec::new();
        for (ty, st) in wanted {
            let entry = self
                .conditions
                .entry(ty)
                .or_insert_with(|| (st, now.clone()));
            if entry.0 != st {
                *entry = (st, now.clone());
            }
            let mut c = json!({"type": ty, "status": if st { "True" } else { "False" },
                "lastProbeTime": null, "lastTransitionTime": entry.1});
            if !st && (ty == "Ready" || ty == "ContainersReady") {
                let (reason, msg) = if phase == "Succeeded" || phase == "Failed" {
                    ("PodCompleted", String::new())
                } else {
                    let names: Vec<&str> = apps()
                        .filter(|c| !c.ready())
                        .map(|c| c.spec.name.as_str())
                        .collect();
                    (
                        "ContainersNotReady",
                        format!("containers with unready status: [{}]", names.join(" ")),
                    )
                };
                c["reason"] = json!(reason);
                if !msg.is_empty() {
                    c["message"] = json!(msg);
                }
            }
            conditions.push(c);
        }
        let host_ips: Vec<String> = self
            .ctx
            .args
            .node_ip
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut st = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ips.first(),
            "hostIPs": host_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
            "initContainerStatuses": init_statuses,
        });
        if self.sandbox_ready && !self.sb.ips.is_empty() {
            st["podIP"] = json!(self.sb.ips[0]);
            st["podIPs"] = json!(
                self.sb
                    .ips
                    .iter()
                    .map(|ip| json!({"ip": ip}))
                    .collect::<Vec<_>>()
            );
        }
        st
    }

    async fn publish(&mut self) {
        let st = self.status();
        if st == self.last_status {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.sb.namespace);
        match api
            .patch_status(
                &self.sb.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": st})),
            )
            .await
        {
            Ok(_) => self.last_status = st,
            Err(e) => tracing::warn!(pod = %self.key(), "updating status: {e}"),
        }
    }

    /// Graceful deletion: SIGTERM, wait the grace period, SIGKILL, CNI DEL, remove the
    /// namespace and the files, then delete the pod object (grace 0) unless it is gone.
    async fn terminate(&mut self, gone: bool) {
        // A pod already gone from the API (force-deleted) is not waited for long.
        let grace = if gone {
            self.grace().min(2)
        } else {
            self.grace()
        };
        tracing::info!(pod = %self.key(), grace, "killing the pod's containers");
        for c in &mut self.ctrs {
            c.next_start = None;
            if let Some((_, rec)) = &c.proc {
                signal_container(rec, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(grace);
        while self.ctrs.iter().any(|c| c.proc.is_some()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.reap(true);
        }
        if self.ctrs.iter().any(|c| c.proc.is_some()) {
            for c in &self.ctrs {
                if let Some((_, rec)) = &c.proc {
                    signal_group(rec.pid, Signal::SIGKILL);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.ctrs.iter().any(|c| c.proc.is_some()) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.reap(true);
            }
        }
        if !gone {
            self.publish().await;
        }
        release_network(&self.ctx, &self.sb).await;
        if let Ok(mut logs) = self.ctx.logs.lock() {
            logs.remove(&(self.sb.namespace.clone(), self.sb.name.clone()));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(pod = %self.key(), "removing {}: {e}", self.dir.display());
        }
        if !gone {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.sb.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&self.sb.name, &dp).await {
                Ok(either) => {
                    if let Some(p) = either.left() {
                        tracing::warn!(pod = %self.key(), "the API server kept the pod after a delete with grace 0: {:?}", p.metadata.deletion_timestamp);
                    }
                }
                // Gone already, or a new pod with the same name (uid precondition).
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(pod = %self.key(), "deleting the pod: {e}"),
            }
        }
        tracing::info!(pod = %self.key(), "pod removed");
    }
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// SIGTERM now, SIGKILL after `grace` seconds if the same process still runs.
fn kill_gracefully(rec: ContainerRecord, grace: u64) {
    signal_container(&rec, Signal::SIGTERM);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(grace)).await;
        if sandbox::alive(&rec) {
            signal_group(rec.pid, Signal::SIGKILL);
        }
    });
}

/// The image's base name: `docker.io/library/nginx:1.27` → `nginx`.
fn image_base(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last).to_lowercase()
}

/// The built-in workload for a container without `command` (docs/node.md, "Images").
pub(crate) fn workload_argv(exe: &str, c: &Container) -> Vec<String> {
    let image = c.image.clone().unwrap_or_default().to_lowercase();
    let base = image_base(&image);
    let args = c.args.clone().unwrap_or_default();
    if image.contains("kubewire") {
        return std::iter::once(exe.to_owned()).chain(args).collect();
    }
    let ports = |proto: &str, default: i32| -> Vec<String> {
        let mut p: Vec<String> = c
            .ports
            .iter()
            .flatten()
            .filter(|p| {
                p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
            })
            .map(|p| p.container_port.to_string())
            .collect();
        if p.is_empty() {
            p.push(default.to_string());
        }
        p.into_iter()
            .flat_map(|p| ["--port".to_owned(), p])
            .collect()
    };
    let workload = |kind: &str, ports: Vec<String>| -> Vec<String> {
        [exe.to_owned(), "workload".into(), kind.into()]
            .into_iter()
            .chain(ports)
            .collect()
    };
    const HTTP: &[&str] = &[
        "nginx",
        "httpd",
        "whoami",
        "apache",
        "caddy",
        "traefik",
        "echoserver",
        "http-echo",
        "hello-app",
        "podinfo",
    ];
    if base.contains("udp-echo") {
        return workload("udp-echo", ports("UDP", 7));
    }
    if base.contains("tcp-echo") || base.contains("echo-server") {
        return workload("tcp-echo", ports("TCP", 7));
    }
    if HTTP.iter().any(|h| base.contains(h)) {
        return workload("http", ports("TCP", 80));
    }
    // busybox/alpine/ubuntu/...: the image's shell or command is replaced by `args`
    // when given (run from the host), else the container sleeps.
    if !args.is_empty() {
        return args;
    }
    workload("sleep", Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(v: Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn images_pick_workloads() {
        let exe = "/kw";
        assert_eq!(
            workload_argv(
                exe,
                &ctr(
                    json!({"name": "c", "image": "docker.io/library/nginx:1.27", "ports": [{"containerPort": 8080}]})
                )
            ),
            ["/kw", "workload", "http", "--port", "8080"]
        );
        assert_eq!(
            workload_argv(exe, &ctr(json!({"name": "c", "image": "httpd"}))),
            ["/kw", "workload", "http", "--port", "80"]
        );
        assert_eq!(
            workload_argv(exe, &ctr(json!({"name": "c", "image": "busybox"}))),
            ["/kw", "workload", "sleep"]
        );
        assert_eq!(
            workload_argv(
                exe,
                &ctr(json!({"name": "c", "image": "busybox", "args": ["sleep", "5"]}))
            ),
            ["sleep", "5"]
        );
        assert_eq!(
            workload_argv(
                exe,
                &ctr(json!({"name": "c", "image": "ghcr.io/x/kubewire:dev", "args": ["dns"]}))
            ),
            ["/kw", "dns"]
        );
        assert_eq!(
            workload_argv(
                exe,
                &ctr(
                    json!({"name": "c", "image": "udp-echo", "ports": [{"containerPort": 53, "protocol": "UDP"}]})
                )
            ),
            ["/kw", "workload", "udp-echo", "--port", "53"]
        );
    }
}

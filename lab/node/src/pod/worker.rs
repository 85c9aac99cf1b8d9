//! One pod's worker: the task that makes the pod's sandbox and files, starts its
//! containers in order, reaps and restarts them, runs their probes, reports the pod's
//! status when it changes, and on deletion stops everything and removes what it made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s::ErrorChain;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::container::{self, Ctr, Proc, container_id, restarts, signal_container};
use super::sandbox::{self, Sandbox};
use super::status::{self, Conditions, PodView};
use crate::init::{BindMount, InitSpec};
use crate::probe::{self, Kind};
use crate::record::{self, ContainerRecord, SandboxFile};
use crate::{ContainerEntry, Ctx, Error, PodEntry, env, files, security, time, workload};

/// How often a worker looks at its processes.
const TICK: Duration = Duration::from_millis(200);
/// The longest a container start waits for its container-init to say it is ready.
const INIT_READY_WAIT: Duration = Duration::from_secs(5);
/// Service-account tokens last 24 h and are rewritten every hour.
const TOKEN_REFRESH: Duration = Duration::from_secs(3600);

/// A probe's result: container index, the run it probed (restart count), which probe,
/// success.
type ProbeResult = (usize, u32, Kind, bool);

/// The container with `$(VAR)` in its `command` and `args` expanded from its
/// environment, as kubelet does (`$(NODE_NAME)` from the downward API, say).
fn expanded(c: &Container, envs: &[(String, String)]) -> Container {
    let vars = envs.iter().cloned().collect();
    let expand = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|s| env::expand(s, &vars)).collect())
    };
    Container {
        command: expand(&c.command),
        args: expand(&c.args),
        ..c.clone()
    }
}

/// One pod's worker.
struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    /// `DATA/pods/<uid>`.
    dir: PathBuf,
    pod: Pod,
    sandbox: Sandbox,
    /// When the service-account token was last written.
    token_written: Instant,
    /// When the projected volumes' tokens are to be renewed (`None`: none written).
    projected_due: Option<Instant>,
    /// Init containers first, in order, then the app containers.
    ctrs: Vec<Ctr>,
    start_time: String,
    conditions: Conditions,
    last_status: Value,
    probe_tx: mpsc::UnboundedSender<ProbeResult>,
}

enum Wake {
    Pod(bool),
    Probe(ProbeResult),
    Tick,
}

/// Runs the pod the watch hands over in `rx` (`None` once it is gone) until it is
/// deleted, or until the node stops (`rx` closed), when its containers keep running for
/// the next node process to adopt (from `adopted`, what the last one recorded).
pub(super) async fn run(
    ctx: Arc<Ctx>,
    mut rx: watch::Receiver<Option<Pod>>,
    adopted: Option<SandboxFile>,
) {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return;
    };
    let now = Instant::now();
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
        sandbox: Sandbox::new(&pod, &uid, now),
        ctrs: spec
            .init_containers
            .iter()
            .flatten()
            .cloned()
            .map(|c| Ctr::new(c, true, now))
            .chain(
                spec.containers
                    .iter()
                    .cloned()
                    .map(|c| Ctr::new(c, false, now)),
            )
            .collect(),
        ctx,
        uid,
        dir,
        pod,
        token_written: now,
        projected_due: None,
        start_time,
        conditions: Conditions::new(),
        last_status: Value::Null,
        probe_tx,
    };
    if let Some(a) = adopted
        && w.sandbox.adopt(a, &mut w.ctrs, now)
    {
        // The token on disk was written by an earlier node process: renew it now.
        w.token_written = now.checked_sub(TOKEN_REFRESH).unwrap_or(now);
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
        if w.sandbox.due(Instant::now()) {
            let result = w.setup_sandbox().await;
            if let Err(e) = &result {
                tracing::warn!(pod = %w.key(), error = %ErrorChain(e), "sandbox");
            }
            w.sandbox.made(result, Instant::now());
        }
        if w.sandbox.ready && w.token_written.elapsed() >= TOKEN_REFRESH {
            w.refresh_token().await;
        }
        if w.sandbox.ready && w.projected_due.is_some_and(|t| Instant::now() >= t) {
            w.refresh_projected().await;
        }
        if w.sandbox.ready {
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

impl Worker {
    fn key(&self) -> String {
        self.sandbox.file.pod_key()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// The pod's `terminationGracePeriodSeconds` (default 30): how long a container
    /// killed for a failed probe has between SIGTERM and SIGKILL.
    fn termination_grace(&self) -> i64 {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
    }

    /// How long the pod's deletion waits between SIGTERM and SIGKILL: the grace period
    /// of the delete, else the pod's own.
    fn grace(&self) -> u64 {
        let g = self.pod.metadata.deletion_grace_period_seconds;
        u64::try_from(g.unwrap_or_else(|| self.termination_grace())).unwrap_or(0)
    }

    /// The pod's network, then its files, then sandbox.json.
    async fn setup_sandbox(&mut self) -> Result<(), Error> {
        std::fs::create_dir_all(self.dir.join("etc"))
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let ctx = self.ctx.clone();
        self.sandbox.wire(&ctx, &self.pod).await?;
        self.write_files().await?;
        self.sandbox.file.write(&self.dir)
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
        let hosts = if self.sandbox.file.host_network {
            files::host_network_hosts(
                &self.pod,
                &std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            )
        } else {
            files::hosts(&self.pod, &self.sandbox.file.ips, &ctx.args.cluster_domain)
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
            // Without its token the pod does not start (kubelet's projected volume
            // fails the same way); the sandbox is tried again.
            let token = self.token(&sa).await?;
            let put = |n: &str, t: &str| {
                let p = sa_dir.join(n);
                std::fs::write(&p, t).map_err(|e| Error::io(format!("writing {}", p.display()), e))
            };
            put("token", &token)?;
            put("ca.crt", &ctx.ca_pem)?;
            put("namespace", &self.sandbox.file.namespace)?;
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
                    tracing::warn!(pod = %self.key(), error = %e, "writing the service account token");
                }
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %ErrorChain(&e), "refreshing the service account token")
            }
        }
    }

    /// Writes the projected volumes again with fresh tokens (and the ConfigMaps and
    /// Secrets they show as they are now); tried again in 10 s if that fails.
    async fn refresh_projected(&mut self) {
        let ctx = self.ctx.clone();
        match crate::volumes::prepare(&ctx.client, &self.pod, &self.dir, &ctx.args.host_path_root)
            .await
        {
            Ok(_) => {
                self.projected_due =
                    crate::volumes::token_refresh(&self.pod).map(|d| Instant::now() + d);
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %ErrorChain(&e), "renewing projected tokens");
                self.projected_due = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }

    /// A bound token from the API server's TokenRequest, as kubelet's projected volume.
    async fn token(&self, sa: &str) -> Result<String, Error> {
        let ns = &self.sandbox.file.namespace;
        crate::volumes::bound_token(&self.ctx.client, &self.pod, ns, sa, None, 86400).await
    }

    /// The ConfigMaps and Secrets the container's environment refers to (missing ones
    /// are left out; `container_env` decides whether that is an error).
    async fn env_sources(&self, c: &Container) -> env::Sources {
        let (cms, secrets) = env::referenced(c);
        let mut out = env::Sources::default();
        let client = self.ctx.client.clone();
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &self.sandbox.file.namespace);
        for n in cms {
            if let Ok(Some(cm)) = cm_api.get_opt(&n).await {
                out.config_maps.insert(n, cm.data.unwrap_or_default());
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(client, &self.sandbox.file.namespace);
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

    /// Starts container `i`: its environment, mounts and program in container-init's
    /// spec, then container-init.
    async fn start(&mut self, i: usize) -> Result<(), Error> {
        let ctx = self.ctx.clone();
        let c = &self.ctrs[i];
        let spec_c = c.spec.clone();
        let name = spec_c.name.clone();
        let restart = c.next_run();
        let sb = &self.sandbox.file;
        let host_network = sb.host_network;
        let rt = env::Runtime {
            pod_ips: sb.ips.clone(),
            host_ips: ctx.args.node_ip.iter().map(ToString::to_string).collect(),
            node_name: ctx.args.node_name.clone(),
        };
        let services = ctx.services.list();
        let sources = self.env_sources(&spec_c).await;
        let mut envs =
            env::container_env(&self.pod, &spec_c, &rt, &services, &sources).map_err(|reason| {
                Error::ContainerConfig {
                    container: name.clone(),
                    pod: self.key(),
                    reason,
                }
            })?;
        let sb = &self.sandbox.file;
        if spec_c.command.as_ref().is_none_or(|c| c.is_empty()) {
            for (k, v) in [
                ("KUBEWIRE_POD_NAME", sb.name.clone()),
                ("KUBEWIRE_POD_NAMESPACE", sb.namespace.clone()),
                (
                    "KUBEWIRE_POD_IP",
                    rt.pod_ips.first().cloned().unwrap_or_default(),
                ),
                ("KUBEWIRE_NODE_NAME", ctx.args.node_name.clone()),
            ] {
                envs.push((k.into(), v));
            }
        }
        // Volume errors name this container and pod.
        let named = |e: Error| match e {
            Error::ContainerConfig { reason, .. } => Error::ContainerConfig {
                container: name.clone(),
                pod: self.key(),
                reason,
            },
            e => e,
        };
        // Volumes first (a hostPath of the node's /etc among them): the pod's own /etc
        // files go over them.
        let volumes =
            crate::volumes::prepare(&ctx.client, &self.pod, &self.dir, &ctx.args.host_path_root)
                .await
                .map_err(named)?;
        let projected_due = crate::volumes::token_refresh(&self.pod).map(|d| Instant::now() + d);
        let mut mounts = crate::volumes::mounts(&spec_c, &volumes, &self.dir).map_err(named)?;
        let etc = self.dir.join("etc");
        mounts.push(BindMount {
            source: etc.join("resolv.conf"),
            target: "/etc/resolv.conf".into(),
            read_only: false,
            mkdir: false,
        });
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
            netns: (!host_network).then(|| PathBuf::from(&sb.netns)),
            mounts,
            hostname: (!host_network).then(|| files::hostname(&self.pod)),
            argv: workload::container_argv(
                &ctx.exe.display().to_string(),
                &expanded(&spec_c, &envs),
            ),
            env: envs,
            workdir: spec_c
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            log: log.clone(),
            exit_file,
            capabilities: security::capabilities(&spec_c),
            no_new_privs: security::no_new_privs(&spec_c),
            user: security::user(&spec_c, self.pod.spec.as_ref()),
            stdin: spec_c.stdin.unwrap_or(false),
            stdin_once: spec_c.stdin_once.unwrap_or(false),
            tty: spec_c.tty.unwrap_or(false),
        };
        let spec_path = cdir.join(format!("{name}.json"));
        std::fs::write(
            &spec_path,
            serde_json::to_vec_pretty(&init).unwrap_or_default(),
        )
        .map_err(|e| Error::io(format!("writing {}", spec_path.display()), e))?;
        let mut child = tokio::process::Command::new(&ctx.exe)
            .arg(crate::init::SUBCOMMAND)
            .arg("run")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("starting container {name} of {}", self.key()), e))?;
        // Running means attachable: container-init writes a byte once its attach
        // socket is bound and the pod's namespaces entered (or closes the pipe,
        // failing). The bound guards a stuck one.
        if let Some(mut ready) = child.stdout.take() {
            let mut byte = [0u8; 1];
            let _ = tokio::time::timeout(INIT_READY_WAIT, ready.read(&mut byte)).await;
        }
        let pid = child.id().unwrap_or(0);
        let rec = ContainerRecord {
            pid,
            log: log.display().to_string(),
            restart_count: restart,
            started_at: time::rfc3339(SystemTime::now()),
            start_ticks: record::start_ticks(pid).unwrap_or(0),
            spec: spec_path.display().to_string(),
        };
        let id = container_id(&sb.sandbox_id, &name, restart);
        self.sandbox
            .file
            .containers
            .insert(name.clone(), rec.clone());
        self.ctrs[i].started(Instant::now(), Proc::Child(child), rec, id);
        self.projected_due = projected_due;
        tracing::info!(pod = %self.key(), container = %name, pid, restart, "container started");
        self.sandbox.file.write(&self.dir)
    }

    async fn start_due(&mut self) {
        let now = Instant::now();
        // Init containers one at a time, in order (a sidecar is done once it is up);
        // app containers once all are done. Once the apps ran, a sidecar that restarts
        // holds nothing back.
        let apps_started = self.ctrs.iter().any(|c| !c.init && c.ever_started);
        let gate = self
            .ctrs
            .iter()
            .position(|c| c.init && !c.init_done())
            .filter(|_| !apps_started);
        self.stop_sidecars_of_finished_apps();
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            let allowed = match gate {
                // Sidecars before the gate run (again) while it waits.
                Some(g) => i == g || (c.sidecar() && i < g),
                None => !c.init || c.sidecar(),
            } && !c.stopping;
            if allowed
                && c.proc.is_none()
                && c.next_start.is_some_and(|t| t <= now)
                && let Err(e) = self.start(i).await
            {
                let e = ErrorChain(&e).to_string();
                tracing::warn!(pod = %self.key(), error = %e, "starting a container");
                self.ctrs[i].start_failed(now, e);
            }
        }
        self.publish_entry();
    }

    /// Once every app container of a pod that does not restart them has finished (a
    /// Job's pod), its sidecars are stopped, as kubelet does, so the pod completes.
    fn stop_sidecars_of_finished_apps(&mut self) {
        if self.restart_policy() == "Always" {
            return;
        }
        let mut apps = self.ctrs.iter().filter(|c| !c.init).peekable();
        let finished = apps.peek().is_some()
            && apps.all(|c| c.ever_started && c.proc.is_none() && c.next_start.is_none());
        if !finished {
            return;
        }
        let grace = u64::try_from(self.termination_grace()).unwrap_or(0);
        for c in self.ctrs.iter_mut().filter(|c| c.sidecar() && !c.stopping) {
            c.stopping = true;
            c.next_start = None;
            if let Some((_, rec)) = &c.proc {
                tracing::info!(container = %c.spec.name, "stopping a sidecar: the app containers finished");
                container::kill_gracefully(rec.clone(), grace);
            }
        }
    }

    /// Notices exited containers; schedules restarts unless `terminating`.
    fn reap(&mut self, terminating: bool) {
        let policy = self.restart_policy();
        let mut changed = false;
        for c in &mut self.ctrs {
            let Some(exit) = c.poll_exit() else { continue };
            changed = true;
            tracing::info!(container = %c.spec.name, code = exit.0, "container exited");
            let restart = !terminating
                && if c.sidecar() {
                    !c.stopping
                } else {
                    restarts(&policy, c.init, exit.0)
                };
            c.exited(
                Instant::now(),
                exit,
                time::rfc3339(SystemTime::now()),
                restart,
            );
            self.sandbox.file.containers.remove(&c.spec.name);
        }
        if changed {
            let _ = self.sandbox.file.write(&self.dir);
            self.publish_entry();
        }
    }

    /// Tells the kubelet API what this pod has now.
    fn publish_entry(&self) {
        let sb = &self.sandbox.file;
        let entry = PodEntry {
            dir: self.dir.clone(),
            uid: self.uid.clone(),
            netns: (!sb.host_network && !sb.netns.is_empty()).then(|| PathBuf::from(&sb.netns)),
            containers: self
                .ctrs
                .iter()
                .filter(|c| c.ever_started)
                .map(|c| {
                    let running = c.proc.as_ref().map(|(_, rec)| crate::exec::ContainerRef {
                        spec: PathBuf::from(&rec.spec),
                        pid: rec.pid,
                    });
                    let e = ContainerEntry {
                        restarts: c.restart_count,
                        running,
                    };
                    (c.spec.name.clone(), e)
                })
                .collect(),
        };
        if let Ok(mut pods) = self.ctx.pods.lock() {
            pods.insert((sb.namespace.clone(), sb.name.clone()), entry);
        }
    }

    fn run_probes(&mut self) {
        let now = Instant::now();
        let ip = self.sandbox.file.ips.first().and_then(|i| i.parse().ok());
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

    fn apply_probe(&mut self, (i, run_id, kind, ok): ProbeResult) {
        let grace = u64::try_from(self.termination_grace()).unwrap_or(0);
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
                container::kill_gracefully(rec.clone(), grace);
            }
        }
    }

    /// The pod's status now; remembers its conditions' transition times.
    fn status(&mut self) -> Value {
        let host_ips: Vec<String> = self
            .ctx
            .args
            .node_ip
            .iter()
            .map(ToString::to_string)
            .collect();
        let view = PodView {
            name: &self.sandbox.file.name,
            sandbox_ready: self.sandbox.ready,
            sandbox_error: self.sandbox.error.as_deref(),
            pod_ips: &self.sandbox.file.ips,
            host_ips: &host_ips,
            start_time: &self.start_time,
            containers: self.ctrs.iter().map(Ctr::view).collect(),
        };
        let (st, conditions) = status::pod_status(&view, SystemTime::now(), &self.conditions);
        self.conditions = conditions;
        st
    }

    async fn publish(&mut self) {
        let st = self.status();
        if st == self.last_status {
            return;
        }
        let sb = &self.sandbox.file;
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &sb.namespace);
        match api
            .patch_status(
                &sb.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": st})),
            )
            .await
        {
            Ok(_) => self.last_status = st,
            Err(e) => tracing::warn!(pod = %self.key(), error = %ErrorChain(&e), "updating status"),
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
        // The app containers first; sidecars once they have exited (or the grace
        // period is over), so a proxy outlives the app it serves, as with kubelet.
        let deadline = Instant::now() + Duration::from_secs(grace);
        for sidecars in [false, true] {
            for c in self.ctrs.iter_mut().filter(|c| c.sidecar() == sidecars) {
                c.next_start = None;
                if let Some((_, rec)) = &c.proc {
                    signal_container(rec, Signal::SIGTERM);
                }
            }
            while self
                .ctrs
                .iter()
                .any(|c| c.proc.is_some() && (sidecars || !c.sidecar()))
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.reap(true);
            }
        }
        if self.ctrs.iter().any(|c| c.proc.is_some()) {
            for c in &self.ctrs {
                if let Some((_, rec)) = &c.proc {
                    record::kill_container(rec);
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
        let sb = &self.sandbox.file;
        sandbox::release(&self.ctx, sb).await;
        if let Ok(mut pods) = self.ctx.pods.lock() {
            pods.remove(&(sb.namespace.clone(), sb.name.clone()));
        }
        crate::volumes::remove_mount_points(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(pod = %self.key(), error = %e, "removing {}", self.dir.display());
        }
        if !gone {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &sb.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&sb.name, &dp).await {
                Ok(either) => {
                    if let Some(p) = either.left() {
                        tracing::warn!(pod = %self.key(), "the API server kept the pod after a delete with grace 0: {:?}", p.metadata.deletion_timestamp);
                    }
                }
                // Gone already, or a new pod with the same name (uid precondition).
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %ErrorChain(&e), "deleting the pod")
                }
            }
        }
        tracing::info!(pod = %self.key(), "pod removed");
    }
}

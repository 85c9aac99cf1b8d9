//! One container of a pod and its states as kubelet steps them: waiting to be created,
//! running, terminated, and waiting again for a restart with backoff; and the signals
//! that stop its process. The worker starts and reaps the processes; each step of a
//! container's life is one method here.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::status::ContainerView;
use crate::init::ExitRecord;
use crate::probe::{Kind, ProbeState};
use crate::record::{self, ContainerRecord, signal_group};

/// The first restart waits this long, doubling per restart up to [`MAX_BACKOFF`]
/// (kubelet: 10 s to 5 min; the lab is shorter so crash loops are visible quickly).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A container that ran this long without exiting starts its backoff over.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// A container's state as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum State {
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
    pub(crate) fn waiting(reason: &str, message: impl Into<String>) -> State {
        State::Waiting {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// The API's `ContainerState` object.
    pub(crate) fn to_json(&self) -> Value {
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
                let mut t = json!({"exitCode": exit_code, "reason": reason});
                // A run this node process did not see (an init container that completed
                // under an earlier one) has no times or ID: left out, as the API leaves
                // out a null time. An empty string is no time: clients fail to read it.
                for (key, value) in [
                    ("startedAt", started_at),
                    ("finishedAt", finished_at),
                    ("containerID", id),
                ] {
                    if !value.is_empty() {
                        t[key] = json!(value);
                    }
                }
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

/// How long a container waits before its next start: [`FIRST_BACKOFF`], doubling per
/// start up to [`MAX_BACKOFF`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(FIRST_BACKOFF)
    }

    /// The wait before this start; the next one waits twice as long.
    fn take(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        wait
    }
}

/// Whether a container that exited with `code` runs again under the pod's restart
/// `policy`: app containers by the policy, init containers only when they failed (and
/// the policy is not `Never`).
pub(super) fn restarts(policy: &str, init: bool, code: i32) -> bool {
    if init {
        code != 0 && policy != "Never"
    } else {
        policy == "Always" || (policy == "OnFailure" && code != 0)
    }
}

/// A container's process.
pub(super) enum Proc {
    /// Started by this process: reaped through the handle.
    Child(tokio::process::Child),
    /// Found running at start-up (started by an earlier node process).
    Adopted,
}

/// The `containerID` of a container's run: `kubewire://<sandbox>-<name>-<restart>`.
pub(super) fn container_id(sandbox_id: &str, name: &str, restart: u32) -> String {
    format!(
        "kubewire://{}-{name}-{restart}",
        &sandbox_id[..12.min(sandbox_id.len())]
    )
}

/// One container of the pod.
pub(super) struct Ctr {
    pub spec: Container,
    /// An init container: runs to completion, in order, before the app containers.
    pub init: bool,
    pub restart_count: u32,
    /// The running process and its record in sandbox.json.
    pub proc: Option<(Proc, ContainerRecord)>,
    pub state: State,
    /// The previous run's end.
    pub last: Option<State>,
    /// When to start (again); `None` while it runs and once it will not run again.
    pub next_start: Option<Instant>,
    backoff: Backoff,
    pub ever_started: bool,
    /// When the current run started (for the backoff reset).
    started_instant: Instant,
    pub probes: Vec<ProbeState>,
    pub id: String,
    /// Why the node killed it (liveness/startup failure), for the terminated message.
    pub killed_for: Option<String>,
    /// A sidecar the node is stopping because the app containers finished: it does
    /// not run again.
    pub stopping: bool,
}

impl Ctr {
    /// A container not created yet, to be started at once.
    pub(super) fn new(spec: Container, init: bool, now: Instant) -> Ctr {
        Ctr {
            spec,
            init,
            restart_count: 0,
            proc: None,
            state: State::waiting("ContainerCreating", ""),
            last: None,
            next_start: Some(now),
            backoff: Backoff::new(),
            ever_started: false,
            started_instant: now,
            probes: Vec::new(),
            id: String::new(),
            killed_for: None,
            stopping: false,
        }
    }

    /// A restartable init container (`restartPolicy: Always`), Kubernetes' native
    /// sidecar: started in init order, kept running beside the app containers,
    /// restarted whatever the pod's policy, stopped after them.
    pub(super) fn sidecar(&self) -> bool {
        self.init && self.spec.restart_policy.as_deref() == Some("Always")
    }

    /// Runs and its startup probe (if any) passed: a sidecar that is up lets the next
    /// init container start.
    pub(super) fn up(&self) -> bool {
        self.proc.is_some() && self.probe(Kind::Startup).is_none_or(|p| p.ok)
    }

    /// Done as an init container: a sidecar once up, any other once it succeeded.
    pub(super) fn init_done(&self) -> bool {
        if self.sidecar() {
            self.up()
        } else {
            self.succeeded()
        }
    }

    /// Exited 0 (for an init container: done).
    pub(super) fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { exit_code: 0, .. }) && self.proc.is_none()
    }

    fn probe(&self, kind: Kind) -> Option<&ProbeState> {
        self.probes.iter().find(|p| p.kind == kind)
    }

    /// The restart number of the next run (0 for the first).
    pub(super) fn next_run(&self) -> u32 {
        if self.ever_started {
            self.restart_count + 1
        } else {
            0
        }
    }

    /// Its process started: Running, with fresh probes.
    pub(super) fn started(&mut self, now: Instant, proc: Proc, rec: ContainerRecord, id: String) {
        self.restart_count = rec.restart_count;
        self.ever_started = true;
        self.next_start = None;
        self.killed_for = None;
        self.started_instant = now;
        self.id = id;
        self.state = State::Running {
            started_at: rec.started_at.clone(),
        };
        self.proc = Some((proc, rec));
        self.make_probes(now);
    }

    /// Its process could not be started: tried again after the backoff.
    pub(super) fn start_failed(&mut self, now: Instant, message: String) {
        self.state = State::waiting("RunContainerError", message);
        self.next_start = Some(now + self.backoff.take());
    }

    /// Whether its process ended, and how: the exit code (128 + signal when killed) and
    /// the signal.
    pub(super) fn poll_exit(&mut self) -> Option<(i32, Option<i32>)> {
        let (proc, rec) = self.proc.as_mut()?;
        match proc {
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
            // Not our child: container-init's exit file says how it ended.
            Proc::Adopted => (!record::alive(rec)).then(|| {
                let exit_file = Path::new(&rec.spec).with_extension("exit");
                std::fs::read(&exit_file)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ExitRecord>(&b).ok())
                    .map_or((137, None), |r| (r.exit_code, r.signal))
            }),
        }
    }

    /// Its process exited at `finished_at`: Terminated, and started again after the
    /// backoff when `restart` (the backoff starts over after a long run).
    pub(super) fn exited(
        &mut self,
        now: Instant,
        (code, signal): (i32, Option<i32>),
        finished_at: String,
        restart: bool,
    ) {
        let started_at = self
            .proc
            .take()
            .map(|(_, rec)| rec.started_at)
            .unwrap_or_default();
        let reason = if self.killed_for.is_some() || code != 0 {
            "Error"
        } else {
            "Completed"
        };
        let term = State::Terminated {
            exit_code: code,
            signal,
            reason: reason.into(),
            message: self.killed_for.clone().unwrap_or_default(),
            started_at,
            finished_at,
            id: self.id.clone(),
        };
        self.state = term.clone();
        self.last = Some(term);
        self.next_start = if restart {
            if now.saturating_duration_since(self.started_instant) >= BACKOFF_RESET {
                self.backoff = Backoff::new();
            }
            Some(now + self.backoff.take())
        } else {
            None
        };
    }

    /// A process of an earlier node process, still running: Running again as it was.
    pub(super) fn adopt_running(&mut self, now: Instant, rec: &ContainerRecord, id: String) {
        self.started(now, Proc::Adopted, rec.clone(), id);
    }

    /// An init container that completed under an earlier node process (its app
    /// containers ran): Terminated with exit code 0.
    pub(super) fn adopt_completed(&mut self) {
        self.ever_started = true;
        self.next_start = None;
        self.state = State::Terminated {
            exit_code: 0,
            signal: None,
            reason: "Completed".into(),
            message: String::new(),
            started_at: String::new(),
            finished_at: String::new(),
            id: String::new(),
        };
    }

    fn make_probes(&mut self, now: Instant) {
        self.probes = [
            (Kind::Startup, &self.spec.startup_probe),
            (Kind::Liveness, &self.spec.liveness_probe),
            (Kind::Readiness, &self.spec.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.clone().map(|p| ProbeState::new(k, p, now)))
        .collect();
    }

    /// What the pod's status shows of it.
    pub(super) fn view(&self) -> ContainerView {
        ContainerView {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            init: self.init,
            sidecar: self.sidecar(),
            state: self.state.clone(),
            last: self.last.clone(),
            running: self.proc.is_some(),
            will_start: self.next_start.is_some(),
            ever_started: self.ever_started,
            restart_count: self.restart_count,
            startup: self.probe(Kind::Startup).map(|p| p.ok),
            readiness: self.probe(Kind::Readiness).map(|p| p.ok),
            id: self.id.clone(),
        }
    }
}

/// Sends `sig` to a container's own process (its pid file, written by container-init,
/// checked to be container-init's child so a reused pid is never hit), or, before that
/// exists, to the container's whole process group.
pub(super) fn signal_container(rec: &ContainerRecord, sig: Signal) {
    match record::main_pid(rec).and_then(|p| i32::try_from(p).ok()) {
        Some(p) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
        None => signal_group(rec.pid, sig),
    }
}

/// SIGTERM now, SIGKILL after `grace` seconds if the same process still runs.
pub(super) fn kill_gracefully(rec: ContainerRecord, grace: u64) {
    signal_container(&rec, Signal::SIGTERM);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(grace)).await;
        if record::alive(&rec) {
            record::kill_container(&rec);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(init: bool, now: Instant) -> Ctr {
        let spec = Container {
            name: "web".into(),
            ..Default::default()
        };
        Ctr::new(spec, init, now)
    }

    fn start(c: &mut Ctr, now: Instant) {
        let rec = ContainerRecord {
            restart_count: c.next_run(),
            started_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        let id = container_id("0123456789abcdef", &c.spec.name, rec.restart_count);
        c.started(now, Proc::Adopted, rec, id);
    }

    /// An init container adopted as completed from an earlier node process has no
    /// times: its state leaves them out, and what it writes reads back as a Kubernetes
    /// ContainerState (an empty time would not: the pod would break every client's watch).
    #[test]
    fn an_adopted_completed_init_container_writes_no_empty_times() {
        let mut c = ctr(true, Instant::now());
        c.adopt_completed();
        let state = c.view().state.to_json();
        assert_eq!(
            state,
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
        );
        let typed: k8s_openapi::api::core::v1::ContainerState =
            serde_json::from_value(state).unwrap();
        assert!(typed.terminated.unwrap().started_at.is_none());
    }

    #[test]
    fn restart_policy_decides_who_runs_again() {
        for (policy, code, app, init) in [
            ("Always", 0, true, false),
            ("Always", 1, true, true),
            ("OnFailure", 0, false, false),
            ("OnFailure", 1, true, true),
            ("Never", 0, false, false),
            ("Never", 1, false, false),
        ] {
            assert_eq!(
                restarts(policy, false, code),
                app,
                "{policy} app exit {code}"
            );
            assert_eq!(
                restarts(policy, true, code),
                init,
                "{policy} init exit {code}"
            );
        }
    }

    #[test]
    fn runs_exits_and_restarts_with_a_doubling_backoff() {
        let t0 = Instant::now();
        let mut c = ctr(false, t0);
        assert_eq!(c.state, State::waiting("ContainerCreating", ""));
        assert_eq!(c.next_start, Some(t0), "a new container starts at once");
        start(&mut c, t0);
        assert_eq!(c.restart_count, 0);
        assert_eq!(c.id, "kubewire://0123456789ab-web-0");
        assert!(c.next_start.is_none() && c.proc.is_some());
        let mut waits = Vec::new();
        let mut t = t0;
        for _ in 0..8 {
            t += Duration::from_secs(1);
            c.exited(t, (1, None), "t".into(), true);
            let next = c.next_start.expect("restarts");
            waits.push((next - t).as_secs());
            assert!(c.proc.is_none());
            assert_eq!(c.last.as_ref(), Some(&c.state));
            start(&mut c, next);
            t = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(c.restart_count, 8);
        assert_eq!(c.id, "kubewire://0123456789ab-web-8");
        // A run longer than the reset period starts the backoff over.
        c.exited(t + BACKOFF_RESET, (1, None), "t".into(), true);
        assert_eq!(c.next_start, Some(t + BACKOFF_RESET + FIRST_BACKOFF));
    }

    #[test]
    fn terminated_says_how_it_ended() {
        let t = Instant::now();
        let mut c = ctr(false, t);
        start(&mut c, t);
        c.exited(t, (0, None), "2026-01-01T00:00:09Z".into(), false);
        assert_eq!(
            c.state,
            State::Terminated {
                exit_code: 0,
                signal: None,
                reason: "Completed".into(),
                message: String::new(),
                started_at: "2026-01-01T00:00:00Z".into(),
                finished_at: "2026-01-01T00:00:09Z".into(),
                id: "kubewire://0123456789ab-web-0".into(),
            }
        );
        assert!(c.succeeded() && c.next_start.is_none());
        // Killed for a failed probe: an error even when it exits 0 at SIGTERM.
        start(&mut c, t);
        c.killed_for = Some("Container web failed liveness probe, will be restarted".into());
        c.exited(t, (143, Some(15)), "t".into(), true);
        let State::Terminated {
            reason,
            message,
            signal,
            ..
        } = &c.state
        else {
            panic!("{:?}", c.state)
        };
        assert_eq!((reason.as_str(), *signal), ("Error", Some(15)));
        assert!(message.contains("liveness"));
        start(&mut c, t);
        assert_eq!(c.killed_for, None, "a new run starts with a clean slate");
    }

    #[test]
    fn a_failed_start_waits_for_the_backoff() {
        let t = Instant::now();
        let mut c = ctr(false, t);
        c.start_failed(t, "no such file".into());
        assert_eq!(c.state, State::waiting("RunContainerError", "no such file"));
        assert_eq!(c.next_start, Some(t + FIRST_BACKOFF));
        c.start_failed(t, "no such file".into());
        assert_eq!(c.next_start, Some(t + 2 * FIRST_BACKOFF));
        assert_eq!(c.next_run(), 0, "it never ran");
    }
}

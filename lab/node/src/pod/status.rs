//! A pod's status as kubelet reports it, computed from what the node knows of the pod
//! (its containers, its sandbox), the time, and the conditions it reported last: phase,
//! conditions, container statuses and addresses. A pure function, so kubelet's rules
//! are tested here without processes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::container::State;
use crate::time;

/// What the status shows of one container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerView {
    pub name: String,
    pub image: String,
    /// An init container.
    pub init: bool,
    /// A restartable init container (`restartPolicy: Always`): a native sidecar.
    pub sidecar: bool,
    pub state: State,
    /// How the previous run ended.
    pub last: Option<State>,
    /// Its process runs.
    pub running: bool,
    /// It will start (again): first start or restart pending.
    pub will_start: bool,
    pub ever_started: bool,
    pub restart_count: u32,
    /// The startup and readiness probes' verdicts; `None` where it has no such probe.
    pub startup: Option<bool>,
    pub readiness: Option<bool>,
    /// The current or last run's `containerID`.
    pub id: String,
}

impl ContainerView {
    /// Exited 0 and not running (for an init container: done).
    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { exit_code: 0, .. }) && !self.running
    }

    /// Runs and its startup probe (if any) passed.
    fn started(&self) -> bool {
        self.running && self.startup.is_none_or(|ok| ok)
    }

    /// Started and its readiness probe (if any) passes.
    fn ready(&self) -> bool {
        self.started() && self.readiness.is_none_or(|ok| ok)
    }

    /// Ran, exited, and will not run again.
    fn finished(&self) -> bool {
        !self.running && !self.will_start && self.ever_started
    }

    fn exit_code(&self) -> i32 {
        match &self.state {
            State::Terminated { exit_code, .. } => *exit_code,
            _ => 0,
        }
    }
}

/// What a pod's status is computed from.
#[derive(Debug, Clone)]
pub(crate) struct PodView<'a> {
    pub name: &'a str,
    /// The network namespace is wired and the pod's files written.
    pub sandbox_ready: bool,
    /// Why the sandbox could not be made, shown while containers wait for it.
    pub sandbox_error: Option<&'a str>,
    pub pod_ips: &'a [String],
    pub host_ips: &'a [String],
    /// `status.startTime`.
    pub start_time: &'a str,
    /// Init containers first, in order, then the app containers.
    pub containers: Vec<ContainerView>,
}

/// The pod's conditions as last reported: type → (status, lastTransitionTime).
pub(crate) type Conditions = BTreeMap<&'static str, (bool, String)>;

/// The pod's `status` at `now`, and its conditions to pass as `previous` next time (a
/// condition keeps its lastTransitionTime while its status stays).
pub(crate) fn pod_status(
    pod: &PodView<'_>,
    now: SystemTime,
    previous: &Conditions,
) -> (Value, Conditions) {
    let now = time::rfc3339(now);
    let inits = || pod.containers.iter().filter(|c| c.init);
    let apps = || pod.containers.iter().filter(|c| !c.init);
    let sidecars = || pod.containers.iter().filter(|c| c.sidecar);
    // A sidecar counts once started; once the apps ran, the pod stays initialized.
    let initialized = inits().all(|c| {
        if c.sidecar {
            c.started()
        } else {
            c.succeeded()
        }
    }) || apps().any(|c| c.ever_started);
    let to_status = |c: &ContainerView| {
        let state = match &c.state {
            State::Waiting { .. } if !pod.sandbox_ready => {
                State::waiting("ContainerCreating", pod.sandbox_error.unwrap_or_default())
            }
            State::Terminated { .. } if c.will_start => State::waiting(
                "CrashLoopBackOff",
                format!(
                    "back-off restarting failed container {} in pod {}",
                    c.name, pod.name
                ),
            ),
            State::Waiting { .. } if !c.init && !initialized => {
                State::waiting("PodInitializing", "")
            }
            s => s.clone(),
        };
        let last = c.last.as_ref().filter(|_| c.running || c.will_start);
        let mut v = json!({
            "name": c.name,
            "image": c.image,
            "imageID": "",
            "ready": if c.init && !c.sidecar { c.succeeded() } else { c.ready() },
            "started": c.started(),
            "restartCount": c.restart_count,
            "state": state.to_json(),
            "lastState": last.map_or(json!({}), State::to_json),
        });
        if c.ever_started && !c.id.is_empty() {
            v["containerID"] = json!(c.id);
        }
        v
    };
    // An init container that failed and will not run again fails the pod (a sidecar
    // stopped after its apps finished does not).
    let init_failed = inits().any(|c| !c.sidecar && c.finished() && !c.succeeded());
    let phase = if init_failed {
        "Failed"
    } else if apps().all(ContainerView::finished) {
        if apps().all(|c| c.exit_code() == 0) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if apps().any(|c| c.ever_started) {
        "Running"
    } else {
        "Pending"
    };
    let ready = pod.sandbox_ready
        && initialized
        && apps().count() > 0
        && apps().chain(sidecars()).all(ContainerView::ready);
    let wanted: [(&'static str, bool); 5] = [
        ("PodReadyToStartContainers", pod.sandbox_ready),
        ("Initialized", initialized),
        ("Ready", ready),
        ("ContainersReady", ready),
        ("PodScheduled", true),
    ];
    let mut kept = Conditions::new();
    let mut conditions = Vec::new();
    for (ty, st) in wanted {
        let transition = match previous.get(ty) {
            Some((was, at)) if *was == st => at.clone(),
            _ => now.clone(),
        };
        let mut c = json!({"type": ty, "status": if st { "True" } else { "False" },
            "lastProbeTime": null, "lastTransitionTime": transition});
        if !st && (ty == "Ready" || ty == "ContainersReady") {
            let (reason, msg) = if phase == "Succeeded" || phase == "Failed" {
                ("PodCompleted", String::new())
            } else {
                let names: Vec<&str> = sidecars()
                    .chain(apps())
                    .filter(|c| !c.ready())
                    .map(|c| c.name.as_str())
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
        kept.insert(ty, (st, transition));
    }
    let mut st = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": pod.host_ips.first(),
        "hostIPs": pod.host_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        "startTime": pod.start_time,
        "qosClass": "BestEffort",
        "containerStatuses": apps().map(to_status).collect::<Vec<_>>(),
        "initContainerStatuses": inits().map(to_status).collect::<Vec<_>>(),
    });
    if pod.sandbox_ready && !pod.pod_ips.is_empty() {
        st["podIP"] = json!(pod.pod_ips[0]);
        st["podIPs"] = json!(
            pod.pod_ips
                .iter()
                .map(|ip| json!({"ip": ip}))
                .collect::<Vec<_>>()
        );
    }
    (st, kept)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::container::restarts;
    use super::*;

    const STARTED: &str = "2026-11-29T14:00:00Z";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_960_800 + secs)
    }

    fn waiting(name: &str) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "nginx".into(),
            init: false,
            sidecar: false,
            state: State::waiting("ContainerCreating", ""),
            last: None,
            running: false,
            will_start: true,
            ever_started: false,
            restart_count: 0,
            startup: None,
            readiness: None,
            id: String::new(),
        }
    }

    fn running(name: &str) -> ContainerView {
        ContainerView {
            state: State::Running {
                started_at: STARTED.into(),
            },
            running: true,
            will_start: false,
            ever_started: true,
            id: format!("kubewire://0123456789ab-{name}-0"),
            ..waiting(name)
        }
    }

    fn terminated(code: i32) -> State {
        State::Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            started_at: STARTED.into(),
            finished_at: "2026-11-29T14:00:05Z".into(),
            id: "kubewire://0123456789ab-web-0".into(),
        }
    }

    /// `name` exited with `code` under the restart `policy`.
    fn exited(name: &str, init: bool, code: i32, policy: &str) -> ContainerView {
        ContainerView {
            init,
            state: terminated(code),
            last: Some(terminated(code)),
            running: false,
            will_start: restarts(policy, init, code),
            ..running(name)
        }
    }

    fn init(c: ContainerView) -> ContainerView {
        ContainerView { init: true, ..c }
    }

    fn pod(containers: Vec<ContainerView>) -> PodView<'static> {
        static IPS: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["10.244.1.5".into(), "fd00:10:244:1::5".into()]);
        static HOST: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["198.18.0.11".into()]);
        PodView {
            name: "p",
            sandbox_ready: true,
            sandbox_error: None,
            pod_ips: &IPS,
            host_ips: &HOST,
            start_time: STARTED,
            containers,
        }
    }

    fn status(p: &PodView<'_>) -> Value {
        pod_status(p, at(0), &Conditions::new()).0
    }

    fn condition<'a>(st: &'a Value, ty: &str) -> &'a Value {
        st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty} in {st:#}"))
    }

    fn conditions(st: &Value) -> Vec<(String, String)> {
        st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().into(),
                    c["status"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    #[test]
    fn pending_while_the_sandbox_is_made() {
        let p = PodView {
            sandbox_ready: false,
            sandbox_error: Some("network not ready"),
            pod_ips: &[],
            ..pod(vec![waiting("web")])
        };
        let st = status(&p);
        assert_eq!(st["phase"], "Pending");
        assert_eq!(
            conditions(&st),
            [
                ("PodReadyToStartContainers".into(), "False".into()),
                ("Initialized".into(), "True".into()),
                ("Ready".into(), "False".into()),
                ("ContainersReady".into(), "False".into()),
                ("PodScheduled".into(), "True".into()),
            ]
        );
        assert_eq!(condition(&st, "Ready")["reason"], "ContainersNotReady");
        assert_eq!(
            condition(&st, "ContainersReady")["message"],
            "containers with unready status: [web]"
        );
        let web = &st["containerStatuses"][0];
        assert_eq!(
            web["state"],
            json!({"waiting": {"reason": "ContainerCreating", "message": "network not ready"}})
        );
        assert_eq!(
            (&web["ready"], &web["started"]),
            (&json!(false), &json!(false))
        );
        assert_eq!(web["lastState"], json!({}));
        assert!(web.get("containerID").is_none(), "{web}");
        assert!(
            st.get("podIP").is_none(),
            "no address before the sandbox has one"
        );
        assert_eq!(st["hostIP"], "198.18.0.11");
        assert_eq!(st["startTime"], STARTED);
    }

    #[test]
    fn running_and_ready() {
        let st = status(&pod(vec![running("web"), running("sidecar")]));
        assert_eq!(st["phase"], "Running");
        assert!(conditions(&st).iter().all(|(_, s)| s == "True"), "{st:#}");
        assert!(condition(&st, "Ready").get("reason").is_none());
        let web = &st["containerStatuses"][0];
        assert_eq!(web["name"], "web");
        assert_eq!(web["image"], "nginx");
        assert_eq!(web["state"], json!({"running": {"startedAt": STARTED}}));
        assert_eq!(
            (&web["ready"], &web["started"]),
            (&json!(true), &json!(true))
        );
        assert_eq!(web["restartCount"], 0);
        assert_eq!(web["containerID"], "kubewire://0123456789ab-web-0");
        assert_eq!(st["containerStatuses"][1]["name"], "sidecar");
        assert_eq!(st["initContainerStatuses"], json!([]));
        assert_eq!(st["podIP"], "10.244.1.5");
        assert_eq!(
            st["podIPs"],
            json!([{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}])
        );
        assert_eq!(st["hostIPs"], json!([{"ip": "198.18.0.11"}]));
        assert_eq!(st["qosClass"], "BestEffort");
    }

    #[test]
    fn readiness_comes_from_the_probes() {
        let unready = ContainerView {
            readiness: Some(false),
            ..running("web")
        };
        let st = status(&pod(vec![unready.clone(), running("sidecar")]));
        assert_eq!(st["phase"], "Running");
        let web = &st["containerStatuses"][0];
        assert_eq!(
            (&web["ready"], &web["started"]),
            (&json!(false), &json!(true))
        );
        for ty in ["Ready", "ContainersReady"] {
            let c = condition(&st, ty);
            assert_eq!(c["status"], "False");
            assert_eq!(c["reason"], "ContainersNotReady");
            assert_eq!(c["message"], "containers with unready status: [web]");
        }
        // Until the startup probe passes the container is neither started nor ready,
        // whatever its readiness probe says.
        let starting = ContainerView {
            startup: Some(false),
            readiness: Some(true),
            ..running("web")
        };
        let st = status(&pod(vec![starting]));
        let web = &st["containerStatuses"][0];
        assert_eq!(
            (&web["ready"], &web["started"]),
            (&json!(false), &json!(false))
        );
        assert_eq!(condition(&st, "Ready")["status"], "False");
        let passed = ContainerView {
            startup: Some(true),
            readiness: Some(true),
            ..running("web")
        };
        assert_eq!(
            condition(&status(&pod(vec![passed])), "Ready")["status"],
            "True"
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_while_they_hold() {
        let p = pod(vec![ContainerView {
            readiness: Some(false),
            ..running("web")
        }]);
        let (st, kept) = pod_status(&p, at(0), &Conditions::new());
        let t0 = time::rfc3339(at(0));
        assert!(
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["lastTransitionTime"] == t0)
        );
        assert!(
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["lastProbeTime"].is_null())
        );
        // Ten seconds later the readiness probe passes: only Ready and ContainersReady
        // change, and only they get the new time.
        let p = pod(vec![running("web")]);
        let (st, kept) = pod_status(&p, at(10), &kept);
        let t10 = time::rfc3339(at(10));
        for (ty, t) in [
            ("PodReadyToStartContainers", &t0),
            ("Initialized", &t0),
            ("Ready", &t10),
            ("ContainersReady", &t10),
            ("PodScheduled", &t0),
        ] {
            assert_eq!(condition(&st, ty)["lastTransitionTime"], *t, "{ty}");
        }
        assert_eq!(kept["Ready"], (true, t10.clone()));
        // Nothing changes: nothing moves.
        let (again, kept2) = pod_status(&p, at(20), &kept);
        assert_eq!(again, st);
        assert_eq!(kept2, kept);
    }

    #[test]
    fn phase_follows_the_restart_policy() {
        // Never: a failed container fails the pod.
        let st = status(&pod(vec![exited("web", false, 3, "Never")]));
        assert_eq!(st["phase"], "Failed");
        let web = &st["containerStatuses"][0];
        assert_eq!(web["state"]["terminated"]["exitCode"], 3);
        assert_eq!(web["state"]["terminated"]["reason"], "Error");
        assert_eq!(web["lastState"], json!({}), "no last state once it is over");
        for ty in ["Ready", "ContainersReady"] {
            assert_eq!(condition(&st, ty)["reason"], "PodCompleted");
            assert!(condition(&st, ty).get("message").is_none());
        }
        // OnFailure: exit 0 completes the pod; exit 1 runs it again.
        let st = status(&pod(vec![exited("web", false, 0, "OnFailure")]));
        assert_eq!(st["phase"], "Succeeded");
        assert_eq!(
            st["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        let st = status(&pod(vec![exited("web", false, 1, "OnFailure")]));
        assert_eq!(st["phase"], "Running");
        // Always: even exit 0 runs again; the pod keeps Running in a crash loop.
        let mut web = exited("web", false, 0, "Always");
        web.restart_count = 4;
        let st = status(&pod(vec![web, running("sidecar")]));
        assert_eq!(st["phase"], "Running");
        let web = &st["containerStatuses"][0];
        assert_eq!(
            web["state"],
            json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off restarting failed container web in pod p"}})
        );
        assert_eq!(web["lastState"]["terminated"]["exitCode"], 0);
        assert_eq!(
            web["lastState"]["terminated"]["finishedAt"],
            "2026-11-29T14:00:05Z"
        );
        assert_eq!(web["restartCount"], 4);
        assert_eq!(web["ready"], false);
        // One app container failed for good, another still running: Running.
        let st = status(&pod(vec![
            exited("web", false, 1, "Never"),
            running("sidecar"),
        ]));
        assert_eq!(st["phase"], "Running");
        // Both over, one failed: Failed.
        let st = status(&pod(vec![
            exited("web", false, 0, "Never"),
            exited("sidecar", false, 2, "Never"),
        ]));
        assert_eq!(st["phase"], "Failed");
    }

    #[test]
    fn a_restarted_container_shows_how_its_last_run_ended() {
        let web = ContainerView {
            last: Some(terminated(137)),
            restart_count: 1,
            id: "kubewire://0123456789ab-web-1".into(),
            ..running("web")
        };
        let st = status(&pod(vec![web]));
        let web = &st["containerStatuses"][0];
        assert_eq!(web["restartCount"], 1);
        assert_eq!(web["state"], json!({"running": {"startedAt": STARTED}}));
        assert_eq!(web["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(web["containerID"], "kubewire://0123456789ab-web-1");
    }

    #[test]
    fn init_containers_run_first() {
        // The first init container runs: the pod is Pending, not Initialized, the app
        // waits for it.
        let mut app = waiting("web");
        app.state = State::waiting("ContainerCreating", "");
        let st = status(&pod(vec![
            init(running("setup")),
            init(waiting("migrate")),
            app.clone(),
        ]));
        assert_eq!(st["phase"], "Pending");
        assert_eq!(condition(&st, "Initialized")["status"], "False");
        assert_eq!(
            condition(&st, "PodReadyToStartContainers")["status"],
            "True"
        );
        assert_eq!(st["initContainerStatuses"][0]["name"], "setup");
        assert_eq!(
            st["initContainerStatuses"][0]["ready"], false,
            "running is not done"
        );
        assert_eq!(
            st["initContainerStatuses"][1]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert_eq!(
            st["containerStatuses"][0]["state"],
            json!({"waiting": {"reason": "PodInitializing"}})
        );
        // Both completed: Initialized, init containers ready, the app runs.
        let done = |n| exited(n, true, 0, "Always");
        let st = status(&pod(vec![done("setup"), done("migrate"), running("web")]));
        assert_eq!(st["phase"], "Running");
        assert_eq!(condition(&st, "Initialized")["status"], "True");
        assert_eq!(condition(&st, "Ready")["status"], "True");
        assert_eq!(st["initContainerStatuses"][1]["ready"], true);
        assert_eq!(
            st["initContainerStatuses"][1]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(st["initContainerStatuses"][1]["lastState"], json!({}));
        // A failed init container retried (OnFailure): crash loop, still Pending.
        let st = status(&pod(vec![
            exited("setup", true, 1, "OnFailure"),
            app.clone(),
        ]));
        assert_eq!(st["phase"], "Pending");
        assert_eq!(
            st["initContainerStatuses"][0]["state"]["waiting"]["reason"],
            "CrashLoopBackOff"
        );
        // ...and not retried (Never): the pod fails.
        let st = status(&pod(vec![exited("setup", true, 1, "Never"), app]));
        assert_eq!(st["phase"], "Failed");
        assert_eq!(condition(&st, "Initialized")["status"], "False");
        assert_eq!(condition(&st, "Ready")["reason"], "PodCompleted");
    }

    #[test]
    fn native_sidecars_start_in_init_order_and_count_as_app_containers() {
        let sidecar = |c: ContainerView| ContainerView {
            init: true,
            sidecar: true,
            ..c
        };
        // A sidecar started: initialized (a plain init container would have to have
        // exited), and ready only when its readiness probe passes.
        let mut proxy = sidecar(running("proxy"));
        proxy.readiness = Some(false);
        let st = status(&pod(vec![proxy.clone(), waiting("web")]));
        assert_eq!(condition(&st, "Initialized")["status"], "True");
        assert_eq!(st["initContainerStatuses"][0]["started"], true);
        assert_eq!(st["initContainerStatuses"][0]["ready"], false);
        // The app runs and is ready, the sidecar is not: the pod is not Ready.
        let st = status(&pod(vec![proxy.clone(), running("web")]));
        assert_eq!(st["phase"], "Running");
        assert_eq!(condition(&st, "Ready")["status"], "False");
        assert_eq!(
            condition(&st, "Ready")["message"],
            "containers with unready status: [proxy]"
        );
        proxy.readiness = Some(true);
        let st = status(&pod(vec![proxy.clone(), running("web")]));
        assert_eq!(condition(&st, "Ready")["status"], "True");
        assert_eq!(st["initContainerStatuses"][0]["ready"], true);
        // A Job's pod: the app finished, the sidecar stopped after it (killed by the
        // node, exit 143). The pod succeeded.
        let mut stopped = sidecar(exited("proxy", true, 143, "Never"));
        stopped.will_start = false;
        let st = status(&pod(vec![stopped, exited("work", false, 0, "Never")]));
        assert_eq!(st["phase"], "Succeeded");
    }
}

//! Tier 4: the built-in kinds beyond the talk's, as generic tools use them in a running
//! lab: Jobs and CronJobs run by the lab's controllers (`kubectl create job`,
//! `create cronjob`, `create job --from=cronjob/...`), ReplicationControllers scaled,
//! `kubectl apply --prune -l` with kubectl's default allowlist (which names
//! PersistentVolumeClaims, PersistentVolumes, ReplicationControllers, Jobs and
//! CronJobs), one object of every served kind created, read and listed through the
//! Python client's typed API, which refuses a response without a field the upstream
//! types always write, emptyDir/configMap/secret volumes, native sidecars (init
//! containers with `restartPolicy: Always`), and `kubectl top`.

#![allow(clippy::disallowed_methods)] // runs kubectl and python

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn condition(o: &Value, t: &str) -> Option<Value> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t && c["status"] == "True")
        .cloned()
}

fn exists(lab: &RunningLab, args: &[&str]) -> bool {
    let out = e2e::cluster::kubectl(&lab.kubeconfig, args);
    out.status.success()
}

const JOBS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: parallel
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        command: ["sh", "-c", "echo done"]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: failing
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        command: ["sh", "-c", "exit 3"]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: short-lived
spec:
  ttlSecondsAfterFinished: 2
  template:
    spec:
      restartPolicy: OnFailure
      containers:
      - name: work
        image: busybox
        command: ["true"]
"#;

#[test]
fn jobs_run_to_completion_and_cronjobs_fire() {
    let lab = RunningLab::up(1);
    // kubectl's generators send protobuf.
    lab.kubectl(&[
        "create",
        "job",
        "pi",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo 3.14",
    ]);
    lab.apply(JOBS);
    assert!(
        wait_until(WAIT, || condition(
            &lab.json(&["get", "job", "pi"]),
            "Complete"
        )
        .is_some()),
        "{}",
        lab.kubectl(&["get", "job", "pi", "-o", "yaml"])
    );
    assert_eq!(lab.kubectl(&["logs", "job/pi"]), "3.14\n");
    let table = lab.kubectl(&["get", "job", "pi"]);
    assert!(
        table.contains("Complete") && table.contains("1/1"),
        "{table}"
    );
    // Three completions, two at a time.
    assert!(wait_until(WAIT, || {
        condition(&lab.json(&["get", "job", "parallel"]), "Complete").is_some()
    }));
    let parallel = lab.json(&["get", "job", "parallel"]);
    assert_eq!(parallel["status"]["succeeded"], 3);
    let pods = lab.json(&["get", "pods", "-l", "job-name=parallel"]);
    assert_eq!(pods["items"].as_array().unwrap().len(), 3);
    // Failures beyond the backoff limit fail the Job.
    assert!(wait_until(WAIT, || {
        condition(&lab.json(&["get", "job", "failing"]), "Failed").is_some()
    }));
    let failing = lab.json(&["get", "job", "failing"]);
    assert_eq!(
        condition(&failing, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(failing["status"]["failed"], 2);
    // A finished Job with a TTL is deleted.
    assert!(
        wait_until(WAIT, || !exists(&lab, &["get", "job", "short-lived"])),
        "short-lived is still there"
    );

    // A CronJob every minute fires; a Job made from it by hand runs at once.
    lab.kubectl(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=* * * * *",
        "--",
        "sh",
        "-c",
        "echo tick",
    ]);
    lab.kubectl(&["create", "job", "by-hand", "--from=cronjob/tick"]);
    assert!(wait_until(WAIT, || {
        condition(&lab.json(&["get", "job", "by-hand"]), "Complete").is_some()
    }));
    let by_hand = lab.json(&["get", "job", "by-hand"]);
    assert_eq!(
        by_hand["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert!(
        wait_until(Duration::from_secs(130), || {
            lab.json(&["get", "jobs"])["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| {
                    j["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("tick-"))
                        && condition(j, "Complete").is_some()
                })
        }),
        "the CronJob never ran a Job:\n{}",
        lab.kubectl(&["get", "cronjob", "tick", "-o", "yaml"])
    );
    let tick = lab.json(&["get", "cronjob", "tick"]);
    assert!(tick["status"]["lastScheduleTime"].is_string(), "{tick}");
    assert!(tick["status"]["lastSuccessfulTime"].is_string(), "{tick}");
}

/// kubectl's `apply --prune` default allowlist, and ReplicationControllers run.
const PRUNED: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata:
  name: rc
  labels: {set: pruned}
spec:
  replicas: 2
  template:
    metadata:
      labels: {app: rc}
    spec:
      containers:
      - name: web
        image: nginx
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  labels: {set: pruned}
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests: {storage: 1Gi}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  labels: {set: pruned}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: c
            image: busybox
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {set: pruned}
data: {a: b}
"#;

#[test]
fn replication_controllers_run_and_apply_prunes_by_label() {
    let lab = RunningLab::up(1);
    lab.apply(PRUNED);
    assert!(wait_until(WAIT, || lab.running_pods("app=rc").len() == 2));
    lab.kubectl(&["scale", "rc", "rc", "--replicas=3"]);
    assert!(wait_until(WAIT, || lab.running_pods("app=rc").len() == 3));
    let rc = lab.json(&["get", "rc", "rc"]);
    assert_eq!(rc["spec"]["selector"]["app"], "rc");
    assert!(wait_until(
        WAIT,
        || lab.json(&["get", "rc", "rc"])["status"]["readyReplicas"] == 3
    ));
    // Only the RC is left in the manifest: the rest of the set is pruned.
    let only_rc = PRUNED.split("---").next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rc.yaml");
    std::fs::write(&file, only_rc).unwrap();
    let out = lab.kubectl(&[
        "apply",
        "--prune",
        "-l",
        "set=pruned",
        "-f",
        file.to_str().unwrap(),
    ]);
    for gone in [
        "persistentvolumeclaim/data pruned",
        "cronjob.batch/nightly pruned",
        "configmap/settings pruned",
    ] {
        assert!(out.contains(gone), "{out}");
    }
    assert!(exists(&lab, &["get", "rc", "rc"]));
    assert!(!exists(&lab, &["get", "pvc", "data"]));
}

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/python-clients/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `scripts/deps.sh test` to install the Python kubernetes client",
        venv.display()
    );
    venv
}

/// One object of every kind the lab serves, through the typed API of the Python
/// client (which checks each model's required fields): created, read and listed.
const EVERY_KIND: &str = r#"
from kubernetes import client, config
config.load_kube_config()
core, apps, batch = client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api()
net, disc, coord = client.NetworkingV1Api(), client.DiscoveryV1Api(), client.CoordinationV1Api()
storage, reg, ext = client.StorageV1Api(), client.ApiregistrationV1Api(), client.ApiextensionsV1Api()
events = client.EventsV1Api()
ns = "typed"
core.create_namespace({"metadata": {"name": ns}})
labels = {"app": "typed"}
pod_spec = {"containers": [{"name": "c", "image": "busybox"}]}
template = {"metadata": {"labels": labels}, "spec": pod_spec}
job_template = {"metadata": {"labels": labels}, "spec": dict(pod_spec, restartPolicy="Never")}
selector = {"matchLabels": labels}
kinds = [
    ("Pod", core.create_namespaced_pod, core.read_namespaced_pod, core.list_namespaced_pod,
        {"spec": pod_spec}),
    ("Service", core.create_namespaced_service, core.read_namespaced_service,
        core.list_namespaced_service, {"spec": {"selector": labels, "ports": [{"port": 80}]}}),
    ("ConfigMap", core.create_namespaced_config_map, core.read_namespaced_config_map,
        core.list_namespaced_config_map, {"data": {"k": "v"}}),
    ("Secret", core.create_namespaced_secret, core.read_namespaced_secret,
        core.list_namespaced_secret, {"stringData": {"k": "v"}}),
    ("ServiceAccount", core.create_namespaced_service_account,
        core.read_namespaced_service_account, core.list_namespaced_service_account, {}),
    ("Endpoints", core.create_namespaced_endpoints, core.read_namespaced_endpoints,
        core.list_namespaced_endpoints,
        {"subsets": [{"addresses": [{"ip": "10.244.9.9"}], "ports": [{"port": 80}]}]}),
    ("Event", core.create_namespaced_event, core.read_namespaced_event,
        core.list_namespaced_event,
        {"involvedObject": {"kind": "Pod", "name": "x", "namespace": ns}, "reason": "R",
         "message": "m", "type": "Normal"}),
    ("ReplicationController", core.create_namespaced_replication_controller,
        core.read_namespaced_replication_controller,
        core.list_namespaced_replication_controller,
        {"spec": {"replicas": 0, "selector": labels, "template": template}}),
    ("PersistentVolumeClaim", core.create_namespaced_persistent_volume_claim,
        core.read_namespaced_persistent_volume_claim,
        core.list_namespaced_persistent_volume_claim,
        {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    ("Deployment", apps.create_namespaced_deployment, apps.read_namespaced_deployment,
        apps.list_namespaced_deployment,
        {"spec": {"replicas": 0, "selector": selector, "template": template}}),
    ("ReplicaSet", apps.create_namespaced_replica_set, apps.read_namespaced_replica_set,
        apps.list_namespaced_replica_set,
        {"spec": {"replicas": 0, "selector": selector, "template": template}}),
    ("StatefulSet", apps.create_namespaced_stateful_set, apps.read_namespaced_stateful_set,
        apps.list_namespaced_stateful_set,
        {"spec": {"replicas": 0, "serviceName": "s", "selector": selector, "template": template}}),
    ("DaemonSet", apps.create_namespaced_daemon_set, apps.read_namespaced_daemon_set,
        apps.list_namespaced_daemon_set,
        {"spec": {"selector": {"matchLabels": {"app": "nowhere"}},
            "template": {"metadata": {"labels": {"app": "nowhere"}},
                "spec": dict(pod_spec, nodeSelector={"none": "none"})}}}),
    ("Job", batch.create_namespaced_job, batch.read_namespaced_job, batch.list_namespaced_job,
        {"spec": {"suspend": True, "template": job_template}}),
    ("CronJob", batch.create_namespaced_cron_job, batch.read_namespaced_cron_job,
        batch.list_namespaced_cron_job,
        {"spec": {"schedule": "@yearly", "suspend": True,
            "jobTemplate": {"spec": {"template": job_template}}}}),
    ("EndpointSlice", disc.create_namespaced_endpoint_slice, disc.read_namespaced_endpoint_slice,
        disc.list_namespaced_endpoint_slice,
        {"addressType": "IPv4", "endpoints": [{"addresses": ["10.244.9.9"]}]}),
    ("Ingress", net.create_namespaced_ingress, net.read_namespaced_ingress,
        net.list_namespaced_ingress,
        {"spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}}),
    ("NetworkPolicy", net.create_namespaced_network_policy, net.read_namespaced_network_policy,
        net.list_namespaced_network_policy, {"spec": {"podSelector": {}}}),
    ("Lease", coord.create_namespaced_lease, coord.read_namespaced_lease,
        coord.list_namespaced_lease, {"spec": {"holderIdentity": "me"}}),
    ("Event (events.k8s.io)", events.create_namespaced_event, events.read_namespaced_event,
        events.list_namespaced_event,
        {"apiVersion": "events.k8s.io/v1", "kind": "Event", "eventTime": "2026-01-01T00:00:00.000000Z",
         "reportingController": "me", "reportingInstance": "me", "action": "A", "reason": "R",
         "type": "Normal", "regarding": {"kind": "Pod", "name": "x", "namespace": ns}}),
]
cluster = [
    ("PersistentVolume", core.create_persistent_volume, core.read_persistent_volume,
        core.list_persistent_volume,
        {"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/tmp/typed-pv"}}}),
    ("StorageClass", storage.create_storage_class, storage.read_storage_class,
        storage.list_storage_class, {"provisioner": "example.com/none"}),
    ("CSIDriver", storage.create_csi_driver, storage.read_csi_driver, storage.list_csi_driver,
        {"spec": {}}),
    ("VolumeAttachment", storage.create_volume_attachment, storage.read_volume_attachment,
        storage.list_volume_attachment,
        {"spec": {"attacher": "example.com/none", "nodeName": "node-1",
            "source": {"persistentVolumeName": "typed-pv"}}}),
    ("IngressClass", net.create_ingress_class, net.read_ingress_class, net.list_ingress_class,
        {"spec": {"controller": "example.com/none"}}),
    ("APIService", reg.create_api_service, reg.read_api_service, reg.list_api_service,
        {"spec": {"group": "typed.example.com", "version": "v1", "groupPriorityMinimum": 100,
            "versionPriority": 10, "service": {"name": "s", "namespace": ns}}}),
    ("CustomResourceDefinition", ext.create_custom_resource_definition,
        ext.read_custom_resource_definition, ext.list_custom_resource_definition,
        {"spec": {"group": "typed.example.com", "scope": "Namespaced",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
            "versions": [{"name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object"}}}]}}),
]
names = {"APIService": "v1.typed.example.com", "CustomResourceDefinition": "things.typed.example.com"}
for kind, create, read, lst, body in kinds:
    body = dict(body)
    body["metadata"] = {"name": "typed-" + kind.split()[0].lower(), "labels": labels}
    created = create(ns, body)
    got = read(created.metadata.name, ns)
    assert got.metadata.uid == created.metadata.uid, kind
    lst(ns)
    print("ok", kind)
for kind, create, read, lst, body in cluster:
    body = dict(body)
    body["metadata"] = {"name": names.get(kind, "typed-" + kind.lower())}
    created = create(body)
    got = read(created.metadata.name)
    assert got.metadata.uid == created.metadata.uid, kind
    lst()
    print("ok", kind)
ds = apps.read_namespaced_daemon_set("typed-daemonset", ns)
print("daemonset status", ds.status.current_number_scheduled, ds.status.number_misscheduled,
      ds.status.desired_number_scheduled, ds.status.number_ready)
"#;

#[test]
fn every_kind_reads_back_through_the_python_typed_api() {
    let lab = RunningLab::up(1);
    let out = Command::new(python())
        .arg("-c")
        .arg(EVERY_KIND)
        .env("KUBECONFIG", &lab.kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("\nok ").count() + 1, 27, "{stdout}");
    assert!(stdout.contains("daemonset status 0 0 0 0"), "{stdout}");
}

/// emptyDir shared by two containers, configMap (whole and one key by subPath) and
/// secret volumes; the mount points made on the host go with the pod.
const VOLUMES: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello, app.conf: "port=80\n"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: vols}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: shared
    emptyDir: {}
  - name: cfg
    configMap: {name: settings}
  - name: sec
    secret: {secretName: creds, defaultMode: 0400}
  containers:
  - name: writer
    image: busybox
    command: ["sh", "-c", "echo from-writer > ROOT/shared/msg; sleep 3600"]
    volumeMounts:
    - {name: shared, mountPath: ROOT/shared}
  - name: reader
    image: busybox
    command: ["sleep", "3600"]
    volumeMounts:
    - {name: shared, mountPath: ROOT/data}
    - {name: cfg, mountPath: ROOT/config}
    - {name: cfg, mountPath: ROOT/app.conf, subPath: app.conf}
    - {name: sec, mountPath: ROOT/secret}
"#;

#[test]
fn pods_mount_empty_dir_config_map_and_secret_volumes() {
    let lab = RunningLab::up(1);
    let root = format!("/kubewire-volumes-{}", std::process::id());
    lab.apply(&VOLUMES.replace("ROOT", &root));
    lab.kubectl(&["wait", "--for=condition=Ready", "pod/vols", "--timeout=90s"]);
    let read = |path: &str| {
        lab.kubectl(&[
            "exec",
            "vols",
            "-c",
            "reader",
            "--",
            "cat",
            &format!("{root}/{path}"),
        ])
    };
    assert!(wait_until(WAIT, || {
        e2e::cluster::kubectl(
            &lab.kubeconfig,
            &[
                "exec",
                "vols",
                "-c",
                "reader",
                "--",
                "test",
                "-e",
                &format!("{root}/data/msg"),
            ],
        )
        .status
        .success()
    }));
    assert_eq!(read("data/msg"), "from-writer\n");
    assert_eq!(read("config/greeting"), "hello");
    assert_eq!(read("app.conf"), "port=80\n");
    assert_eq!(read("secret/password"), "s3cret");
    let mode = lab.kubectl(&[
        "exec",
        "vols",
        "-c",
        "reader",
        "--",
        "stat",
        "-L",
        "-c",
        "%a",
        &format!("{root}/secret/password"),
    ]);
    assert_eq!(mode.trim(), "400");
    // configMap volumes are read-only.
    let out = e2e::cluster::kubectl(
        &lab.kubeconfig,
        &[
            "exec",
            "vols",
            "-c",
            "reader",
            "--",
            "touch",
            &format!("{root}/config/x"),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.kubectl(&["delete", "pod", "vols", "--timeout=60s"]);
    assert!(
        wait_until(WAIT, || !Path::new(&root).exists()),
        "{root} is left on the host"
    );
}

/// A Job whose pod has a native sidecar: the app starts only once the sidecar's
/// startup probe passed, and the pod completes although the sidecar never exits.
const SIDECAR_JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: with-sidecar}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 2
      volumes:
      - {name: shared, emptyDir: {}}
      initContainers:
      - name: proxy
        image: busybox
        restartPolicy: Always
        command: ["sh", "-c", "sleep 1; touch ROOT/up; exec sleep 3600"]
        startupProbe:
          exec: {command: ["test", "-e", "ROOT/up"]}
          periodSeconds: 1
        volumeMounts:
        - {name: shared, mountPath: ROOT}
      containers:
      - name: work
        image: busybox
        command: ["sh", "-c", "test -e ROOT/up && echo the-proxy-was-up"]
        volumeMounts:
        - {name: shared, mountPath: ROOT}
"#;

/// A pod whose app takes a second to stop: its sidecar is told to stop only after
/// the app exited, and writes down what it found (on the node's hostPath).
const SIDECAR_ORDER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ordered}
spec:
  terminationGracePeriodSeconds: 20
  volumes:
  - {name: out, hostPath: {path: /sidecar-order, type: DirectoryOrCreate}}
  initContainers:
  - name: proxy
    image: busybox
    restartPolicy: Always
    command: ["sh", "-c", "trap 'if [ -e ROOT/app-exited ]; then echo after > ROOT/proxy-stopped; else echo before > ROOT/proxy-stopped; fi; exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts:
    - {name: out, mountPath: ROOT}
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "trap 'sleep 1; touch ROOT/app-exited; exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts:
    - {name: out, mountPath: ROOT}
"#;

#[test]
fn native_sidecars_start_first_stop_last_and_let_jobs_complete() {
    let lab = RunningLab::up(1);
    let root = format!("/kubewire-sidecar-{}", std::process::id());
    lab.apply(&SIDECAR_JOB.replace("ROOT", &root));
    assert!(
        wait_until(WAIT, || condition(
            &lab.json(&["get", "job", "with-sidecar"]),
            "Complete"
        )
        .is_some()),
        "{}",
        lab.kubectl(&["get", "pods", "-o", "yaml"])
    );
    assert_eq!(
        lab.kubectl(&["logs", "job/with-sidecar", "-c", "work"]),
        "the-proxy-was-up\n"
    );
    let pods = lab.json(&["get", "pods", "-l", "job-name=with-sidecar"]);
    let pod = &pods["items"][0];
    assert_eq!(pod["status"]["phase"], "Succeeded");
    assert!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"].is_object(),
        "the sidecar was stopped: {pod}"
    );

    let order_root = format!("/kubewire-sidecar-order-{}", std::process::id());
    lab.apply(&SIDECAR_ORDER.replace("ROOT", &order_root));
    lab.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/ordered",
        "--timeout=90s",
    ]);
    let ready = lab.json(&["get", "pod", "ordered"]);
    assert_eq!(ready["status"]["initContainerStatuses"][0]["ready"], true);
    assert_eq!(ready["status"]["initContainerStatuses"][0]["started"], true);
    lab.kubectl(&["delete", "pod", "ordered", "--timeout=60s"]);
    let node_root = lab
        .kubeconfig
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("node-1/root/sidecar-order");
    assert_eq!(
        std::fs::read_to_string(node_root.join("proxy-stopped")).unwrap_or_default(),
        "after\n",
        "the sidecar was stopped before the app had exited"
    );
    lab.kubectl(&[
        "delete",
        "job",
        "with-sidecar",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(
        wait_until(WAIT, || !Path::new(&root).exists()
            && !Path::new(&order_root).exists()),
        "{root} or {order_root} is left on the host"
    );
}

/// `kubectl top` through metrics.k8s.io: the lab's pods with their memory, and nodes.
#[test]
fn kubectl_top_lists_pods_and_nodes() {
    let lab = RunningLab::up(2);
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ]);
    lab.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    // A pod appears once its node has sampled it twice (a CPU rate needs two).
    let mut table = String::new();
    assert!(
        wait_until(WAIT, || {
            let out = e2e::cluster::kubectl(&lab.kubeconfig, &["top", "pods", "-l", "app=web"]);
            table = String::from_utf8_lossy(&out.stdout).into_owned();
            table.lines().filter(|l| l.starts_with("web-")).count() == 2
        }),
        "kubectl top pods never listed the web pods: {table}"
    );
    for line in table.lines().filter(|l| l.starts_with("web-")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let mib: u64 = cols[2].trim_end_matches("Mi").parse().unwrap();
        assert!(cols[1].ends_with('m') && mib > 0, "{line}");
    }
    let containers = lab.kubectl(&["top", "pods", "-l", "app=web", "--containers"]);
    assert!(containers.contains("nginx"), "{containers}");
    let nodes = lab.kubectl(&["top", "nodes"]);
    for node in ["node-1", "node-2"] {
        assert!(nodes.contains(node), "{nodes}");
    }
    let raw: Value = serde_json::from_str(&lab.kubectl(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/nodes/node-1",
    ]))
    .unwrap();
    assert_eq!(raw["kind"], "NodeMetrics");
    assert_eq!(raw["window"], "10s");
}

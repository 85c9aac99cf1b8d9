//! The install manifests, black-box: `kubectl kustomize` of `deploy/` and of every
//! overlay gives exactly what `kubewire install --print` prints for the same choices
//! (compared as parsed objects, in order), components combine as their flags do, and
//! the embedded API server accepts `kubectl apply -k deploy/` and
//! `kubewire install --print | kubectl apply -f -` with kubectl's default validation
//! (strict server-side field validation: an unknown field is an error, not a warning).

#![allow(clippy::disallowed_methods)] // runs kubectl and kubewire

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use e2e::{apiserver_command, kubewire_bin, wait_until, workspace_root};
use serde_json::Value;

fn yaml_objects(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("running kubectl");
    yaml_objects(&ok(&format!("kubectl kustomize {}", dir.display()), out))
}

fn print(flags: &[String]) -> Vec<Value> {
    let out = Command::new(kubewire_bin())
        .args(["install", "--print"])
        .args(flags)
        .output()
        .expect("running kubewire");
    yaml_objects(&ok(&format!("kubewire install --print {flags:?}"), out))
}

fn flags(cfg: &install::Config) -> Vec<String> {
    cfg.to_args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_overlay_is_what_install_prints_for_its_choices() {
    let deploy = workspace_root().join("deploy");
    let default = print(&[]);
    assert_eq!(kustomize(&deploy), default, "deploy/");
    assert_eq!(kustomize(&deploy.join("base")), default, "deploy/base");
    let overlays = install::kustomize::overlays();
    assert!(overlays.len() >= 4);
    for o in overlays {
        let dir = deploy.join("overlays").join(o.name);
        let printed = print(&flags(&o.config));
        assert_eq!(kustomize(&dir), printed, "deploy/overlays/{}", o.name);
        assert_ne!(printed, default, "{} changes nothing", o.name);
    }
}

#[test]
fn components_combine_as_their_flags_do() {
    // An overlay of a user's own, beside the repository's deploy/ (kustomize takes
    // relative paths only).
    let target = workspace_root().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../deploy/base]\n\
         components: [../../deploy/components/vxlan, ../../deploy/components/no-proxy, ../../deploy/components/no-dns]\n\
         images: [{name: ghcr.io/kubewire/kubewire, newName: registry.example/kubewire, newTag: dev}]\n",
    )
    .unwrap();
    let printed = print(&[
        "--routing=vxlan".into(),
        "--no-proxy".into(),
        "--no-dns".into(),
        "--image=registry.example/kubewire:dev".into(),
    ]);
    assert_eq!(kustomize(dir.path()), printed);
    let ds = printed.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["agent", "--mode=vxlan", "--proxy=false"])
    );
}

/// `kubewire apiserver` on a free loopback port; killed on drop.
struct ApiServer {
    child: Child,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    fn start() -> ApiServer {
        e2e::require_root();
        let dir = tempfile::tempdir().unwrap();
        let child = apiserver_command(dir.path(), None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let mut api = ApiServer {
            child,
            kubeconfig,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(30), || api.kubeconfig.exists()),
            "the API server did not start"
        );
        assert!(api.child.try_wait().unwrap().is_none());
        api
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Applies and checks that kubectl neither failed nor warned (a field the server does
/// not know is a warning or an error, depending on the validation level).
fn applied(what: &str, out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(what, out);
    assert!(
        stderr.trim().is_empty(),
        "{what} warned:\n{stderr}\n{stdout}"
    );
    stdout
}

#[test]
fn the_api_server_accepts_the_manifests_with_default_validation() {
    let api = ApiServer::start();
    let deploy = workspace_root().join("deploy");
    let deploy = deploy.to_str().unwrap();
    let out = applied(
        "kubectl apply -k deploy/",
        api.kubectl(&["apply", "-k", deploy], None),
    );
    for object in [
        "serviceaccount/kubewire-agent created",
        "clusterrole.rbac.authorization.k8s.io/kubewire-agent created",
        "clusterrolebinding.rbac.authorization.k8s.io/kubewire-proxy created",
        "service/kube-dns created",
        "deployment.apps/kubewire-dns created",
        "poddisruptionbudget.policy/kubewire-dns created",
        "daemonset.apps/kubewire-agent created",
    ] {
        assert!(out.contains(object), "no {object:?} in:\n{out}");
    }
    // Applied again: nothing to change. (kubectl always sends a PodDisruptionBudget's
    // selector again, as against kube-apiserver: its patch strategy is `replace`, so the
    // strategic-merge patch it computes is never empty; DNS and the gateway have one.)
    let again = applied(
        "kubectl apply -k deploy/ again",
        api.kubectl(&["apply", "-k", deploy], None),
    );
    assert!(
        again.lines().all(|l| l.ends_with(" unchanged")
            || l == "poddisruptionbudget.policy/kubewire-dns configured"
            || l == "poddisruptionbudget.policy/kubewire-gateway configured"),
        "{again}"
    );
    // What install prints for other choices applies over it, and explicitly strict.
    let vxlan = ok(
        "kubewire install --print",
        Command::new(kubewire_bin())
            .args([
                "install",
                "--print",
                "--routing=vxlan",
                "--api-server=10.0.0.1:6443",
            ])
            .output()
            .unwrap(),
    );
    let out = applied(
        "kubewire install --print | kubectl apply -f -",
        api.kubectl(&["apply", "--validate=strict", "-f", "-"], Some(&vxlan)),
    );
    assert!(
        out.contains("daemonset.apps/kubewire-agent configured")
            && out.contains("configmap/kubewire-api-server created"),
        "{out}"
    );
    let ds: Value = serde_json::from_str(&ok(
        "kubectl get daemonset",
        api.kubectl(
            &[
                "-n",
                "kube-system",
                "get",
                "daemonset",
                "kubewire-agent",
                "-o",
                "json",
            ],
            None,
        ),
    ))
    .unwrap();
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["agent", "--mode=vxlan"])
    );
    // Every overlay passes the server's strict validation too.
    for o in install::kustomize::overlays() {
        let dir = format!("{deploy}/overlays/{}", o.name);
        applied(
            &format!("kubectl apply --dry-run=server -k {dir}"),
            api.kubectl(&["apply", "--dry-run=server", "-k", &dir], None),
        );
    }
    // The agent's pods get the node-critical priority from its class.
    let ds_pod = &ds["spec"]["template"]["spec"];
    assert_eq!(ds_pod["priorityClassName"], "system-node-critical");
    // A field the server does not know is refused, so the checks above mean something.
    let bad = vxlan.replace(
        "hostNetwork: true",
        "hostNetwork: true\n      hostNetwrk: true",
    );
    let out = api.kubectl(&["apply", "-f", "-"], Some(&bad));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hostNetwrk"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

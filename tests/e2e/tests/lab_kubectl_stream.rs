//! Tier 4: the streaming commands, as users and tutorials run them against the lab:
//! `kubectl exec` (with and without a terminal), `kubectl attach`, `kubectl run -it
//! --rm`, `kubectl cp` and `kubectl port-forward`, each through both protocols kubectl
//! speaks (WebSocket, its default; SPDY with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`
//! and `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), and the Python client's `stream` and
//! `portforward` (WebSocket channels, v5 and v4). Interactive sessions run kubectl on
//! a pseudo-terminal of the test's own, made its controlling terminal by `setsid -c`
//! (so it gets SIGWINCH when the test resizes it). Port-forwarded traffic goes to
//! kubectl's listener on 127.0.0.1.

#![allow(clippy::disallowed_methods)] // runs kubectl, curl and python

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

const WAIT: Duration = Duration::from_secs(60);

/// A busybox-like pod (sleeps), with an environment variable and a working directory,
/// a web Deployment behind a Service whose port differs from the pods', a pod that has
/// completed, and one no node can take.
const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: shell
    image: busybox
    workingDir: /etc
    env:
    - {name: GREETING, value: hello from the pod}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 8080
    targetPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: done
spec:
  restartPolicy: Never
  containers:
  - name: once
    image: busybox
    command: ["true"]
---
apiVersion: v1
kind: Pod
metadata:
  name: nowhere
spec:
  nodeSelector: {no-such-label: "true"}
  containers:
  - name: c
    image: busybox
"#;

/// The protocols kubectl can be told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    WebSocket,
    Spdy,
}

const PROTOCOLS: [Protocol; 2] = [Protocol::WebSocket, Protocol::Spdy];

/// kubectl against the lab, speaking `p`.
fn kubectl(lab: &RunningLab, p: Protocol) -> Command {
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", &lab.kubeconfig);
    let ws = if p == Protocol::WebSocket {
        "true"
    } else {
        "false"
    };
    c.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws)
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", ws);
    c
}

/// Runs kubectl with `args`, `stdin` as its input.
fn run(lab: &RunningLab, p: Protocol, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = kubectl(lab, p)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn setup(lab: &RunningLab) {
    lab.apply(PODS);
    lab.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=90s",
    ]);
    lab.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=web",
        "--timeout=90s",
    ]);
    assert!(
        wait_until(WAIT, || {
            lab.json(&["get", "pod", "done"])["status"]["phase"] == "Succeeded"
        }),
        "pod done did not complete"
    );
}

/// A pseudo-terminal with kubectl on it, its output collected.
struct Terminal {
    master: File,
    child: Child,
    screen: Arc<Mutex<Vec<u8>>>,
    /// Reads the terminal until its last writer is gone.
    reader: std::thread::JoinHandle<()>,
}

impl Terminal {
    /// Starts `kubectl args` on a new terminal of `cols` x `rows`, its controlling one.
    fn start(lab: &RunningLab, p: Protocol, args: &[&str], cols: u16, rows: u16) -> Terminal {
        let flags = rustix::pty::OpenptFlags::RDWR
            | rustix::pty::OpenptFlags::NOCTTY
            | rustix::pty::OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags).unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let slave: OwnedFd = rustix::pty::ioctl_tiocgptpeer(&master, flags).unwrap();
        resize(&master, cols, rows);
        let k = kubectl(lab, p);
        let mut cmd = Command::new("setsid");
        cmd.args(["-c", "-w", "kubectl"])
            .args(args)
            .envs(k.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut from = File::from(master.try_clone().unwrap());
        let s = screen.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            master: File::from(master),
            child,
            screen,
            reader,
        }
    }

    fn screen(&self) -> String {
        text(&self.screen.lock().unwrap())
    }

    /// Waits until the screen shows `what`.
    fn expect(&self, what: &str) {
        assert!(
            wait_until(WAIT, || self.screen().contains(what)),
            "the terminal never showed {what:?}:\n{}",
            self.screen()
        );
    }

    /// Types `line` every second until the screen shows `what` (a terminal's size
    /// travels on its own stream, beside what is typed).
    fn type_until(&mut self, line: &str, what: &str) {
        let mut last = std::time::Instant::now() - Duration::from_secs(1);
        assert!(
            wait_until(WAIT, || {
                if last.elapsed() >= Duration::from_secs(1) {
                    self.type_line(line);
                    last = std::time::Instant::now();
                }
                self.screen().contains(what)
            }),
            "the terminal never showed {what:?}:\n{}",
            self.screen()
        );
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\r").unwrap();
    }

    fn resize(&self, cols: u16, rows: u16) {
        resize(&self.master, cols, rows);
    }

    fn wait(mut self) -> (ExitStatus, String) {
        let mut status = None;
        assert!(
            wait_until(WAIT, || {
                status = self.child.try_wait().unwrap();
                status.is_some()
            }),
            "kubectl did not exit:\n{}",
            self.screen()
        );
        // What it wrote last: the reader ends once kubectl, the terminal's last
        // writer, is gone (a straggler holding it only makes this wait longer).
        wait_until(WAIT, || self.reader.is_finished());
        (status.unwrap(), self.screen())
    }
}

fn resize(fd: impl std::os::fd::AsFd, cols: u16, rows: u16) {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
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

/// Runs a Python script with the lab's kubeconfig; returns its stdout.
fn python_script(lab: &RunningLab, script: &str) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .env("KUBECONFIG", &lab.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Data that is not text, and larger than any frame or buffer on the way.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn exec_runs_commands_in_the_pod_with_both_protocols() {
    let lab = RunningLab::up(2);
    setup(&lab);
    let big = random_bytes(3 << 20);
    for p in PROTOCOLS {
        // stdout and stderr apart; the pod's hostname, environment and directory.
        let out = run(
            &lab,
            p,
            &[
                "exec",
                "client",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; hostname; echo $GREETING; pwd",
            ],
            b"",
        );
        assert!(out.status.success(), "{p:?}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            "out\nclient\nhello from the pod\n/etc\n",
            "{p:?}"
        );
        assert_eq!(text(&out.stderr), "err\n", "{p:?}");
        // Exit codes come back through the Status channel.
        let out = run(&lab, p, &["exec", "client", "--", "false"], b"");
        assert_eq!(out.status.code(), Some(1), "{p:?}");
        assert!(
            text(&out.stderr).contains("command terminated with exit code 1"),
            "{p:?}: {}",
            text(&out.stderr)
        );
        let out = run(
            &lab,
            p,
            &["exec", "client", "--", "sh", "-c", "exit 42"],
            b"",
        );
        assert_eq!(out.status.code(), Some(42), "{p:?}");
        // stdin, piped and ended: every byte arrives.
        let out = run(
            &lab,
            p,
            &["exec", "-i", "client", "--", "sh", "-c", "wc -c; echo end"],
            &big,
        );
        assert!(out.status.success(), "{p:?}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
            [big.len().to_string().as_str(), "end"],
            "{p:?}"
        );
        // A pod's network: its own address, and Services by name through cluster DNS.
        let out = run(
            &lab,
            p,
            &[
                "exec",
                "client",
                "--",
                "curl",
                "-s",
                "-m",
                "10",
                "http://web:8080/",
            ],
            b"",
        );
        assert!(
            text(&out.stdout).contains("Hostname: web-"),
            "{p:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        // A command that is not there: 127, with runc's words.
        let out = run(&lab, p, &["exec", "client", "--", "no-such-command"], b"");
        assert_eq!(out.status.code(), Some(127), "{p:?}");
        assert!(
            text(&out.stderr)
                .contains("exec: \"no-such-command\": executable file not found in $PATH"),
            "{p:?}: {}",
            text(&out.stderr)
        );
        // An unknown container, in kube-apiserver's words.
        let out = run(
            &lab,
            p,
            &["exec", "client", "-c", "nope", "--", "true"],
            b"",
        );
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("container nope is not valid for pod client"),
            "{p:?}: {}",
            text(&out.stderr)
        );
        // A pod no node took.
        let out = run(&lab, p, &["exec", "nowhere", "--", "true"], b"");
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("pod nowhere does not have a host assigned"),
            "{p:?}: {}",
            text(&out.stderr)
        );
        // A completed pod: kubectl refuses it itself, from the pod's phase.
        let out = run(&lab, p, &["exec", "done", "--", "true"], b"");
        assert!(
            text(&out.stderr).contains("cannot exec into a container in a completed pod"),
            "{p:?}: {}",
            text(&out.stderr)
        );

        // A terminal: the shell sees it, its size, and a resize.
        let mut t = Terminal::start(&lab, p, &["exec", "-it", "client", "--", "sh"], 111, 33);
        t.type_until("stty size; tty", "33 111");
        t.expect("/dev/pts/");
        t.resize(120, 40);
        t.type_until("stty size", "40 120");
        t.type_line("exit 5");
        let (status, screen) = t.wait();
        assert_eq!(status.code(), Some(5), "{p:?}: {screen}");
    }

    // The Python client's stream (WebSocket channels): the exit code from the Status,
    // stdin through, and a failing start as kubelet answers it for a container that
    // does not run.
    let got = python_script(
        &lab,
        r#"
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config()
v1 = client.CoreV1Api()
r = stream(v1.connect_get_namespaced_pod_exec, "client", "default",
    command=["sh", "-c", "echo out; echo err >&2; exit 3"],
    stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
r.run_forever(timeout=30)
print("exec", repr(r.read_stdout()), repr(r.read_stderr()), r.returncode)
r = stream(v1.connect_get_namespaced_pod_exec, "client", "default", command=["cat"],
    stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
r.write_stdin("typed\n")
print("cat", repr(r.readline_stdout(timeout=30)))
r.close()
try:
    stream(v1.connect_get_namespaced_pod_exec, "done", "default", command=["true"],
        stderr=True, stdin=False, stdout=True, tty=False)
    print("completed pod: no error")
except Exception as e:
    print("completed pod:", e)
"#,
    );
    assert!(got.contains("exec 'out\\n' 'err\\n' 3"), "{got}");
    assert!(got.contains("cat 'typed'"), "{got}");
    assert!(got.contains("container not found (\"once\")"), "{got}");
}

#[test]
fn run_it_attach_and_cp_with_both_protocols() {
    let lab = RunningLab::up(1);
    setup(&lab);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("data.bin"), random_bytes(1 << 20)).unwrap();
    std::fs::write(src.join("note.txt"), "a note\n").unwrap();
    for p in PROTOCOLS {
        // `run -it --rm`: a shell on a terminal, its exit code, the pod gone after.
        let name = format!("tmp-{}", if p == Protocol::Spdy { "spdy" } else { "ws" });
        let mut t = Terminal::start(
            &lab,
            p,
            &[
                "run",
                "-it",
                "--rm",
                &name,
                "--image=busybox",
                "--restart=Never",
                "--",
                "sh",
            ],
            100,
            30,
        );
        t.expect("If you don't see a command prompt");
        t.type_until("stty size", "30 100");
        t.type_line("echo $((6*7)); exit 4");
        t.expect("42");
        let (status, screen) = t.wait();
        assert_eq!(status.code(), Some(4), "{p:?}: {screen}");
        assert!(
            screen.contains(&format!("pod \"{name}\" deleted")),
            "{screen}"
        );

        // `attach`: the container's output as it happens.
        let web = lab.running_pods("app=web")[0].clone();
        let mut attach = kubectl(&lab, p)
            .args(["attach", &web.0])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let seen = Arc::new(Mutex::new(String::new()));
        let mut out = BufReader::new(attach.stdout.take().unwrap());
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 {
                s.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let marker = format!("/attached-{name}");
        assert!(
            wait_until(WAIT, || {
                let url = format!("http://{}{marker}", web.1);
                lab.kubectl(&["exec", "client", "--", "curl", "-s", "-m", "5", &url]);
                seen.lock().unwrap().contains(&marker)
            }),
            "{p:?}: attach never showed the request: {}",
            seen.lock().unwrap()
        );
        let _ = attach.kill();
        let _ = attach.wait();

        // `cp` both ways (tar through exec), byte for byte.
        let remote = format!("/tmp/kubewire-cp-{}-{name}", std::process::id());
        let to = format!("client:{remote}");
        let out = run(&lab, p, &["cp", src.to_str().unwrap(), &to], b"");
        assert!(out.status.success(), "{p:?}: {}", text(&out.stderr));
        let back = dir.path().join(format!("back-{name}"));
        let out = run(&lab, p, &["cp", &to, back.to_str().unwrap()], b"");
        assert!(out.status.success(), "{p:?}: {}", text(&out.stderr));
        for f in ["data.bin", "note.txt"] {
            assert_eq!(
                std::fs::read(src.join(f)).unwrap(),
                std::fs::read(back.join(f)).unwrap(),
                "{p:?}: {f}"
            );
        }
        lab.kubectl(&["exec", "client", "--", "rm", "-rf", &remote]);
    }
}

/// `kubectl port-forward ARGS` until dropped; the local port it chose.
struct Forward(Child, u16, Arc<Mutex<String>>);

impl Forward {
    fn start(lab: &RunningLab, p: Protocol, target: &str, remote: u16) -> Forward {
        let mut child = kubectl(lab, p)
            .args(["port-forward", target, &format!(":{remote}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "port-forward {target} ended"
            );
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let errors = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let e = errors.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            e.lock().unwrap().push_str(&s);
        });
        Forward(child, port, errors)
    }

    /// curl on the forwarded port (loopback).
    fn curl(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "10"])
            .arg(format!("http://127.0.0.1:{}{path}", self.1))
            .output()
            .unwrap();
        text(&out.stdout)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn port_forward_reaches_pods_deployments_and_services() {
    let lab = RunningLab::up(2);
    setup(&lab);
    let pods = lab.running_pods("app=web");
    for p in PROTOCOLS {
        for target in [
            format!("pod/{}", pods[0].0),
            "deployment/web".to_owned(),
            "svc/web".to_owned(),
        ] {
            // The Service's port 8080 is the pods' 80.
            let remote = if target.starts_with("svc/") { 8080 } else { 80 };
            let f = Forward::start(&lab, p, &target, remote);
            for i in 0..3 {
                let page = f.curl(&format!("/{i}"));
                assert!(
                    page.contains("Hostname: web-") && page.contains(&format!("GET /{i}")),
                    "{p:?} {target}: {page}"
                );
            }
        }
        // Nothing listens on the client pod's port 80: kubelet's error, and the
        // forward ends.
        let f = Forward::start(&lab, p, "pod/client", 80);
        assert_eq!(f.curl("/"), "");
        assert!(
            wait_until(WAIT, || f.2.lock().unwrap().contains("connection refused")),
            "{p:?}: {}",
            f.2.lock().unwrap()
        );
        assert!(
            f.2.lock()
                .unwrap()
                .contains("error forwarding port 80 to pod client"),
            "{p:?}: {}",
            f.2.lock().unwrap()
        );
    }
    // The Python client's portforward (WebSocket channels with the port prefix).
    let got = python_script(
        &lab,
        &format!(
            r#"
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config()
v1 = client.CoreV1Api()
pf = portforward(v1.connect_get_namespaced_pod_portforward, "{}", "default", ports="80")
s = pf.socket(80)
s.setblocking(True)
s.sendall(b"GET /python HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    data += d
print(data.decode())
"#,
            pods[0].0
        ),
    );
    assert!(
        got.starts_with("HTTP/1.1 200 OK") && got.contains("GET /python"),
        "{got}"
    );
}

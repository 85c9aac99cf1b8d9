//! `kubewire container-init`: the small runtime between the node and a container's
//! process, like runc's init plus conmon. It runs before any async runtime or thread
//! exists (namespace changes need a single-threaded process), then:
//!
//! 1. `run SPEC`: unshares a mount namespace (private propagation, so nothing leaks back
//!    to the host) and a UTS namespace, bind-mounts the pod's own `/etc/resolv.conf`,
//!    `/etc/hosts`, `/etc/hostname` and service-account directory, sets the hostname,
//!    enters the pod's network namespace, starts a session (the node SIGKILLs the whole
//!    process group), starts the container's process with its stdout/stderr piped (or,
//!    for `tty: true`, on a new pseudo-terminal, in a session of its own whose
//!    controlling terminal it is), records its pid next to the exit file (the node
//!    sends SIGTERM there), and writes every line to the container's log in the CRI
//!    format (`<RFC3339Nano> stdout F <line>`) until it exits; then records the exit
//!    code in the spec's exit file (so a restarted node learns it) and exits with it.
//!    Like conmon, it serves attaches meanwhile: on an abstract socket of the node's
//!    network namespace ([`crate::exec::attach_address`]) each attached client gets the
//!    live output and, for `stdin: true`, writes the container's stdin (closed after
//!    the first client with `stdinOnce`) and sets its terminal's size.
//! 2. `enter SPEC PID -- CMD...`: joins the namespaces of a running container (for
//!    `kubectl exec` and exec probes) with the container's environment and working
//!    directory, starts a session (its stdin's terminal, if it is one, becomes the
//!    controlling one), and execs CMD; a command that cannot be run exits 127 (not
//!    found) or 126 (not executable) with runc's words.
//! 3. `session -- CMD...`: the same session step alone, for a TTY container's process.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s::ErrorChain;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

use crate::Error;
pub use crate::exec::attach_address;

/// The subcommand name `main` looks for before starting anything else.
pub const SUBCOMMAND: &str = "container-init";

/// PATH for containers whose environment sets none (the usual image default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One bind mount into the container's view of the host file system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Create the target directory first (the service-account directory does not exist
    /// on the host).
    #[serde(default)]
    pub mkdir: bool,
}

/// Everything container-init needs, written by the node as JSON next to the pod's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    /// The network namespace to enter; `None` for hostNetwork pods (stay in the node's).
    pub netns: Option<PathBuf>,
    pub mounts: Vec<BindMount>,
    /// Set in a new UTS namespace; `None` keeps the node's (hostNetwork).
    pub hostname: Option<String>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    /// The container's log file (CRI format, appended).
    pub log: PathBuf,
    /// Where the exit code goes when the process ends.
    pub exit_file: PathBuf,
    /// The capabilities the process keeps (names without `CAP_`); `None`: all of them.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// `allowPrivilegeEscalation: false`: the process runs with `no_new_privs`.
    #[serde(default)]
    pub no_new_privs: bool,
    /// `runAsUser` and `runAsGroup`: the process's user and group; `None`: root.
    #[serde(default)]
    pub user: Option<(u32, u32)>,
    /// The container's `stdin`: attached clients write its stdin (else it reads
    /// /dev/null).
    #[serde(default)]
    pub stdin: bool,
    /// `stdinOnce`: stdin closes when the first attached client that used it leaves.
    #[serde(default)]
    pub stdin_once: bool,
    /// `tty`: the process runs on a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
}

/// What the exit file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: String,
}

/// Runs container-init when the process was started as `kubewire container-init ...`;
/// `None` otherwise. Call it first in `main`, before any thread or async runtime starts.
pub fn container_init_main() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(SUBCOMMAND) {
        return None;
    }
    let code = match args.get(2).map(String::as_str) {
        Some("run") if args.len() == 4 => run(Path::new(&args[3])),
        Some("enter") if args.len() > 6 && args[5] == "--" => {
            enter(Path::new(&args[3]), &args[4], &args[6..])
        }
        Some("session") if args.len() > 4 && args[3] == "--" => session(&args[4..]),
        _ => {
            eprintln!(
                "usage: kubewire container-init run SPEC | enter SPEC PID -- CMD... | session -- CMD..."
            );
            2
        }
    };
    Some(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// What failing at `op` makes of an errno, I/O or JSON error.
fn failed<E: Into<std::io::Error>>(op: impl Into<String>) -> impl FnOnce(E) -> Error {
    let op = op.into();
    move |e| Error::io(op, e.into())
}

fn read_spec(path: &Path) -> Result<InitSpec, Error> {
    let text =
        std::fs::read_to_string(path).map_err(failed(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(failed(format!("parsing {}", path.display())))
}

/// Appends CRI-format lines to the log, shared by the stdout and stderr copiers.
#[derive(Clone)]
struct Log(Arc<Mutex<Option<File>>>);

impl Log {
    fn open(path: &Path) -> Self {
        let f = OpenOptions::new().create(true).append(true).open(path).ok();
        Log(Arc::new(Mutex::new(f)))
    }

    fn line(&self, stream: &str, text: &[u8]) {
        let ts = crate::time::rfc3339_nanos(SystemTime::now());
        let mut buf = Vec::with_capacity(text.len() + 48);
        buf.extend_from_slice(format!("{ts} {stream} F ").as_bytes());
        buf.extend_from_slice(text);
        buf.push(b'\n');
        if let Ok(mut f) = self.0.lock()
            && let Some(f) = f.as_mut()
        {
            let _ = f.write_all(&buf);
        }
    }

    /// Logs `from` as `stream` and hands every chunk read to the attached clients,
    /// until it ends. A terminal's lines end in CR LF; the CR is not logged.
    fn copy(
        &self,
        stream: &'static str,
        mut from: impl Read + Send + 'static,
        hub: Arc<Hub>,
        kind: u8,
    ) -> std::thread::JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut line = Vec::new();
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                hub.broadcast(kind, &buf[..n]);
                for &b in &buf[..n] {
                    if b == b'\n' {
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        log.line(stream, &line);
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
            if !line.is_empty() {
                log.line(stream, &line);
            }
        })
    }
}

/// One attached client: its frames go out through a queue, so a slow client never
/// holds the container's output up (it is dropped once its queue is full).
struct Client {
    frames: std::sync::mpsc::SyncSender<Vec<u8>>,
}

/// The container's side of attaching.
struct Hub {
    clients: Mutex<Vec<Client>>,
    /// The threads writing each client's queue out, waited for at exit.
    writers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Where clients' input goes: the stdin pipe, or the terminal's master.
    stdin: Mutex<Option<File>>,
    /// The terminal's master, for resizes.
    master: Option<File>,
    stdin_once: bool,
}

impl Hub {
    fn broadcast(&self, kind: u8, data: &[u8]) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        if clients.is_empty() {
            return;
        }
        let f = crate::exec::encode(kind, data);
        clients.retain(|c| c.frames.try_send(f.clone()).is_ok());
    }

    /// The first client with stdin left: with `stdinOnce`, the container's input ends
    /// (a terminal gets its end-of-file character).
    fn stdin_done(&self) {
        if !self.stdin_once {
            return;
        }
        if let Ok(mut s) = self.stdin.lock() {
            if self.master.is_some()
                && let Some(f) = s.as_mut()
            {
                let _ = f.write_all(&[0x04]);
            }
            *s = None;
        }
    }

    /// The container's output has ended: each client gets what is still queued for it
    /// (the last lines a shell wrote before `exit`), waiting at most `limit` in all, so
    /// that a stuck client cannot hold the exit up.
    fn finish(&self, limit: Duration) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.clear();
        }
        let writers = self
            .writers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        let deadline = std::time::Instant::now() + limit;
        for w in writers {
            while !w.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Accepts clients until container-init exits.
    fn serve(self: Arc<Self>, listener: UnixListener) {
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let hub = self.clone();
                std::thread::spawn(move || hub.client(conn));
            }
        });
    }

    fn client(&self, conn: UnixStream) {
        let Ok(mut out) = conn.try_clone() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(256);
        let writer = std::thread::spawn(move || {
            for f in rx {
                if out.write_all(&f).is_err() {
                    break;
                }
            }
            let _ = out.shutdown(std::net::Shutdown::Both);
        });
        if let Ok(mut w) = self.writers.lock() {
            w.push(writer);
        }
        if let Ok(mut clients) = self.clients.lock() {
            clients.push(Client { frames: tx });
        }
        let mut input = conn;
        let mut used_stdin = false;
        while let Ok(Some((kind, payload))) = crate::exec::read_frame(&mut input) {
            match kind {
                crate::exec::frame::STDIN => {
                    used_stdin = true;
                    if let Ok(mut s) = self.stdin.lock()
                        && let Some(f) = s.as_mut()
                        && !payload.is_empty()
                    {
                        let _ = f.write_all(&payload);
                    }
                }
                crate::exec::frame::STDIN_CLOSE => {
                    used_stdin = false;
                    self.stdin_done();
                }
                crate::exec::frame::RESIZE if payload.len() == 4 => {
                    if let Some(m) = &self.master {
                        let w = u16::from_be_bytes([payload[0], payload[1]]);
                        let h = u16::from_be_bytes([payload[2], payload[3]]);
                        let _ = crate::pty::resize(m, w, h);
                    }
                }
                _ => {}
            }
        }
        if used_stdin {
            self.stdin_done();
        }
    }
}

fn setup(spec: &InitSpec) -> Result<(), Error> {
    let mut flags = CloneFlags::CLONE_NEWNS;
    if spec.hostname.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(failed("unshare"))?;
    // Private propagation: the pod's bind mounts must not appear on the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(failed("making / private"))?;
    // The pod's network namespace is opened now: /run may be covered below.
    let netns = match &spec.netns {
        Some(ns) => Some(File::open(ns).map_err(failed(format!("opening {}", ns.display())))?),
        None => None,
    };
    // A mount point missing under /run (the service-account directory) is made on a
    // tmpfs of the container's own, as a container runtime gives each container its own
    // /run: creating it on the host's /run would leave a trace behind every pod.
    let mut own = OwnDirs::default();
    if spec
        .mounts
        .iter()
        .any(|m| m.mkdir && !m.target.exists() && under_run(&m.target))
    {
        mount(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .map_err(failed("mounting the container's /run"))?;
        own.note(Path::new("/run"));
    }
    for m in &spec.mounts {
        if m.mkdir && !m.target.exists() {
            own.mount_point(&m.target, m.source.is_dir())?;
        }
        mount(
            Some(&m.source),
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(failed(format!(
            "bind-mounting {} on {}",
            m.source.display(),
            m.target.display()
        )))?;
        if m.read_only {
            mount(
                None::<&str>,
                &m.target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(failed(format!("making {} read-only", m.target.display())))?;
        }
    }
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).map_err(failed(format!("sethostname {h}")))?;
    }
    if let (Some(f), Some(ns)) = (&netns, &spec.netns) {
        setns(f, CloneFlags::CLONE_NEWNET).map_err(failed(format!("entering {}", ns.display())))?;
    }
    // Own session and process group: the node signals the group, never the node's.
    nix::unistd::setsid().map_err(failed("setsid"))?;
    // Last: the steps above need capabilities the container may not keep. Only the
    // bounding set shrinks here, so this process keeps its own; the program it starts
    // (as root) gets exactly what its securityContext gives.
    if let Some(keep) = &spec.capabilities {
        crate::security::restrict(keep).map_err(failed("dropping capabilities"))?;
    }
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(failed("setting no_new_privs"))?;
    }
    Ok(())
}

/// The directories of this container's mount namespace that are its own (a tmpfs it
/// mounted), by device: a mount point can be made there without touching the host.
#[derive(Default)]
struct OwnDirs(Vec<u64>);

impl OwnDirs {
    fn note(&mut self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(dir) {
            self.0.push(m.dev());
        }
    }

    /// Makes the missing mount point `target` (a directory, or a file for a file
    /// mount). The host's file system is shared and must not change, so the nearest
    /// existing directory above it is first covered by a tmpfs of this container's
    /// own that shows the same entries (each bound from the covered directory), as a
    /// container runtime makes mount points in an image's root file system.
    fn mount_point(&mut self, target: &Path, dir: bool) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        let parent = target.parent().unwrap_or(Path::new("/"));
        let existing = parent
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"))
            .canonicalize()
            .map_err(failed(format!(
                "resolving the directories above {}",
                target.display()
            )))?;
        let dev = std::fs::metadata(&existing)
            .map_err(failed(format!("reading {}", existing.display())))?
            .dev();
        if !self.0.contains(&dev) {
            if existing == Path::new("/") {
                return Err(Error::io(
                    format!(
                        "making the mount point {}: the lab's containers share the host's root, which has no {}",
                        target.display(),
                        target
                            .ancestors()
                            .filter(|a| !a.exists())
                            .last()
                            .unwrap_or(target)
                            .display()
                    ),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            shadow(&existing)?;
            self.note(&existing);
        }
        std::fs::create_dir_all(parent)
            .map_err(failed(format!("creating {}", parent.display())))?;
        let made = if dir {
            std::fs::create_dir(target)
        } else {
            File::create(target).map(drop)
        };
        made.map_err(failed(format!("creating {}", target.display())))
    }
}

/// Covers `dir` with a tmpfs that holds the same entries: directories and files bound
/// from the covered directory (reached through a descriptor opened before), symbolic
/// links copied. Only this mount namespace sees it.
fn shadow(dir: &Path) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    let covered = File::open(dir).map_err(failed(format!("opening {}", dir.display())))?;
    let mode = std::fs::metadata(dir)
        .map_err(failed(format!("reading {}", dir.display())))?
        .permissions()
        .mode();
    let entries: Vec<(std::ffi::OsString, std::fs::FileType)> = std::fs::read_dir(dir)
        .map_err(failed(format!("listing {}", dir.display())))?
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name(), e.file_type().ok()?))
        })
        .collect();
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode={:o}", mode & 0o7777).as_str()),
    )
    .map_err(failed(format!("mounting a tmpfs on {}", dir.display())))?;
    let from = PathBuf::from(format!("/proc/self/fd/{}", covered.as_raw_fd()));
    for (name, kind) in entries {
        let (source, target) = (from.join(&name), dir.join(&name));
        if kind.is_symlink() {
            let link = std::fs::read_link(&source)
                .map_err(failed(format!("reading the link {}", target.display())))?;
            std::os::unix::fs::symlink(link, &target)
                .map_err(failed(format!("linking {}", target.display())))?;
            continue;
        }
        let made = if kind.is_dir() {
            std::fs::create_dir(&target)
        } else {
            File::create(&target).map(drop)
        };
        made.map_err(failed(format!("creating {}", target.display())))?;
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(failed(format!("bind-mounting {} again", target.display())))?;
    }
    Ok(())
}

/// Whether `path` is inside /run once symlinks are followed (`/var/run` is `/run`), judged
/// by its nearest existing ancestor.
fn under_run(path: &Path) -> bool {
    path.ancestors()
        .find(|a| a.exists())
        .and_then(|a| a.canonicalize().ok())
        .is_some_and(|a| a.starts_with("/run"))
}

fn env_with_defaults(spec: &InitSpec) -> Vec<(String, String)> {
    let mut env = spec.env.clone();
    let has = |k: &str, env: &[(String, String)]| env.iter().any(|(n, _)| n == k);
    if !has("PATH", &env) {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if let Some(h) = &spec.hostname
        && !has("HOSTNAME", &env)
    {
        env.insert(0, ("HOSTNAME".into(), h.clone()));
    }
    if !has("HOME", &env) {
        env.insert(0, ("HOME".into(), "/root".into()));
    }
    env
}

/// Writes one byte to stdout, the pipe the node waits on before it calls the container
/// running, and points stdout at /dev/null: the node reads no more. By then the attach
/// socket is bound and the container's namespaces are entered, so attach and exec work
/// (`kubectl run -it` attaches the moment the pod runs).
fn tell_the_node_it_is_ready() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"1").and_then(|()| out.flush());
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Binds the attach socket (before the pod's network namespace is entered).
fn attach_listener() -> std::io::Result<UnixListener> {
    UnixListener::bind_addr(&attach_address(std::process::id())?)
}

fn run(spec_path: &Path) -> i32 {
    let spec = match read_spec(spec_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("container-init: {}", ErrorChain(&e));
            return 126;
        }
    };
    let log = Log::open(&spec.log);
    let fail = |msg: String, code: i32| {
        log.line("stderr", format!("container-init: {msg}").as_bytes());
        write_exit(&spec.exit_file, code, None);
        code
    };
    let listener = match attach_listener() {
        Ok(l) => Some(l),
        Err(e) => {
            log.line(
                "stderr",
                format!("container-init: no attach socket: {e}").as_bytes(),
            );
            None
        }
    };
    if let Err(e) = setup(&spec) {
        return fail(ErrorChain(&e).to_string(), 126);
    }
    tell_the_node_it_is_ready();
    let Some(program) = spec.argv.first() else {
        return fail("the container has no command".into(), 126);
    };
    let mut cmd = if spec.tty {
        // A TTY container's process leads a session of its own whose controlling
        // terminal is the pty (job control, ^C), which `session` sets up before exec.
        let mut c = Command::new("/proc/self/exe");
        c.arg(SUBCOMMAND).arg("session").arg("--").args(&spec.argv);
        c
    } else {
        let mut c = Command::new(program);
        c.args(&spec.argv[1..]);
        c
    };
    cmd.env_clear().envs(env_with_defaults(&spec));
    if let Some((uid, gid)) = spec.user {
        // A non-root process keeps no capabilities, as under a runtime.
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    let mut hub = Hub {
        clients: Mutex::new(Vec::new()),
        writers: Mutex::new(Vec::new()),
        stdin: Mutex::new(None),
        master: None,
        stdin_once: spec.stdin_once,
    };
    let mut master_reader = None;
    if spec.tty {
        let (master, slave) = match crate::pty::open() {
            Ok(p) => p,
            Err(e) => return fail(format!("allocating a terminal: {e}"), 126),
        };
        let std = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        match (std(&slave), std(&slave)) {
            (Ok(a), Ok(b)) => {
                cmd.stdin(a).stdout(b).stderr(Stdio::from(slave));
            }
            (Err(e), _) | (_, Err(e)) => return fail(format!("a terminal: {e}"), 126),
        }
        let clone = |m: &OwnedFd| m.try_clone().map(File::from);
        match (clone(&master), clone(&master)) {
            (Ok(a), Ok(b)) => {
                if spec.stdin {
                    hub.stdin = Mutex::new(Some(a));
                }
                hub.master = Some(b);
            }
            (Err(e), _) | (_, Err(e)) => return fail(format!("a terminal: {e}"), 126),
        }
        master_reader = Some(File::from(master));
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    // std resets the signal mask and SIGPIPE in the child, so the process starts clean.
    let spawned = cmd.spawn();
    // The terminal's slave must be held by the container's process only, so that
    // reading the master ends when it exits.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail(format!("starting {program}: {e}"), 127),
    };
    if let Some(pipe) = child.stdin.take() {
        hub.stdin = Mutex::new(Some(File::from(OwnedFd::from(pipe))));
    }
    let hub = Arc::new(hub);
    if let Some(l) = listener {
        hub.clone().serve(l);
    }
    // The node sends SIGTERM to this process only (as runtimes signal a container's
    // main process); container-init stays to log the last lines and record the exit
    // code. SIGKILL goes to the whole process group.
    let _ = std::fs::write(spec.exit_file.with_extension("pid"), child.id().to_string());
    let frame = crate::exec::frame::STDOUT;
    let out = child
        .stdout
        .take()
        .map(|o| log.copy("stdout", o, hub.clone(), frame))
        .or_else(|| master_reader.map(|m| log.copy("stdout", m, hub.clone(), frame)));
    let err = child
        .stderr
        .take()
        .map(|o| log.copy("stderr", o, hub.clone(), crate::exec::frame::STDERR));
    let status = child.wait();
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    // Returning ends the process and its threads: attached clients get their last
    // frames first.
    hub.finish(Duration::from_secs(2));
    let (code, signal) = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (1, None),
        },
        Err(_) => (1, None),
    };
    write_exit(&spec.exit_file, code, signal);
    code
}

fn write_exit(path: &Path, exit_code: i32, signal: Option<i32>) {
    let rec = ExitRecord {
        exit_code,
        signal,
        finished_at: crate::time::rfc3339(SystemTime::now()),
    };
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, serde_json::to_vec(&rec).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Leads a new session; a terminal on stdin becomes its controlling terminal.
fn new_session() {
    let _ = nix::unistd::setsid();
    let stdin = std::io::stdin();
    if crate::pty::is_tty(stdin.as_fd()) {
        let _ = crate::pty::make_controlling(stdin.as_fd());
    }
}

/// Execs `argv` (found on the environment's PATH); returns only on failure, with the
/// exit code and runc's words for it.
fn exec(argv: &[String], env: Option<&[(String, String)]>) -> (i32, String) {
    let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
    let args: Result<Vec<CString>, String> = argv.iter().map(|a| c(a)).collect();
    let args = match args {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return (126, "no command".into()),
        Err(e) => return (126, e),
    };
    let err = match env {
        Some(env) => {
            let env: Result<Vec<CString>, String> =
                env.iter().map(|(k, v)| c(&format!("{k}={v}"))).collect();
            match env {
                Ok(env) => nix::unistd::execvpe(&args[0], &args, &env).err(),
                Err(e) => return (126, e),
            }
        }
        None => nix::unistd::execvp(&args[0], &args).err(),
    };
    let prog = &argv[0];
    let why = |what: &str| {
        format!("exec failed: unable to start container process: exec: {prog:?}: {what}")
    };
    match err {
        Some(nix::errno::Errno::ENOENT) if !prog.contains('/') => {
            (127, why("executable file not found in $PATH"))
        }
        Some(nix::errno::Errno::ENOENT) => (127, why("no such file or directory")),
        Some(nix::errno::Errno::EACCES) => (126, why("permission denied")),
        Some(e) => (126, why(e.desc())),
        None => (126, why("exec returned")),
    }
}

fn session(argv: &[String]) -> i32 {
    new_session();
    let (code, msg) = exec(argv, None);
    eprintln!("{msg}");
    code
}

fn enter(spec_path: &Path, pid: &str, argv: &[String]) -> i32 {
    let result = (|| -> Result<InitSpec, Error> {
        let spec = read_spec(spec_path)?;
        // Open every namespace first: after entering the mount namespace, /proc paths
        // still work, but the order must put the mount namespace last.
        let open = |ns: &str| {
            let path = format!("/proc/{pid}/ns/{ns}");
            File::open(&path).map_err(failed(format!("opening {path}")))
        };
        let (net, uts, mnt) = (open("net")?, open("uts")?, open("mnt")?);
        setns(&net, CloneFlags::CLONE_NEWNET).map_err(failed("entering net"))?;
        setns(&uts, CloneFlags::CLONE_NEWUTS).map_err(failed("entering uts"))?;
        setns(&mnt, CloneFlags::CLONE_NEWNS).map_err(failed("entering mnt"))?;
        if let Some(dir) = &spec.workdir {
            let _ = std::env::set_current_dir(dir);
        }
        Ok(spec)
    })();
    match result {
        Ok(spec) => {
            new_session();
            let (code, msg) = exec(argv, Some(&env_with_defaults(&spec)));
            eprintln!("{msg}");
            code
        }
        Err(e) => {
            eprintln!("container-init: {}", ErrorChain(&e));
            126
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the container wrote last (a shell's output before `exit`) reaches an
    /// attached client before container-init exits: `finish` returns once it is sent.
    #[test]
    fn attached_clients_get_the_last_output_before_exit() {
        let hub = Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            writers: Mutex::new(Vec::new()),
            stdin: Mutex::new(None),
            master: None,
            stdin_once: false,
        });
        let (ours, theirs) = UnixStream::pair().unwrap();
        let h = hub.clone();
        std::thread::spawn(move || h.client(theirs));
        while hub.clients.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let chunk = vec![b'x'; 4096];
        for _ in 0..200 {
            hub.broadcast(crate::exec::frame::STDOUT, &chunk);
        }
        // Nobody reads yet: most frames are still queued when the output ends.
        let reader = std::thread::spawn(move || {
            let mut ours = ours;
            let mut got = 0;
            while let Ok(Some((_, payload))) = crate::exec::read_frame(&mut ours) {
                got += payload.len();
            }
            got
        });
        hub.finish(Duration::from_secs(10));
        assert_eq!(reader.join().unwrap(), 200 * 4096);
    }
}

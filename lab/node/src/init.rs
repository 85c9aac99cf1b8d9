//! `kubewire container-init`: the small runtime between the node and a container's
//! process, like runc's init plus conmon. It runs before any async runtime or thread
//! exists (namespace changes need a single-threaded process), then:
//!
//! 1. `run SPEC`: unshares a mount namespace (private propagation, so nothing leaks back
//!    to the host) and a UTS namespace, bind-mounts the pod's own `/etc/resolv.conf`,
//!    `/etc/hosts`, `/etc/hostname` and service-account directory, sets the hostname,
//!    enters the pod's network namespace, starts a session (the node SIGKILLs the whole
//!    process group), starts the container's process with its stdout/stderr piped,
//!    records its pid next to the exit file (the node sends SIGTERM there), and
//!    writes every line to the container's log in the CRI format
//!    (`<RFC3339Nano> stdout F <line>`) until it exits; then records the exit code in
//!    the spec's exit file (so a restarted node learns it) and exits with it.
//! 2. `enter SPEC PID -- CMD...`: joins the namespaces of a running container (for exec
//!    probes and `lab exec`) with the container's environment, and execs CMD.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use k8s::ErrorChain;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

use crate::Error;

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
        _ => {
            eprintln!("usage: kubewire container-init run SPEC | enter SPEC PID -- CMD...");
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

    fn copy(
        &self,
        stream: &'static str,
        from: impl Read + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        log.line(stream, &line);
                    }
                }
            }
        })
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
    if let Err(e) = setup(&spec) {
        return fail(ErrorChain(&e).to_string(), 126);
    }
    let Some(program) = spec.argv.first() else {
        return fail("the container has no command".into(), 126);
    };
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(env_with_defaults(&spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    // std resets the signal mask and SIGPIPE in the child, so the process starts clean.
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("starting {program}: {e}"), 127),
    };
    // The node sends SIGTERM to this process only (as runtimes signal a container's
    // main process); container-init stays to log the last lines and record the exit
    // code. SIGKILL goes to the whole process group.
    let _ = std::fs::write(spec.exit_file.with_extension("pid"), child.id().to_string());
    let out = child.stdout.take().map(|o| log.copy("stdout", o));
    let err = child.stderr.take().map(|o| log.copy("stderr", o));
    let status = child.wait();
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
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

fn enter(spec_path: &Path, pid: &str, argv: &[String]) -> i32 {
    let result = (|| -> Result<std::convert::Infallible, Error> {
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
        let c = |s: &str| CString::new(s).map_err(failed(format!("{s:?}")));
        let args: Vec<CString> = argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
        let env: Vec<CString> = env_with_defaults(&spec)
            .iter()
            .map(|(k, v)| c(&format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        nix::unistd::execvpe(&args[0], &args, &env).map_err(failed(format!("exec {}", argv[0])))
    })();
    match result {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("container-init: {}", ErrorChain(&e));
            126
        }
    }
}

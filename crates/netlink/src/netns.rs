//! Named network namespaces, compatible with `ip netns`.
//!
//! A named namespace is a bind mount of a namespace file onto `/run/netns/NAME`, exactly
//! as iproute2 makes it, so `ip netns exec NAME ...` and kubewire see the same namespaces.
//! Entering a namespace is done on a dedicated thread ([`run_in`]): `setns` changes only
//! the calling thread, and that thread ends when the work is done, so no other thread of
//! the process ever finds itself in a lab namespace by accident.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
pub const RUN_DIR: &str = "/run/netns";

/// The longest name we accept; keeps derived names readable and well under NAME_MAX.
pub const MAX_NAME_LEN: usize = 64;

/// Path of the namespace file for `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of all named namespaces, sorted.
pub fn list() -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(Error::sys(format!("reading {RUN_DIR}"), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::sys(format!("reading {RUN_DIR}"), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name == "." || name == ".." {
        "must not be . or .."
    } else if name.contains('/') {
        "must not contain '/'"
    } else if name.len() > MAX_NAME_LEN {
        "must be at most 64 characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidNetnsName {
        name: name.to_owned(),
        reason,
    })
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that namespace mounts
/// made later propagate into mount namespaces created after this (pods' namespaces).
fn ensure_run_dir() -> Result<()> {
    fs::create_dir_all(RUN_DIR).map_err(|e| Error::sys(format!("creating {RUN_DIR}"), e))?;
    let make_shared = || {
        mount(
            None::<&str>,
            RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet. Bind it onto itself, then share it.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(RUN_DIR),
                RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::sys(format!("bind-mounting {RUN_DIR} onto itself"), e))?;
            make_shared().map_err(|e| Error::sys(format!("making {RUN_DIR} shared"), e))
        }
        Err(e) => Err(Error::sys(format!("making {RUN_DIR} shared"), e)),
    }
}

/// Creates a new, empty network namespace named `name` (like `ip netns add`).
///
/// Fails with [`Error::NetnsExists`] if the name is taken, so two callers can never end
/// up sharing a namespace they each think is theirs.
pub fn create(name: &str) -> Result<()> {
    validate_name(name)?;
    ensure_run_dir()?;
    let target = path(name);
    // create_new makes the name the lock: exactly one creator wins.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&target)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::NetnsExists(name.to_owned())
            } else {
                Error::sys(format!("creating {}", target.display()), e)
            }
        })?;
    let mount_target = target.clone();
    // The new namespace is made by a thread that ends right after pinning it with the
    // bind mount; nothing else ever runs in it by accident.
    let made = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::sys("unshare(CLONE_NEWNET)", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &mount_target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            Error::sys(
                format!("bind-mounting namespace onto {}", mount_target.display()),
                e,
            )
        })
    })
    .join()
    .unwrap_or_else(|_| Err(Error::sys("namespace thread", io::Error::other("panicked"))));
    if made.is_err() {
        let _ = fs::remove_file(&target);
    }
    made?;
    // Loopback is down in a new namespace; every user of ours wants it up.
    run_in(name, set_loopback_up)??;
    Ok(())
}

fn set_loopback_up() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::sys("tokio runtime", e))?;
    rt.block_on(async {
        let rtnl = crate::Rtnl::connect_here()?;
        let lo = rtnl.link_index("lo").await?;
        rtnl.set_up(lo).await
    })
}

/// Deletes a named namespace (like `ip netns delete`). The namespace itself, with every
/// link inside it, goes away once no process is left in it. Deleting a namespace that
/// does not exist is not an error: teardown must be repeatable.
pub fn delete(name: &str) -> Result<()> {
    validate_name(name)?;
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmounting {}", target.display()), e)),
    }
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::sys(format!("removing {}", target.display()), e)),
    }
}

/// Opens the namespace file, for `setns` or for moving links into the namespace.
pub fn open(name: &str) -> Result<File> {
    validate_name(name)?;
    File::open(path(name)).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NetnsNotFound(name.to_owned())
        } else {
            Error::sys(format!("opening namespace {name}"), e)
        }
    })
}

/// Runs `work` on a new thread inside the namespace whose file is at `path` (a named
/// namespace under /run/netns, or `/proc/PID/ns/net` as container runtimes pass it).
pub fn run_in_path<T, F>(path: &Path, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NetnsNotFound(path.display().to_string())
        } else {
            Error::sys(format!("opening namespace {}", path.display()), e)
        }
    })?;
    run_in_file(file, path.display().to_string(), work)
}

/// Runs `work` on a new thread inside the namespace `name` and returns its result.
///
/// Processes spawned from `work` start in that namespace too: a child inherits the
/// network namespace of the thread that forks it.
pub fn run_in<T, F>(name: &str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = open(name)?;
    run_in_file(file, name.to_owned(), work)
}

fn run_in_file<T, F>(file: File, name: String, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::sys(format!("entering namespace {name}"), e))?;
            Ok(work())
        })
        .map_err(|e| Error::sys("spawning namespace thread", e))?
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

//! `kubewire install-cni`: what the agent DaemonSet's init container runs, as Cilium's
//! and Calico's install steps do: it copies this binary onto the node as the
//! `kubewire-cni` plugin, into the directory where the container runtime looks for
//! plugins. A copy, not a link: the container's file system is not the node's. The
//! agent writes the CNI configuration itself, once the node has its pod ranges.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::PLUGIN_NAME;

/// `kubewire install-cni` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct InstallArgs {
    /// The node's CNI plugin directory, as the container sees it (a hostPath volume).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
}

impl InstallArgs {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<OsString> {
        vec!["--cni-bin-dir".into(), self.cni_bin_dir.clone().into()]
    }
}

/// Installing the plugin failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}")]
pub struct InstallError {
    /// What was being done, naming the file.
    op: String,
    #[source]
    cause: std::io::Error,
}

/// Copies this binary to `dir/kubewire-cni` and returns that path.
pub fn install(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(|cause| InstallError {
        op: "finding this binary".into(),
        cause,
    })?;
    install_from(&exe, &args.cni_bin_dir)
}

/// Installs `binary` as `dir/kubewire-cni`, in place of whatever was there (an older
/// version): made under a temporary name in `dir`, a hard link to `binary` (a copy, made
/// executable and synced, when `dir` is on another file system, as a container's
/// hostPath is), then renamed over the old plugin. A runtime running the plugin
/// meanwhile gets the old binary or the new one, never a half-written file (nor
/// ETXTBSY, which executing a file open for writing gives), and the plugin stays whole
/// when `binary` is replaced or removed by an upgrade. A plugin that already is this
/// binary, or a copy of it, is left alone. Cilium's and Calico's installers do the same
/// (copy, rename).
pub fn install_from(binary: &Path, dir: &Path) -> Result<PathBuf, InstallError> {
    use std::os::unix::fs::MetadataExt;
    let target = dir.join(PLUGIN_NAME);
    let at = |op: String| move |cause| InstallError { op, cause };
    let source = std::fs::metadata(binary).map_err(at(format!("reading {}", binary.display())))?;
    std::fs::create_dir_all(dir).map_err(at(format!("creating {}", dir.display())))?;
    // Installers queue on a lock on the directory itself (the kernel drops it when one is
    // killed), so whatever temporary file is found under the lock was left by a killed
    // installer and goes, and the directory keeps no lock file of ours.
    let lock = std::fs::File::open(dir).map_err(at(format!("opening {}", dir.display())))?;
    lock.lock()
        .map_err(at(format!("locking {}", dir.display())))?;
    remove_leftovers(dir);
    if let Ok(old) = std::fs::symlink_metadata(&target)
        && old.is_file()
        && ((old.dev(), old.ino()) == (source.dev(), source.ino()) || same_content(binary, &target))
    {
        return Ok(target);
    }
    let tmp = dir.join(format!(".{PLUGIN_NAME}.{}.tmp", std::process::id()));
    if std::fs::hard_link(binary, &tmp).is_err() {
        let copy = || -> std::io::Result<()> {
            std::fs::copy(binary, &tmp)?;
            let file = std::fs::OpenOptions::new().write(true).open(&tmp)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
            (&file).flush()?;
            file.sync_all()
        };
        copy().map_err(|cause| {
            let _ = std::fs::remove_file(&tmp);
            InstallError {
                op: format!("copying {} to {}", binary.display(), tmp.display()),
                cause,
            }
        })?;
    }
    std::fs::rename(&tmp, &target).map_err(|cause| {
        let _ = std::fs::remove_file(&tmp);
        InstallError {
            op: format!("installing {}", target.display()),
            cause,
        }
    })?;
    Ok(target)
}

/// Removes the temporary files of installers killed between making and renaming one.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{PLUGIN_NAME}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether the files `a` and `b` hold the same bytes.
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (Ok(ma), Ok(mb)) = (fa.metadata(), fb.metadata()) else {
        return false;
    };
    if !mb.is_file() || ma.len() != mb.len() {
        return false;
    }
    let (mut ra, mut rb) = (
        std::io::BufReader::with_capacity(1 << 16, fa),
        std::io::BufReader::with_capacity(1 << 16, fb),
    );
    let (mut ba, mut bb) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    loop {
        let n = match ra.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: InstallArgs,
    }

    #[test]
    fn flags_round_trip() {
        let defaults = Cli::parse_from(["x"]).args;
        assert_eq!(defaults.cni_bin_dir, Path::new("/opt/cni/bin"));
        let other = InstallArgs {
            cni_bin_dir: "/host/opt/cni/bin".into(),
        };
        for args in [defaults, other] {
            let argv = std::iter::once(OsString::from("x")).chain(args.to_args());
            assert_eq!(Cli::parse_from(argv).args, args);
        }
    }

    #[test]
    fn copies_an_executable_plugin_over_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("kubewire");
        std::fs::write(&bin, b"new binary").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plugins = dir.path().join("opt/cni/bin");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::write(plugins.join(PLUGIN_NAME), b"old").unwrap();
        let installed = install_from(&bin, &plugins).unwrap();
        assert_eq!(installed, plugins.join(PLUGIN_NAME));
        assert_eq!(std::fs::read(&installed).unwrap(), b"new binary");
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Only the plugin is left: no temporary file.
        let names: Vec<_> = std::fs::read_dir(&plugins)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [PLUGIN_NAME]);
        // What an installer killed before its rename left goes at the next install, even
        // one that finds the plugin up to date.
        let leftover = plugins.join(format!(".{PLUGIN_NAME}.4242.tmp"));
        std::fs::write(&leftover, b"half").unwrap();
        install_from(&bin, &plugins).unwrap();
        assert!(!leftover.exists());
        assert_eq!(std::fs::read(&installed).unwrap(), b"new binary");
        let missing = install_from(&dir.path().join("nope"), &plugins).unwrap_err();
        assert!(missing.to_string().starts_with("reading "), "{missing:?}");
    }
}

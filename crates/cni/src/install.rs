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

/// Copies `binary` to `dir/kubewire-cni`: to a temporary name in `dir` first, made
/// executable and synced, then renamed over the old plugin, so that a runtime that runs
/// the plugin meanwhile runs the old or the new one whole (and a plugin still running
/// keeps its own file).
pub fn install_from(binary: &Path, dir: &Path) -> Result<PathBuf, InstallError> {
    let target = dir.join(PLUGIN_NAME);
    let tmp = dir.join(format!(".{PLUGIN_NAME}.tmp"));
    let at = |op: String| move |cause| InstallError { op, cause };
    std::fs::create_dir_all(dir).map_err(at(format!("creating {}", dir.display())))?;
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(binary, &tmp).map_err(at(format!(
        "copying {} to {}",
        binary.display(),
        tmp.display()
    )))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .map_err(at(format!("opening {}", tmp.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(at(format!("making {} executable", tmp.display())))?;
    (&file)
        .flush()
        .and_then(|()| file.sync_all())
        .map_err(at(format!("syncing {}", tmp.display())))?;
    std::fs::rename(&tmp, &target).map_err(at(format!("installing {}", target.display())))?;
    Ok(target)
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
        let missing = install_from(&dir.path().join("nope"), &plugins).unwrap_err();
        assert!(missing.to_string().starts_with("copying "), "{missing:?}");
    }
}

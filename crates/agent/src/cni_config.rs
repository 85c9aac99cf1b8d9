//! The CNI configuration the agent keeps in the node's CNI config directory, as
//! Cilium's agent does: the runtime reads it for every pod, so it must always say the
//! node's current pod CIDRs, and it only appears once the node has them.

use std::path::{Path, PathBuf};

use cni::spec::{ConfList, NetConf, RoutingMode};
use ipnet::IpNet;

use crate::Error;

/// The file name: runtimes take the first file in lexical order.
pub const FILE_NAME: &str = "10-kubewire.conflist";
/// The network's name in the config, under which the plugin keeps its IPAM state.
pub const NETWORK: &str = "kubewire";

/// The conflist for this node, in the plugin's own configuration type: what the agent
/// writes is what the plugin parses.
pub fn conflist(
    pod_cidrs: &[IpNet],
    mode: RoutingMode,
    mtu: u32,
    data_dir: &Path,
    policy_socket: Option<&Path>,
) -> ConfList {
    let (cni_version, name) = ("1.1.0", NETWORK);
    ConfList {
        cni_version: cni_version.into(),
        name: name.into(),
        plugins: vec![NetConf {
            // As the runtime gives them to the plugin from the list.
            cni_version: cni_version.into(),
            name: name.into(),
            plugin_type: cni::PLUGIN_NAME.into(),
            capabilities: [("portMappings".to_owned(), true)].into(),
            mtu: Some(mtu),
            mode,
            pod_cidrs: pod_cidrs.to_vec(),
            data_dir: Some(data_dir.to_owned()),
            policy_socket: policy_socket.map(Path::to_owned),
            ..NetConf::default()
        }],
    }
}

/// Writes `content` to `dir/FILE_NAME` if it differs, atomically (write, rename): a
/// runtime never reads half a file. Returns whether it changed.
pub fn write_if_changed(dir: &Path, content: &str) -> Result<bool, Error> {
    let path = dir.join(FILE_NAME);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let io = |op: String| move |cause| Error::Io { op, cause };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp: PathBuf = dir.join(format!(".{FILE_NAME}.tmp"));
    std::fs::write(&tmp, content).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))?;
    Ok(true)
}

/// Installs this binary as `dir/kubewire-cni`, where runtimes find the plugin, as
/// `kubewire install-cni` does ([`cni::install::install_from`]: a hard link or a copy,
/// renamed over the old plugin).
pub fn install_plugin(dir: &Path) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(io("finding own binary".into()))?;
    install_plugin_from(&exe, dir)
}

/// [`install_plugin`] of the binary `exe`.
pub fn install_plugin_from(exe: &Path, dir: &Path) -> Result<(), Error> {
    cni::install::install_from(exe, dir)
        .map(drop)
        .map_err(Error::InstallPlugin)
}

/// The plugin's file name in the runtime's plugin directory.
pub const PLUGIN_FILE: &str = cni::PLUGIN_NAME;

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |cause| Error::Io { op, cause }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_plugin_reads_what_the_agent_writes() {
        let cidrs = [
            "10.244.1.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ];
        let list = conflist(
            &cidrs,
            RoutingMode::Vxlan,
            1500,
            Path::new("/var/lib/cni/kubewire"),
            Some(Path::new("/run/kubewire/policy.sock")),
        );
        let text = list.to_json();
        // The runtime's view: each plugin gets the list's version and name.
        let read = ConfList::parse(text.as_bytes()).unwrap();
        assert_eq!(read, list);
        let plugin = &read.plugins[0];
        assert_eq!(plugin.pod_mtu(), 1450);
        assert_eq!(plugin.pod_cidrs, cidrs);
        assert_eq!(plugin.cni_version, "1.1.0");
        assert_eq!(plugin.name, "kubewire");
        // What libcni sees in the file.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["plugins"][0]["capabilities"],
            json!({"portMappings": true})
        );
        assert!(v["plugins"][0].get("name").is_none());
        assert_eq!(v["plugins"][0]["type"], "kubewire-cni");
        assert_eq!(v["plugins"][0]["policySocket"], "/run/kubewire/policy.sock");
        assert_eq!(
            v["plugins"][0]["podCIDRs"],
            json!(["10.244.1.0/24", "fd00::/64"])
        );
        assert_eq!(v["plugins"][0]["mode"], "vxlan");
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn the_plugin_is_installed_whole_and_replaced_by_rename() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let src = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let (v1, v2) = (src.path().join("v1"), src.path().join("v2"));
        std::fs::write(&v1, b"#!/bin/sh\necho one\n").unwrap();
        std::fs::write(&v2, b"#!/bin/sh\necho two\n").unwrap();
        for v in [&v1, &v2] {
            std::fs::set_permissions(v, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let installed = bin.path().join(PLUGIN_FILE);
        // An old plugin, as a symlink (what earlier agents made).
        std::os::unix::fs::symlink(&v1, &installed).unwrap();
        install_plugin_from(&v1, bin.path()).unwrap();
        let first = std::fs::symlink_metadata(&installed).unwrap();
        assert!(first.is_file(), "a file, not a link to the agent's binary");
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&v1).unwrap()
        );
        // Again: nothing to do, the same file stays.
        install_plugin_from(&v1, bin.path()).unwrap();
        assert_eq!(std::fs::metadata(&installed).unwrap().ino(), first.ino());
        // An upgrade: a new file takes the name; whoever had the old one open keeps it.
        let old = std::fs::File::open(&installed).unwrap();
        install_plugin_from(&v2, bin.path()).unwrap();
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&v2).unwrap()
        );
        assert_ne!(std::fs::metadata(&installed).unwrap().ino(), first.ino());
        assert_eq!(old.metadata().unwrap().ino(), first.ino());
        // The agent's own file goes (replaced by the upgrade): the plugin is whole.
        std::fs::remove_file(&v2).unwrap();
        assert!(std::fs::read(&installed).unwrap().ends_with(b"two\n"));
        // Nothing left behind under a temporary name.
        let names: Vec<_> = std::fs::read_dir(bin.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [PLUGIN_FILE]);
    }

    #[test]
    fn writes_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_if_changed(dir.path(), "a").unwrap());
        assert!(!write_if_changed(dir.path(), "a").unwrap());
        assert!(write_if_changed(dir.path(), "b").unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "b"
        );
    }
}

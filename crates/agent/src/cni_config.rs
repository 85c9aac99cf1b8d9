//! The CNI configuration the agent keeps in the node's CNI config directory, as
//! Cilium's agent does: the runtime reads it for every pod, so it must always say the
//! node's current pod CIDRs, and it only appears once the node has them.

use std::path::{Path, PathBuf};

use cni::spec::{ConfList, NetConf, RoutingMode};
use ipnet::IpNet;

use crate::Error;

/// The file name: runtimes take the first file in lexical order.
pub const FILE_NAME: &str = "10-kubewire.conflist";

/// The conflist for this node, in the plugin's own configuration type: what the agent
/// writes is what the plugin parses.
pub fn conflist(pod_cidrs: &[IpNet], mode: RoutingMode, mtu: u32, data_dir: &Path) -> ConfList {
    let (cni_version, name) = ("1.1.0", "kubewire");
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

/// Makes `dir/kubewire-cni` a link to this binary, so runtimes find the plugin.
pub fn install_plugin(dir: &Path) -> Result<(), Error> {
    let io = |op: String| move |cause| Error::Io { op, cause };
    let exe = std::env::current_exe().map_err(io("finding own binary".into()))?;
    let link = dir.join("kubewire-cni");
    if std::fs::read_link(&link).is_ok_and(|target| target == exe) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp = dir.join(".kubewire-cni.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&exe, &tmp).map_err(io(format!("linking {}", tmp.display())))?;
    std::fs::rename(&tmp, &link).map_err(io(format!("installing {}", link.display())))
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
        assert_eq!(
            v["plugins"][0]["podCIDRs"],
            json!(["10.244.1.0/24", "fd00::/64"])
        );
        assert_eq!(v["plugins"][0]["mode"], "vxlan");
        assert_eq!(v["cniVersion"], "1.1.0");
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

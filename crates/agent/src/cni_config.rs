//! The CNI configuration the agent keeps in the node's CNI config directory, as
//! Cilium's agent does: the runtime reads it for every pod, so it must always say the
//! node's current pod CIDRs, and it only appears once the node has them.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

use crate::Error;
use crate::plan::Mode;

/// The file name: runtimes take the first file in lexical order.
pub const FILE_NAME: &str = "10-kubewire.conflist";

/// The conflist for this node.
pub fn render(pod_cidrs: &[IpNet], mode: Mode, mtu: u32, data_dir: &Path) -> String {
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "kubewire",
        "plugins": [{
            "type": "kubewire-cni",
            "capabilities": {"portMappings": true},
            "mtu": mtu,
            "mode": mode.as_str(),
            "podCIDRs": pod_cidrs,
            "dataDir": data_dir,
        }]
    });
    serde_json::to_string_pretty(&conf).expect("config serializes") + "\n"
}

/// Writes `content` to `dir/FILE_NAME` if it differs, atomically (write, rename): a
/// runtime never reads half a file. Returns whether it changed.
pub fn write_if_changed(dir: &Path, content: &str) -> Result<bool, Error> {
    let path = dir.join(FILE_NAME);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let io = |op: String| move |e| Error::Io { op, cause: e };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp: PathBuf = dir.join(format!(".{FILE_NAME}.tmp"));
    std::fs::write(&tmp, content).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))?;
    Ok(true)
}

/// Makes `dir/kubewire-cni` a link to this binary, so runtimes find the plugin.
pub fn install_plugin(dir: &Path) -> Result<(), Error> {
    let io = |op: String| move |e| Error::Io { op, cause: e };
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
    use super::*;

    #[test]
    fn conflist_carries_cidrs_mode_and_mtu() {
        let text = render(
            &[
                "10.244.1.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            Mode::Vxlan,
            1500,
            Path::new("/var/lib/cni/kubewire"),
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
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

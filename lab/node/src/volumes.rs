//! `hostPath` volumes: a container's mounts of them become bind mounts of the node's own
//! files, under `--host-path-root` (the lab keeps each node's files in a directory of
//! its own; a real node's root is `/`), checked and made as kubelet does for the
//! volume's `type`. Other volume types are not mounted yet (docs/node.md).

use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, HostPathVolumeSource, Pod};

use crate::init::BindMount;

/// The bind mounts of `container`'s hostPath volumes, in the order of its
/// `volumeMounts`; an error (kubelet's `MountVolume.SetUp failed` words) when a path is
/// not what its `type` requires.
pub(crate) fn host_path_mounts(
    pod: &Pod,
    container: &Container,
    root: &Path,
) -> Result<Vec<BindMount>, String> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(host_path) = volumes
            .iter()
            .find(|v| v.name == m.name)
            .and_then(|v| v.host_path.as_ref())
        else {
            continue;
        };
        let failed =
            |why: String| format!("MountVolume.SetUp failed for volume {:?} : {why}", m.name);
        let mut source = prepare(root, host_path).map_err(failed)?;
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            source = source.join(relative(sub).map_err(failed)?);
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .map_err(|e| failed(format!("creating subPath {}: {e}", source.display())))?;
            }
        }
        out.push(BindMount {
            source,
            target: m.mount_path.clone().into(),
            read_only: m.read_only.unwrap_or(false),
            mkdir: true,
        });
    }
    Ok(out)
}

/// `path` without its leading `/`, refused if it climbs out (`..`): the API server
/// refuses such paths too.
fn relative(path: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{path:?} must not contain '..'"));
            }
        }
    }
    Ok(out)
}

/// The node's file for `host_path`, made or checked by its `type` (kube's
/// `HostPathType`).
fn prepare(root: &Path, host_path: &HostPathVolumeSource) -> Result<PathBuf, String> {
    let path = root.join(relative(&host_path.path)?);
    let shown = &host_path.path;
    let meta = std::fs::metadata(&path).ok();
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "hostPath type check failed: {shown} is not a {what}"
            ))
        }
    };
    match host_path.type_.as_deref().unwrap_or("") {
        // No check; a missing path is made a directory, as container runtimes do.
        "" | "DirectoryOrCreate" if meta.is_none() => std::fs::create_dir_all(&path)
            .map_err(|e| format!("creating {shown} on the node: {e}"))?,
        "DirectoryOrCreate" => check(meta.as_ref().is_some_and(|m| m.is_dir()), "directory")?,
        "Directory" => check(meta.as_ref().is_some_and(|m| m.is_dir()), "directory")?,
        "FileOrCreate" if meta.is_none() => {
            std::fs::File::create(&path)
                .map_err(|e| format!("creating {shown} on the node: {e}"))?;
        }
        "FileOrCreate" | "File" => check(meta.as_ref().is_some_and(|m| m.is_file()), "file")?,
        "Socket" => check(
            meta.as_ref().is_some_and(|m| m.file_type().is_socket()),
            "socket file",
        )?,
        "CharDevice" => check(
            meta.as_ref()
                .is_some_and(|m| m.file_type().is_char_device()),
            "character device",
        )?,
        "BlockDevice" => check(
            meta.as_ref()
                .is_some_and(|m| m.file_type().is_block_device()),
            "block device",
        )?,
        "" => {}
        other => return Err(format!("hostPath type {other:?} is not supported")),
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod_and_container(
        volumes: serde_json::Value,
        mounts: serde_json::Value,
    ) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"volumes": volumes, "containers": [{"name": "c", "volumeMounts": mounts}]},
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, c)
    }

    #[test]
    fn host_paths_map_under_the_node_root_and_follow_their_type() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let (pod, c) = pod_and_container(
            json!([
                {"name": "conf", "hostPath": {"path": "/etc/cni/net.d", "type": "DirectoryOrCreate"}},
                {"name": "bin", "hostPath": {"path": "/opt/cni/bin"}},
                {"name": "lock", "hostPath": {"path": "/run/x.lock", "type": "FileOrCreate"}},
                {"name": "scratch", "emptyDir": {}},
            ]),
            json!([
                {"name": "conf", "mountPath": "/etc/cni/net.d"},
                {"name": "bin", "mountPath": "/host/bin", "readOnly": true, "subPath": "sub"},
                {"name": "scratch", "mountPath": "/scratch"},
            ]),
        );
        std::fs::create_dir_all(r.join("run")).unwrap();
        let mounts = host_path_mounts(&pod, &c, r).unwrap();
        assert_eq!(mounts.len(), 2, "{mounts:?}");
        assert_eq!(mounts[0].source, r.join("etc/cni/net.d"));
        assert_eq!(mounts[0].target, Path::new("/etc/cni/net.d"));
        assert!(r.join("etc/cni/net.d").is_dir());
        assert!(!mounts[0].read_only);
        assert_eq!(mounts[1].source, r.join("opt/cni/bin/sub"));
        assert!(mounts[1].read_only && r.join("opt/cni/bin/sub").is_dir());

        // Types that must find what they name.
        let (pod, c) = pod_and_container(
            json!([{"name": "v", "hostPath": {"path": "/etc/cni/net.d", "type": "File"}}]),
            json!([{"name": "v", "mountPath": "/x"}]),
        );
        assert_eq!(
            host_path_mounts(&pod, &c, r).unwrap_err(),
            "MountVolume.SetUp failed for volume \"v\" : hostPath type check failed: /etc/cni/net.d is not a file"
        );
        let (pod, c) = pod_and_container(
            json!([{"name": "v", "hostPath": {"path": "/missing", "type": "Directory"}}]),
            json!([{"name": "v", "mountPath": "/x"}]),
        );
        assert!(host_path_mounts(&pod, &c, r).is_err());
        assert!(!r.join("missing").exists());
        let (pod, c) = pod_and_container(
            json!([{"name": "v", "hostPath": {"path": "/run/x.lock", "type": "FileOrCreate"}}]),
            json!([{"name": "v", "mountPath": "/x.lock"}]),
        );
        host_path_mounts(&pod, &c, r).unwrap();
        assert!(r.join("run/x.lock").is_file());
        // Nothing climbs out of the node's root.
        let (pod, c) = pod_and_container(
            json!([{"name": "v", "hostPath": {"path": "/../../etc"}}]),
            json!([{"name": "v", "mountPath": "/x"}]),
        );
        assert!(host_path_mounts(&pod, &c, r).unwrap_err().contains("'..'"));
    }
}

//! A pod's volumes and its containers' `volumeMounts`, as kubelet's volume plugins make
//! them, in `DATA/pods/<uid>/volumes/<name>`:
//!
//! - `emptyDir`: a directory (mode 0777) that lives as long as the pod, shared by its
//!   containers (`medium: Memory` is a directory too);
//! - `configMap` and `secret`: the object's keys as files (`items` pick keys and paths,
//!   `defaultMode`/`mode` set modes, default 0644), written the way kubelet's atomic
//!   writer writes them (the files in a `..<time>` directory, `..data` a symlink to it,
//!   each visible name a symlink through `..data`), again before every container start,
//!   so a restarted container sees the object as it is then; mounted read-only. A
//!   missing object fails the start unless the volume is `optional`;
//! - `hostPath`: the path on the host.
//!
//! Containers are processes on the host's file system, so a mount point that does not
//! exist there is created on the host for the bind mount, noted in
//! `DATA/pods/<uid>/mountpoints`, and removed (when empty) with the pod
//! ([`remove_mount_points`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret};
use kube::Api;

use crate::Error;
use crate::init::BindMount;

/// kubelet's default file mode for configMap and secret volumes (0644).
const DEFAULT_MODE: u32 = 0o644;

/// A volume ready to be mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Volume {
    pub path: PathBuf,
    /// configMap and secret volumes are always read-only.
    pub read_only: bool,
}

/// The file holding the mount points made on the host for a pod.
fn mount_points_file(pod_dir: &Path) -> PathBuf {
    pod_dir.join("mountpoints")
}

/// A path made only of normal components (no `..`, not absolute).
fn relative_ok(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The files of a configMap or secret volume: path → (content, mode).
fn files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    what: &str,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, String> {
    let mode = |m: Option<i32>| {
        m.or(default_mode)
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(DEFAULT_MODE)
            & 0o777
    };
    let mut out = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let Some(content) = data.get(&it.key) else {
                    return Err(format!(
                        "configuration key {:?} not found in {what}",
                        it.key
                    ));
                };
                if !relative_ok(&it.path) {
                    return Err(format!("invalid path {:?} in {what}", it.path));
                }
                out.insert(it.path.clone(), (content.clone(), mode(it.mode)));
            }
        }
        _ => {
            for (k, v) in data {
                if relative_ok(k) {
                    out.insert(k.clone(), (v.clone(), mode(None)));
                }
            }
        }
    }
    Ok(out)
}

/// Writes `files` into `dir` as kubelet's atomic writer does: a new `..<stamp>`
/// directory, `..data` switched to it with one rename, a symlink per top-level name.
fn write_atomic(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = format!(
        "..{}",
        crate::time::rfc3339_nanos(std::time::SystemTime::now()).replace(':', "_")
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (path, (content, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::File::create(&target)?;
        f.write_all(content)?;
        f.set_permissions(std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data"))?;
    let top: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    // Names no longer in the object go.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn config_error(pod: &Pod, reason: String) -> Error {
    Error::ContainerConfig {
        container: String::new(),
        pod: format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        ),
        reason,
    }
}

/// Makes (or refreshes) every volume of `pod` under `pod_dir`; by volume name.
pub(crate) async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<BTreeMap<String, Volume>, Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeMap::new();
    let spec = pod.spec.clone().unwrap_or_default();
    for v in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&v.name);
        let io = |e: std::io::Error| Error::io(format!("making volume {}", v.name), e);
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
            out.insert(
                v.name.clone(),
                Volume {
                    path: dir,
                    read_only: false,
                },
            );
        } else if let Some(h) = &v.host_path {
            out.insert(
                v.name.clone(),
                Volume {
                    path: PathBuf::from(&h.path),
                    read_only: false,
                },
            );
        } else if let Some(cm) = &v.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let got = api
                .get_opt(&cm.name)
                .await
                .map_err(|e| Error::api(format!("getting configmap {ns}/{}", cm.name), e))?;
            let data: BTreeMap<String, Vec<u8>> = match got {
                Some(c) => c
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .chain(
                        c.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    )
                    .collect(),
                None if cm.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(config_error(
                        pod,
                        format!(
                            "MountVolume.SetUp failed for volume {:?} : configmap {:?} not found",
                            v.name, cm.name
                        ),
                    ));
                }
            };
            let what = format!("configmap {:?}", cm.name);
            let f = files(&data, cm.items.as_deref(), cm.default_mode, &what)
                .map_err(|r| config_error(pod, r))?;
            write_atomic(&dir, &f).map_err(io)?;
            out.insert(
                v.name.clone(),
                Volume {
                    path: dir,
                    read_only: true,
                },
            );
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let got = api
                .get_opt(&name)
                .await
                .map_err(|e| Error::api(format!("getting secret {ns}/{name}"), e))?;
            let data: BTreeMap<String, Vec<u8>> = match got {
                Some(sec) => sec
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .chain(
                        sec.string_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    )
                    .collect(),
                None if s.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(config_error(
                        pod,
                        format!(
                            "MountVolume.SetUp failed for volume {:?} : secret {name:?} not found",
                            v.name
                        ),
                    ));
                }
            };
            let what = format!("secret {name:?}");
            let f = files(&data, s.items.as_deref(), s.default_mode, &what)
                .map_err(|r| config_error(pod, r))?;
            write_atomic(&dir, &f).map_err(io)?;
            out.insert(
                v.name.clone(),
                Volume {
                    path: dir,
                    read_only: true,
                },
            );
        }
    }
    Ok(out)
}

/// Makes `target` on the host (a directory, or an empty file when `file`), noting in
/// the pod's mount points file each path it created.
fn make_mount_point(pod_dir: &Path, target: &Path, file: bool) -> std::io::Result<()> {
    if target.exists() {
        return Ok(());
    }
    let mut made = Vec::new();
    let dir = if file { target.parent() } else { Some(target) };
    if let Some(dir) = dir {
        let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
        for d in missing.into_iter().rev() {
            std::fs::create_dir(d)?;
            made.push(d.to_path_buf());
        }
    }
    if file {
        std::fs::File::create(target)?;
        made.push(target.to_path_buf());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mount_points_file(pod_dir))?;
    for m in made {
        writeln!(f, "{}", m.display())?;
    }
    Ok(())
}

/// The bind mounts of `container`'s `volumeMounts`.
pub(crate) fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, Volume>,
    pod_dir: &Path,
) -> Result<Vec<BindMount>, Error> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        // Volumes of kinds this node does not make (persistentVolumeClaim, projected)
        // are left out.
        let Some(v) = volumes.get(&m.name) else {
            continue;
        };
        let mut source = v.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if !relative_ok(sub) {
                return Err(Error::ContainerConfig {
                    container: container.name.clone(),
                    pod: String::new(),
                    reason: format!("subPath {sub:?} must be a relative path without '..'"),
                });
            }
            source = source.join(sub);
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .map_err(|e| Error::io(format!("making subPath {}", source.display()), e))?;
            }
        }
        let target = PathBuf::from(&m.mount_path);
        let file = source.is_file() || std::fs::metadata(&source).is_ok_and(|md| md.is_file());
        make_mount_point(pod_dir, &target, file)
            .map_err(|e| Error::io(format!("making mount point {}", target.display()), e))?;
        out.push(BindMount {
            source,
            target,
            read_only: v.read_only || m.read_only == Some(true),
            mkdir: false,
        });
    }
    Ok(out)
}

/// Removes the mount points made on the host for the pod in `pod_dir`, newest first,
/// each only if it is still empty.
pub(crate) fn remove_mount_points(pod_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(mount_points_file(pod_dir)) else {
        return;
    };
    for line in text.lines().rev() {
        let p = Path::new(line);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir(p);
            }
            Ok(m) if m.is_file() && m.len() == 0 => {
                let _ = std::fs::remove_file(p);
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_file(mount_points_file(pod_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_what_a_container_sees() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cfg");
        let mut data = BTreeMap::new();
        data.insert("a".to_string(), b"1".to_vec());
        data.insert("b".to_string(), b"2".to_vec());
        write_atomic(&dir, &files(&data, None, Some(0o600), "x").unwrap()).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            std::fs::symlink_metadata(dir.join("a"))
                .unwrap()
                .is_symlink()
        );
        // An update: one key changed, one gone, through the same directory.
        data.insert("a".to_string(), b"3".to_vec());
        data.remove("b");
        write_atomic(&dir, &files(&data, None, None, "x").unwrap()).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"3");
        assert!(!dir.join("b").exists());
        let stamps = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(stamps, 1);
        // Items pick keys and paths; a missing key or a path with .. is refused.
        let items = [KeyToPath {
            key: "a".into(),
            path: "sub/file".into(),
            mode: Some(0o400),
            ..Default::default()
        }];
        let f = files(&data, Some(&items), None, "x").unwrap();
        assert_eq!(f["sub/file"], (b"3".to_vec(), 0o400));
        let bad = [KeyToPath {
            key: "z".into(),
            path: "z".into(),
            ..Default::default()
        }];
        assert!(files(&data, Some(&bad), None, "x").is_err());
        assert!(!relative_ok("../etc/passwd"));
    }

    #[test]
    fn mount_points_made_on_the_host_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let pod = d.path().join("pod");
        std::fs::create_dir(&pod).unwrap();
        let target = d.path().join("x/y/z");
        make_mount_point(&pod, &target, false).unwrap();
        let file = d.path().join("f/file.conf");
        make_mount_point(&pod, &file, true).unwrap();
        assert!(target.is_dir() && file.is_file());
        remove_mount_points(&pod);
        assert!(!d.path().join("x").exists() && !d.path().join("f").exists());
    }
}

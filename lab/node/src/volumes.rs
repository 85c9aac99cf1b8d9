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
//! - `projected`: ServiceAccount tokens (TokenRequests bound to the pod, for the
//!   source's audience, renewed at 80% of their lifetime), configMap and secret keys and
//!   downward API fields in one directory, written and mounted as configMap volumes are;
//! - `hostPath`: the node's own file, under `--host-path-root` (the lab keeps each
//!   node's files in a directory of its own; a real node's root is `/`), checked and
//!   made as kubelet does for the volume's `type`.
//!
//! Containers are processes on the host's file system. A mount point the host lacks is
//! made in the container's own mount namespace (container-init covers the nearest
//! existing directory with a tmpfs showing the same entries), so the host does not
//! change; only a missing top-level directory, which cannot be made that way, is
//! created on the host for the bind mount, noted in `DATA/pods/<uid>/mountpoints`, and
//! removed (when empty) with the pod ([`remove_mount_points`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, HostPathVolumeSource, KeyToPath, Pod, ProjectedVolumeSource, Secret,
    ServiceAccount,
};
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

/// Makes (or refreshes) every volume of `pod` under `pod_dir` (hostPath volumes under
/// `host_path_root`); by volume name.
pub(crate) async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
    host_path_root: &Path,
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
            let path = host_path(host_path_root, h).map_err(|why| {
                config_error(
                    pod,
                    format!("MountVolume.SetUp failed for volume {:?} : {why}", v.name),
                )
            })?;
            out.insert(
                v.name.clone(),
                Volume {
                    path,
                    read_only: false,
                },
            );
        } else if let Some(cm) = &v.config_map {
            let data = config_map_data(client, pod, ns, &cm.name, cm.optional, &v.name).await?;
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
            let data = secret_data(client, pod, ns, &name, s.optional, &v.name).await?;
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
        } else if let Some(p) = &v.projected {
            let f = projected_files(client, pod, ns, p, &v.name).await?;
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

/// The keys of ConfigMap `name` (`None` data: missing and `optional`).
async fn config_map_data(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    name: &str,
    optional: Option<bool>,
    volume: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let got = api
        .get_opt(name)
        .await
        .map_err(|e| Error::api(format!("getting configmap {ns}/{name}"), e))?;
    match got {
        Some(c) => Ok(c
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
            .collect()),
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(config_error(
            pod,
            format!(
                "MountVolume.SetUp failed for volume {volume:?} : configmap {name:?} not found"
            ),
        )),
    }
}

/// The keys of Secret `name` (empty when missing and `optional`).
async fn secret_data(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    name: &str,
    optional: Option<bool>,
    volume: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let got = api
        .get_opt(name)
        .await
        .map_err(|e| Error::api(format!("getting secret {ns}/{name}"), e))?;
    match got {
        Some(sec) => Ok(sec
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
            .collect()),
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(config_error(
            pod,
            format!("MountVolume.SetUp failed for volume {volume:?} : secret {name:?} not found"),
        )),
    }
}

/// kubelet's shortest and default lifetime of a projected ServiceAccount token.
const MIN_TOKEN_SECONDS: i64 = 600;
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The files of a `projected` volume, all sources in one directory:
/// `serviceAccountToken` (a TokenRequest for the pod's ServiceAccount, bound to the
/// pod, for the source's audience and lifetime), `configMap`, `secret` and
/// `downwardAPI` (the pod's name, namespace, uid, labels, annotations, ServiceAccount
/// and node name).
async fn projected_files(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    p: &ProjectedVolumeSource,
    volume: &str,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, Error> {
    let mode = p
        .default_mode
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(DEFAULT_MODE)
        & 0o777;
    let mut out = BTreeMap::new();
    let bad = |why: String| {
        config_error(
            pod,
            format!("MountVolume.SetUp failed for volume {volume:?} : {why}"),
        )
    };
    for src in p.sources.iter().flatten() {
        if src.cluster_trust_bundle.is_some() {
            return Err(bad("clusterTrustBundle sources are not served here".into()));
        }
        if let Some(t) = &src.service_account_token {
            if !relative_ok(&t.path) {
                return Err(bad(format!("invalid path {:?}", t.path)));
            }
            let seconds = t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
            if seconds < MIN_TOKEN_SECONDS {
                return Err(bad(format!(
                    "expirationSeconds {seconds} is below {MIN_TOKEN_SECONDS}"
                )));
            }
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default");
            let token = bound_token(client, pod, ns, sa, t.audience.as_deref(), seconds).await?;
            out.insert(t.path.clone(), (token.into_bytes(), mode));
        }
        if let Some(cm) = &src.config_map {
            let data = config_map_data(client, pod, ns, &cm.name, cm.optional, volume).await?;
            let what = format!("configmap {:?}", cm.name);
            out.extend(files(&data, cm.items.as_deref(), p.default_mode, &what).map_err(bad)?);
        }
        if let Some(s) = &src.secret {
            let data = secret_data(client, pod, ns, &s.name, s.optional, volume).await?;
            let what = format!("secret {:?}", s.name);
            out.extend(files(&data, s.items.as_deref(), p.default_mode, &what).map_err(bad)?);
        }
        if let Some(d) = &src.downward_api {
            for item in d.items.iter().flatten() {
                if !relative_ok(&item.path) {
                    return Err(bad(format!("invalid path {:?}", item.path)));
                }
                let Some(field) = &item.field_ref else {
                    return Err(bad(format!(
                        "{:?}: only fieldRef items are served here",
                        item.path
                    )));
                };
                let value = downward_field(pod, &field.field_path)
                    .ok_or_else(|| bad(format!("unsupported fieldPath {:?}", field.field_path)))?;
                let m = item
                    .mode
                    .and_then(|m| u32::try_from(m).ok())
                    .map_or(mode, |m| m & 0o777);
                out.insert(item.path.clone(), (value.into_bytes(), m));
            }
        }
    }
    Ok(out)
}

/// A downward API field of the pod, as kubelet renders it (maps as `key="value"` lines).
fn downward_field(pod: &Pod, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let map = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => map(&m.labels),
        "metadata.annotations" => map(&m.annotations),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        _ => return None,
    })
}

/// A token of ServiceAccount `sa` bound to the pod, for `audience` (default: the API
/// server's), valid `seconds`: what kubelet asks for a projected token, and for the
/// service-account files the node writes itself.
pub(crate) async fn bound_token(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    sa: &str,
    audience: Option<&str>,
    seconds: i64,
) -> Result<String, Error> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(
                audience
                    .filter(|a| !a.is_empty())
                    .map(|a| vec![a.to_string()])
                    .unwrap_or_default(),
            ),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let answer = api
        .create_token_request(sa, &Default::default(), &request)
        .await
        .map_err(|e| Error::api(format!("requesting a token of serviceaccount {ns}/{sa}"), e))?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Answer(format!(
                "the TokenRequest of serviceaccount {ns}/{sa} was answered without status.token"
            ))
        })
}

/// When the pod's projected tokens are due again: at 80% of the shortest lifetime
/// among its `serviceAccountToken` sources, as kubelet renews them (`None`: it has none).
pub(crate) fn token_refresh(pod: &Pod) -> Option<std::time::Duration> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| {
            t.expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_SECONDS)
                .max(MIN_TOKEN_SECONDS)
        })
        .min()
        .map(|s| std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0) * 4 / 5))
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
fn host_path(root: &Path, host_path: &HostPathVolumeSource) -> Result<PathBuf, String> {
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
        // Volumes of kinds this node does not make (persistentVolumeClaim) are left out.
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
        // container-init makes a missing mount point in the container's own view, unless
        // only the host's root is above it.
        let on_host = target
            .ancestors()
            .find(|a| a.exists())
            .is_some_and(|a| a == Path::new("/"));
        if on_host {
            let file = std::fs::metadata(&source).is_ok_and(|md| md.is_file());
            make_mount_point(pod_dir, &target, file)
                .map_err(|e| Error::io(format!("making mount point {}", target.display()), e))?;
        }
        out.push(BindMount {
            source,
            target,
            read_only: v.read_only || m.read_only == Some(true),
            mkdir: !on_host,
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
    fn downward_fields_and_token_renewal() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "demo", "uid": "u-1",
                "labels": {"app": "web", "tier": "front"}},
            "spec": {"serviceAccountName": "web", "nodeName": "node-1", "containers": [],
                "volumes": [
                    {"name": "a", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "x", "expirationSeconds": 7200}}]}},
                    {"name": "b", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
                    {"name": "c", "emptyDir": {}}
                ]}
        }))
        .unwrap();
        assert_eq!(
            downward_field(&pod, "metadata.name").as_deref(),
            Some("web-0")
        );
        assert_eq!(
            downward_field(&pod, "metadata.labels").as_deref(),
            Some("app=\"web\"\ntier=\"front\"")
        );
        assert_eq!(
            downward_field(&pod, "spec.serviceAccountName").as_deref(),
            Some("web")
        );
        assert_eq!(downward_field(&pod, "status.podIP"), None);
        // Renewed at 80% of the shortest lifetime: the default hour.
        assert_eq!(
            token_refresh(&pod),
            Some(std::time::Duration::from_secs(2880))
        );
        let mut none = pod.clone();
        none.spec
            .as_mut()
            .unwrap()
            .volumes
            .as_mut()
            .unwrap()
            .truncate(0);
        assert_eq!(token_refresh(&none), None);
    }

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

    fn host(path: &str, type_: Option<&str>) -> HostPathVolumeSource {
        HostPathVolumeSource {
            path: path.into(),
            type_: type_.map(Into::into),
        }
    }

    #[test]
    fn host_paths_map_under_the_node_root_and_follow_their_type() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let conf = host_path(r, &host("/etc/cni/net.d", Some("DirectoryOrCreate"))).unwrap();
        assert_eq!(conf, r.join("etc/cni/net.d"));
        assert!(conf.is_dir());
        // No type: a missing path is made a directory, as container runtimes do.
        assert!(host_path(r, &host("/opt/cni/bin", None)).unwrap().is_dir());
        std::fs::create_dir_all(r.join("run")).unwrap();
        host_path(r, &host("/run/x.lock", Some("FileOrCreate"))).unwrap();
        assert!(r.join("run/x.lock").is_file());
        // Types that must find what they name.
        assert_eq!(
            host_path(r, &host("/etc/cni/net.d", Some("File"))).unwrap_err(),
            "hostPath type check failed: /etc/cni/net.d is not a file"
        );
        assert!(host_path(r, &host("/missing", Some("Directory"))).is_err());
        assert!(!r.join("missing").exists());
        assert!(host_path(r, &host("/run/x.lock", Some("Socket"))).is_err());
        // Nothing climbs out of the node's root.
        assert!(
            host_path(r, &host("/../../etc", None))
                .unwrap_err()
                .contains("'..'")
        );
    }

    #[test]
    fn mount_points_are_made_in_the_container_unless_only_the_root_is_above() {
        let d = tempfile::tempdir().unwrap();
        let pod_dir = d.path().join("pod");
        std::fs::create_dir(&pod_dir).unwrap();
        let top = format!("/kubewire-test-{}", std::process::id());
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [
                {"name": "v", "mountPath": d.path().join("missing/dir")},
                {"name": "v", "mountPath": format!("{top}/data"), "readOnly": true},
                {"name": "other", "mountPath": "/x"},
            ],
        }))
        .unwrap();
        let volumes = BTreeMap::from([(
            "v".to_string(),
            Volume {
                path: d.path().join("src"),
                read_only: false,
            },
        )]);
        let m = mounts(&container, &volumes, &pod_dir).unwrap();
        assert_eq!(m.len(), 2, "a volume this node does not make is left out");
        assert!(m[0].mkdir && !m[0].read_only);
        assert!(!d.path().join("missing").exists(), "made by container-init");
        assert!(!m[1].mkdir && m[1].read_only);
        assert!(Path::new(&top).join("data").is_dir());
        remove_mount_points(&pod_dir);
        assert!(!Path::new(&top).exists());
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

//! Running a CNI network configuration list the way containerd's libcni does: the first
//! valid config file of the directory (by name), ADD through each plugin in order with
//! the previous result as `prevResult`, DEL in reverse with the cached result, `CNI_*`
//! parameters in the environment, `runtimeConfig` only for declared capabilities, and
//! the result cached per attachment (`results/<network>-<container>-<ifname>`, libcni's
//! `cniCacheV1` shape) so DEL works even after the config changed or went away.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use ::cni::spec::plugin_config;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::Error;

/// A loaded network config list.
#[derive(Debug, Clone)]
pub(crate) struct NetworkList {
    /// The list as found (plugins' own fields untouched).
    pub list: Value,
    pub name: String,
}

/// One attachment's runtime parameters.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, ...), passed as `runtimeConfig`.
    pub capability_args: Value,
}

/// Loads the config libcni would pick: files ending `.conflist`, `.conf` or `.json`,
/// sorted by name, the first that parses (a single-plugin `.conf` becomes a list).
pub(crate) fn load(dir: &Path) -> Result<NetworkList, Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            Error::io(
                format!("reading the CNI config directory {}", dir.display()),
                e,
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("plugins").is_none() && v.get("type").is_some() {
            // A single-plugin .conf: libcni's ConfListFromConf.
            v = json!({"cniVersion": v["cniVersion"], "name": v["name"], "plugins": [v]});
        }
        let has_plugins = v["plugins"].as_array().is_some_and(|p| !p.is_empty());
        if let (true, Some(name)) = (has_plugins, v["name"].as_str()) {
            return Ok(NetworkList {
                name: name.to_owned(),
                list: v,
            });
        }
    }
    Err(Error::Cni(format!(
        "no valid network config in {}",
        dir.display()
    )))
}

/// The CNI runner of one node.
#[derive(Debug, Clone)]
pub(crate) struct Cni {
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Cni {
    fn find(&self, plugin_type: &str) -> Result<PathBuf, Error> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::Cni(format!(
                    "failed to find plugin {plugin_type:?} in {:?}",
                    self.bin_dirs
                ))
            })
    }

    async fn exec(
        &self,
        command: &str,
        plugin: &Value,
        conf: &Value,
        rt: &RuntimeConf,
    ) -> Result<Value, Error> {
        let ty = plugin["type"].as_str().unwrap_or_default();
        let bin = self.find(ty)?;
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let args: Vec<String> = rt.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("running the CNI plugin {}", bin.display()), e))?;
        let input = serde_json::to_vec(conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| Error::io(format!("waiting for the CNI plugin {}", bin.display()), e))?;
        let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
        };
        if !out.status.success() {
            let msg = stdout["msg"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
            return Err(Error::Cni(format!(
                "plugin type={ty:?} failed ({command}): code {}: {msg} {}",
                stdout["code"],
                stdout["details"].as_str().unwrap_or("")
            )));
        }
        Ok(stdout)
    }

    fn cache_path(&self, network: &str, rt: &RuntimeConf) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{network}-{}-{}", rt.container_id, rt.ifname))
    }

    /// ADD: every plugin in order; the final result is cached and returned.
    pub(crate) async fn add(&self, net: &NetworkList, rt: &RuntimeConf) -> Result<Value, Error> {
        let mut prev: Option<Value> = None;
        for plugin in net.list["plugins"].as_array().into_iter().flatten() {
            let conf = plugin_config(&net.list, plugin, prev.as_ref(), &rt.capability_args);
            prev = Some(self.exec("ADD", plugin, &conf, rt).await?);
        }
        let result = prev.unwrap_or(json!({}));
        let cache = json!({
            "kind": "cniCacheV1",
            "containerId": rt.container_id,
            "ifName": rt.ifname,
            "networkName": net.name,
            "netns": rt.netns,
            "cniArgs": rt.args,
            "capabilityArgs": rt.capability_args,
            "config": net.list,
            "result": result,
        });
        let path = self.cache_path(&net.name, rt);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&cache).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("caching the CNI result in {}", path.display()), e))?;
        Ok(result)
    }

    /// DEL: every plugin in reverse order with the cached config and result (or, without
    /// a cache, `net` and no prevResult); the cache entry goes afterwards.
    pub(crate) async fn del(
        &self,
        net: Option<&NetworkList>,
        network: &str,
        rt: &RuntimeConf,
    ) -> Result<(), Error> {
        let path = self.cache_path(network, rt);
        let cached: Option<Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (list, prev, caps) = match &cached {
            Some(c) => (
                c["config"].clone(),
                Some(c["result"].clone()),
                c["capabilityArgs"].clone(),
            ),
            None => match net {
                Some(n) => (n.list.clone(), None, rt.capability_args.clone()),
                None => return Ok(()),
            },
        };
        let mut plugins: Vec<Value> = list["plugins"].as_array().cloned().unwrap_or_default();
        plugins.reverse();
        for plugin in &plugins {
            let conf = plugin_config(&list, plugin, prev.as_ref().filter(|p| !p.is_null()), &caps);
            self.exec("DEL", plugin, &conf, rt).await?;
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}

/// The pod IPs in a CNI result (`ips[].address` without the prefix length).
pub(crate) fn result_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
        .collect();
    // IPv4 first, as kubelet orders podIPs by the cluster's primary family.
    ips.sort_by_key(|ip| ip.contains(':'));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let list = json!({"name": "n", "cniVersion": "1.0.0", "plugins": []});
        let rc = json!({"portMappings": [{"hostPort": 8080}], "bandwidth": {}});
        let p = json!({"type": "a", "capabilities": {"portMappings": true}});
        let c = plugin_config(&list, &p, Some(&json!({"ips": []})), &rc);
        assert_eq!(
            c["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        assert_eq!(c["name"], "n");
        assert_eq!(c["prevResult"], json!({"ips": []}));
        let c = plugin_config(&list, &json!({"type": "b"}), None, &rc);
        assert!(c.get("runtimeConfig").is_none() && c.get("prevResult").is_none());
    }

    #[test]
    fn loads_first_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00-bad.conflist"), "{").unwrap();
        std::fs::write(
            dir.path().join("10-one.conf"),
            r#"{"cniVersion":"1.0.0","name":"one","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-two.conflist"),
            r#"{"name":"two","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        let n = load(dir.path()).unwrap();
        assert_eq!(n.name, "one");
        assert_eq!(n.list["plugins"][0]["type"], "bridge");
        assert_eq!(
            result_ips(&json!({"ips": [{"address": "fd00::5/128"}, {"address": "10.0.0.5/32"}]})),
            ["10.0.0.5", "fd00::5"]
        );
    }
}

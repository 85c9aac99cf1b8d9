//! The API client, found the same way by every daemon.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

/// How a daemon finds its API server: the flags every kubewire daemon takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ClientArgs {
    /// Kubeconfig to reach the API server [default: $KUBECONFIG, else the pod's
    /// service account when running in a pod, else ~/.kube/config].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, overriding the kubeconfig's (the lab's nodes reach the
    /// control plane on the underlay, not on the host's loopback).
    #[arg(long)]
    pub server: Option<String>,
}

impl ClientArgs {
    /// The client configuration, found in the order Kubernetes' own daemons and
    /// controller-runtime use: `--kubeconfig`, else the file(s) `KUBECONFIG` names, else
    /// the pod's service account when running in a pod, else `~/.kube/config`. The pod
    /// comes before `~/.kube/config` (unlike kubectl and kube-rs's `infer`): a daemon in
    /// a pod must talk to its own cluster, whatever a home directory it can see holds
    /// (the lab's pods see the host's).
    pub async fn config(&self) -> Result<kube::Config, Error> {
        let from_env =
            || async { kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await };
        let mut config = match &self.kubeconfig {
            Some(path) => config_from_kubeconfig(path).await?,
            None if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) => {
                from_env().await.map_err(Error::KubeconfigEnv)?
            }
            None => match kube::Config::incluster() {
                Ok(config) => config,
                Err(_) => from_env().await.map_err(Error::NoCluster)?,
            },
        };
        if let Some(url) = &self.server {
            config.cluster_url = url.parse().map_err(|source| Error::Server {
                url: url.clone(),
                source,
            })?;
        }
        Ok(config)
    }

    /// The client.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        kube::Client::try_from(self.config().await?).map_err(Error::Client)
    }

    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(path) = &self.kubeconfig {
            args.push("--kubeconfig".into());
            args.push(path.into());
        }
        if let Some(url) = &self.server {
            args.push("--server".into());
            args.push(url.into());
        }
        args
    }
}

async fn config_from_kubeconfig(path: &Path) -> Result<kube::Config, Error> {
    let err = |source| Error::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(err)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(err)
}

/// A client from the kubeconfig file at `path` (its current context), for tools and
/// tests that hold a kubeconfig rather than flags.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    kube::Client::try_from(config_from_kubeconfig(path).await?).map_err(Error::Client)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
    }

    #[test]
    fn flags_round_trip() {
        for args in [
            ClientArgs::default(),
            ClientArgs {
                kubeconfig: Some("/etc/kubewire/node.kubeconfig".into()),
                server: Some("https://198.18.0.1:6443".into()),
            },
        ] {
            let argv = std::iter::once(OsString::from("x")).chain(args.to_args());
            assert_eq!(Cli::parse_from(argv).client, args);
        }
    }

    #[tokio::test]
    async fn errors_name_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("k8s-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        let missing = ClientArgs {
            kubeconfig: Some(path.clone()),
            server: None,
        };
        let e = missing.config().await.unwrap_err();
        assert!(matches!(e, Error::Kubeconfig { .. }));
        assert_eq!(
            e.to_string(),
            format!("reading kubeconfig {}", path.display())
        );

        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443'}}]\n\
             users: [{name: u, user: {token: t}}]\n\
             contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
        )
        .unwrap();
        let bad_server = ClientArgs {
            kubeconfig: Some(path.clone()),
            server: Some("https://[::1".into()),
        };
        let e = bad_server.config().await.unwrap_err();
        assert_eq!(e.to_string(), "--server \"https://[::1\" is not a URL");
        let ok = ClientArgs {
            kubeconfig: Some(path),
            server: Some("https://198.18.0.1:6443".into()),
        };
        let config = ok.config().await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://198.18.0.1:6443/");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

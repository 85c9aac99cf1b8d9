//! `apiserver`: the lab's control plane, a Kubernetes-API-compatible server that
//! kubectl and kube-rs talk to (`kubewire apiserver`).
//!
//! - [`serve`] / [`start`]: HTTPS (rustls) on every listen address, with a CA made on
//!   first start, client-certificate and bearer-token authentication, and
//!   `DIR/admin.kubeconfig` written once the server is ready; `serve` stops cleanly on
//!   SIGTERM or SIGINT.
//! - [`router`]: the same API as a tower service without sockets or TLS, for in-process
//!   clients (`kube::Client::new(router, "default")`).
//!
//! - [`Args`] / [`Config`]: the command line of `kubewire apiserver` and the
//!   configuration it converts into.
//!
//! See `docs/apiserver.md` for what is served so far and how the code is laid out.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};

mod alloc;
mod api;
mod apply;
mod bootstrap;
mod config;
mod defaults;
mod dial;
mod discovery;
mod error;
mod formats;
mod gc;
mod kubelet;
mod metallb;
mod patch;
mod protobuf;
mod rbac;
mod resources;
mod schema;
mod selector;
mod server;
mod service;
mod store;
mod strict;
mod table;
mod tls;
mod token;
mod util;
mod validate;
mod webhook;

pub use api::ResponseBody;
pub use config::{Args, Config, NetnsListen};
pub use error::{Cause, Error, Status};
pub use server::{Server, serve, start};

/// The Kubernetes version this server presents (`/version`, OpenAPI info).
pub const KUBERNETES_VERSION: &str = "v1.32.0";

/// The API as a tower service. There is no connection to authenticate: every request
/// is the cluster admin's, or the user [`Router::as_user`] names. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    state: Arc<api::State>,
    /// Who requests come from; `None`: the admin.
    user: Option<api::User>,
    /// Requests are authenticated by their ServiceAccount token instead.
    tokens: bool,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// Handles one request.
    pub async fn handle<B>(&self, mut req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.tokens && req.extensions().get::<api::User>().is_none() {
            let sa = api::bearer_token(req.headers()).and_then(|t| {
                self.state
                    .signer
                    .authenticate(&self.state.store, t, util::now_secs())
            });
            let user = match sa {
                Some(sa) => api::User::service_account(&sa.namespace, &sa.name),
                None if api::is_public(req.uri().path()) => api::User::anonymous(),
                None => return api::status_response(&Status::unauthorized()),
            };
            req.extensions_mut().insert(user);
        }
        if let Some(u) = &self.user
            && req.extensions().get::<api::User>().is_none()
        {
            req.extensions_mut().insert(u.clone());
        }
        api::handle(self.state.clone(), req).await
    }

    /// The same API, every request authenticated as `user` in `groups` (add
    /// `system:authenticated` as an authenticator would), and authorized as such: for
    /// in-process clients that are not the admin.
    pub fn as_user(&self, user: &str, groups: &[&str]) -> Router {
        Router {
            state: self.state.clone(),
            user: Some(api::User {
                name: user.to_string(),
                groups: groups.iter().map(|g| (*g).to_string()).collect(),
            }),
            tokens: false,
        }
    }

    /// The same API, every request authenticated by its ServiceAccount token
    /// (`Authorization: Bearer`) as the listener does when a connection has no client
    /// certificate: a request without a valid one is refused (401), but for the
    /// public paths (`/healthz`, `/version`, ...), served to `system:anonymous`.
    pub fn with_service_account_tokens(&self) -> Router {
        Router {
            state: self.state.clone(),
            user: None,
            tokens: true,
        }
    }
}

impl Router {
    /// The ServiceAccount (`system:serviceaccount:NS:NAME`) a bearer token authenticates
    /// as, if it is one of this server's valid ServiceAccount tokens.
    pub fn service_account(&self, token: &str) -> Option<String> {
        self.state
            .signer
            .authenticate(&self.state.store, token, util::now_secs())
            .map(|u| u.username())
    }
}

impl<B> tower_service::Service<Request<B>> for Router
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let router = self.clone();
        Box::pin(async move { Ok(router.handle(req).await) })
    }
}

/// Opens (or creates) the store in `config.data_dir` and returns the API as a tower
/// service, without listening anywhere.
pub fn router(config: &Config) -> Result<Router, Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    let store = store::Store::open(
        &config.data_dir.join("state.redb"),
        config.watch_log_capacity,
    )?;
    let ranges = service::Ranges {
        cidrs: config.service_cidrs.clone(),
        node_ports: config.node_port_range.clone(),
    };
    store.set_allocator(&ranges)?;
    let authz = rbac::Authorizer::attach(&store)?;
    let state = api::State {
        store,
        ranges,
        server_address: std::sync::Mutex::new(String::new()),
        catalog: resources::Catalog::default(),
        signer: token::Signer::load_or_create(&config.data_dir)?,
        kubelet: kubelet::KubeletClient::new(
            &config.data_dir,
            config.listen_in_netns.first().map(|l| l.netns.clone()),
        )?,
        pending: gc::Pending::default(),
        authz,
        webhooks: webhook::Registry::new(config.service_netns.clone()),
    };
    bootstrap::bootstrap(&state)?;
    rbac::bootstrap::ensure(&state)?;
    rbac::aggregate::settle(&state)?;
    state.reload_crds()?;
    state.webhooks.reload(&state.store)?;
    gc::recover(&state)?;
    let state = Arc::new(state);
    gc::spawn_worker(&state);
    gc::spawn_flusher(&state);
    rbac::aggregate::spawn_worker(&state);
    Ok(Router {
        state,
        user: None,
        tokens: false,
    })
}

/// Mints a client certificate for `user` in `groups` (for a node: `system:node:NAME` in
/// `system:nodes`), signed by the CA in `data_dir`, and returns a kubeconfig for
/// `server` (`https://IP:PORT`) that uses it. What the user may do is RBAC's (and, for
/// a node, the Node authorizer's) to decide.
pub fn client_kubeconfig(
    data_dir: &Path,
    server: &str,
    user: &str,
    groups: &[&str],
) -> Result<String, Error> {
    std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    tls::client_kubeconfig(data_dir, server, user, groups)
}

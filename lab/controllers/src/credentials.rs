//! Who each controller is, as kube-controller-manager with
//! `--use-service-account-credentials` does it: the process authenticates as
//! `system:kube-controller-manager` (the shared watches use that identity, which may
//! list and watch everything), and each controller writes with a token of its own
//! ServiceAccount in `kube-system` (`replicaset-controller`, `deployment-controller`,
//! ...), bound by the API server's bootstrap policy to `system:controller:NAME`. The
//! ServiceAccount is created if it is missing and the token asked through the
//! TokenRequest API (`serviceaccounts/NAME/token`), as kube's SA client builder does;
//! it is renewed at 80% of its lifetime, or at once when the server refuses it (401:
//! the ServiceAccount was deleted and made again).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::client::Body;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::Error;

/// Where controllers' ServiceAccounts live.
pub const NAMESPACE: &str = "kube-system";
/// The lifetime asked for each token (kube's SA client builder asks one hour).
const EXPIRATION_SECONDS: i64 = 3600;
/// After a failed token request, the next try.
const RETRY: Duration = Duration::from_secs(1);

/// The clients the controllers use.
#[derive(Clone)]
pub struct Clients {
    /// The process's own identity: the shared watches, and the ServiceAccounts and
    /// tokens of the controllers.
    pub root: kube::Client,
    /// The same server without credentials of its own, to which each controller's
    /// token is added; `None`: every controller uses `root` (a client that is the
    /// admin, or kube-controller-manager without `--use-service-account-credentials`).
    pub anonymous: Option<kube::Client>,
    /// The scheduler's (`system:kube-scheduler`); `None`: the scheduler uses `root`.
    pub scheduler: Option<kube::Client>,
}

impl Clients {
    /// Every controller on the one client.
    pub fn shared(client: kube::Client) -> Clients {
        Clients {
            root: client,
            anonymous: None,
            scheduler: None,
        }
    }

    /// The client of the controller whose ServiceAccount is `name`, and the future
    /// that keeps its token fresh (to be polled as long as the client is used; it
    /// never ends). Retries until the ServiceAccount and a token are had.
    pub async fn controller(&self, name: &str) -> (kube::Client, Renewal) {
        let Some(anonymous) = &self.anonymous else {
            return (self.root.clone(), Box::pin(std::future::pending()));
        };
        let token = loop {
            match request_token(&self.root, name).await {
                Ok(t) => break t,
                Err(e) => {
                    warn!(controller = name, error = %k8s::ErrorChain(&e), "asking a token; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        let shared = Arc::new(RwLock::new(token.token.clone()));
        let refused = Arc::new(Notify::new());
        let client = kube::Client::new(
            WithToken {
                inner: anonymous.clone(),
                token: shared.clone(),
                refused: refused.clone(),
            },
            "default",
        );
        let renewal = renew(self.root.clone(), name.to_string(), token, shared, refused);
        (client, Box::pin(renewal))
    }
}

impl From<kube::Client> for Clients {
    fn from(client: kube::Client) -> Clients {
        Clients::shared(client)
    }
}

/// Keeps a controller's token fresh; never ends.
pub type Renewal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A token and when to renew it.
struct Token {
    token: String,
    renew_in: Duration,
}

/// Makes `kube-system/NAME` if it is missing and asks a token for it.
async fn request_token(root: &kube::Client, name: &str) -> Result<Token, Error> {
    let sas: Api<ServiceAccount> = Api::namespaced(root.clone(), NAMESPACE);
    let what = || format!("making serviceaccount {NAMESPACE}/{name}");
    if sas
        .get_opt(name)
        .await
        .map_err(Error::api(what()))?
        .is_none()
    {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(NAMESPACE.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => info!(serviceaccount = name, "created"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::api(what())(e)),
        }
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(EXPIRATION_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(Error::api(format!(
            "asking a token for serviceaccount {NAMESPACE}/{name}"
        )))?;
    let no_token = || Error::Config(format!("no token for {NAMESPACE}/{name}"));
    let status = answer.status.ok_or_else(no_token)?;
    let token = status.token.ok_or_else(no_token)?;
    let lifetime = status.expiration_timestamp.map_or(0, |t| {
        t.0.duration_since(k8s_openapi::jiff::Timestamp::now())
            .as_secs()
            .max(0)
    });
    Ok(Token {
        token,
        renew_in: Duration::from_secs(u64::try_from(lifetime * 8 / 10).unwrap_or(0)).max(RETRY),
    })
}

/// Renews the token at 80% of its lifetime, or when the server refused it.
async fn renew(
    root: kube::Client,
    name: String,
    mut token: Token,
    shared: Arc<RwLock<String>>,
    refused: Arc<Notify>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(token.renew_in) => {}
            () = refused.notified() => {
                warn!(controller = name, "the API server refused the token; asking another");
            }
        }
        token = loop {
            match request_token(&root, &name).await {
                Ok(t) => break t,
                Err(e) => {
                    warn!(controller = name, error = %k8s::ErrorChain(&e), "renewing the token; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        *shared.write().unwrap_or_else(|e| e.into_inner()) = token.token.clone();
    }
}

/// A client's transport with `Authorization: Bearer TOKEN` added to every request.
#[derive(Clone)]
struct WithToken {
    inner: kube::Client,
    token: Arc<RwLock<String>>,
    refused: Arc<Notify>,
}

impl tower_service::Service<Request<Body>> for WithToken {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let token = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
        let this = self.clone();
        Box::pin(async move {
            let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| kube::Error::Service(Box::new(e)))?;
            req.headers_mut().insert(header::AUTHORIZATION, value);
            let resp = this.inner.send(req).await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                this.refused.notify_one();
            }
            Ok(resp)
        })
    }
}

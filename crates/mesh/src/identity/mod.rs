//! `kubewire mesh identity`: the mesh's issuer. It keeps the trust anchor in a Secret
//! of its namespace (made on first start), publishes the trust bundle in a ConfigMap
//! beside it, and serves `POST /v1/certify` over HTTPS: a proxy sends its pod's
//! ServiceAccount token (bound, for the audience [`AUDIENCE`]) and a CSR for the key it
//! made; the issuer checks the token with a TokenReview against the API server and
//! answers with a 24-hour certificate for `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
//!
//! - [`authority`]: the anchor and the certificates it signs (pure);
//! - [`server`]: the HTTPS endpoint and the TokenReview;
//! - [`client`]: the proxy's side: its key, its CSR, renewal at 70% of the lifetime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tracing::info;

pub mod authority;
pub mod client;
pub mod server;

pub use authority::{Authority, CERTIFICATE_LIFETIME, Identity};

/// The audience a proxy's token must be bound to: a token for the API server does not
/// get a certificate, and a certificate token cannot talk to the API server.
pub const AUDIENCE: &str = "identity.kubewire.io";
/// The ConfigMap (in the issuer's namespace) holding the trust bundle, key
/// [`TRUST_BUNDLE_KEY`].
pub const TRUST_ROOTS: &str = "kubewire-identity-trust-roots";
pub const TRUST_BUNDLE_KEY: &str = "ca-bundle.crt";

/// Why the issuer stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The anchor or a certificate could not be made or read.
    #[error(transparent)]
    Authority(#[from] authority::Error),
    /// No client for the API server.
    #[error(transparent)]
    Client(#[from] k8s::Error),
    /// The listener or TLS could not be set up.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The stored anchor is not whole.
    #[error("secret {0} has no ca.crt and ca.key")]
    BadSecret(String),
}

/// Flags of `kubewire mesh identity`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// The namespace it runs in, where the anchor's Secret and the trust bundle live.
    #[arg(long, default_value = "kube-system", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The Secret keeping the trust anchor (`tls.crt`, `tls.key`; `ca.crt` the bundle); made if missing.
    #[arg(long, default_value = "kubewire-identity")]
    pub secret: String,
    /// The SPIFFE trust domain the identities are in.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Where to serve HTTPS.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The name proxies reach it by, which its serving certificate holds.
    #[arg(long, default_value = "kubewire-identity.kube-system.svc")]
    pub server_name: String,
    /// How long the certificates it issues are valid (Linkerd's issuance lifetime);
    /// proxies renew theirs at 70% of it.
    #[arg(long, default_value = "24h", value_parser = k8s::parse_duration)]
    pub certificate_lifetime: std::time::Duration,
}

/// Runs the issuer until SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut shutdown = k8s::Shutdown::new().map_err(|source| Error::Io {
        what: "handling SIGTERM".into(),
        source,
    })?;
    let client = args.client.client().await?;
    let authority = load_or_create(&client, &args)
        .await?
        .with_lifetime(args.certificate_lifetime);
    publish_trust_bundle(&client, &args.namespace, authority.trust_bundle()).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Io {
            what: format!("listening on {}", args.listen),
            source,
        })?;
    info!(addr = %args.listen, trust_domain = %args.trust_domain, "identity issuer serving");
    let issuer = Arc::new(server::Issuer::new(authority, client));
    tokio::select! {
        r = server::serve(listener, issuer, &args.server_name) => r,
        () = shutdown.recv() => {
            info!("identity issuer stopping");
            Ok(())
        }
    }
}

/// The anchor from the Secret, or a new one stored there. Two issuers starting at
/// once agree: the second create fails and it reads the first's.
pub async fn load_or_create(client: &kube::Client, args: &Args) -> Result<Authority, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let at = format!("{}/{}", args.namespace, args.secret);
    let api = |what: &str| {
        let what = format!("{what} secret {at}");
        move |source| Error::Api { what, source }
    };
    if let Some(s) = secrets
        .get_opt(&args.secret)
        .await
        .map_err(api("reading"))?
    {
        return load(&s, args, &at);
    }
    let (authority, pem) = Authority::create(&args.trust_domain, SystemTime::now())?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(args.secret.clone()),
            namespace: Some(args.namespace.clone()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (
                    "tls.crt".to_string(),
                    ByteString(pem.cert.clone().into_bytes()),
                ),
                ("tls.key".to_string(), ByteString(pem.key.into_bytes())),
                ("ca.crt".to_string(), ByteString(pem.cert.into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = %at, "made a new trust anchor");
            Ok(authority)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let s = secrets.get(&args.secret).await.map_err(api("reading"))?;
            load(&s, args, &at)
        }
        Err(e) => Err(api("creating")(e)),
    }
}

fn load(s: &Secret, args: &Args, at: &str) -> Result<Authority, Error> {
    let field = |k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let (Some(cert), Some(key)) = (field("tls.crt"), field("tls.key")) else {
        return Err(Error::BadSecret(at.to_string()));
    };
    Ok(Authority::load(
        &args.trust_domain,
        &authority::AnchorPem { cert, key },
    )?)
}

/// Writes the trust bundle into the [`TRUST_ROOTS`] ConfigMap (made or replaced).
pub async fn publish_trust_bundle(
    client: &kube::Client,
    namespace: &str,
    bundle: &str,
) -> Result<(), Error> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(TRUST_ROOTS.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some([(TRUST_BUNDLE_KEY.to_string(), bundle.to_string())].into()),
        ..Default::default()
    };
    let params = kube::api::PatchParams::apply("kubewire-mesh-identity").force();
    cms.patch(TRUST_ROOTS, &params, &kube::api::Patch::Apply(&cm))
        .await
        .map_err(|source| Error::Api {
            what: format!("writing configmap {namespace}/{TRUST_ROOTS}"),
            source,
        })?;
    Ok(())
}

//! The issuer's HTTPS endpoint: `POST /v1/certify` with a JSON body
//! `{"token": "<bound ServiceAccount token>", "csr": "<PEM>"}`, answered with
//! `{"certificate": "<PEM chain>", "trustBundle": "<PEM>", "notAfter": <unix seconds>,
//! "identity": "spiffe://..."}`; refusals are `{"error": "..."}` with 400 (the request),
//! 401 (the token) or 500 (the API server). `GET /healthz` answers `ok`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use tracing::{debug, info};

use super::authority::{Authority, Identity};
use super::{AUDIENCE, Error};
use crate::https::reply;

/// The largest request body read.
const MAX_BODY: usize = 64 << 10;

/// The issuer: the authority, and the client its TokenReviews go through.
pub struct Issuer {
    authority: Authority,
    client: kube::Client,
}

impl Issuer {
    pub fn new(authority: Authority, client: kube::Client) -> Issuer {
        Issuer { authority, client }
    }

    /// Who `token` proves to be (a ServiceAccount), or why not.
    async fn review(&self, token: &str) -> Result<Identity, (StatusCode, String)> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the token could not be reviewed: {e}"),
                )
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err((
                StatusCode::UNAUTHORIZED,
                format!("the token was refused: {why}"),
            ));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        Identity::from_username(&username).ok_or_else(|| {
            (
                StatusCode::UNAUTHORIZED,
                format!("{username:?} is not a ServiceAccount"),
            )
        })
    }

    /// Answers one certify request body.
    pub async fn certify(&self, body: &[u8]) -> Result<Value, (StatusCode, String)> {
        let bad = |why: String| (StatusCode::BAD_REQUEST, why);
        let req: Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
        let token = req["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("token is required".into()))?;
        let csr = req["csr"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("csr is required".into()))?;
        let identity = self.review(token).await?;
        let issued = self
            .authority
            .certify(csr, &identity, SystemTime::now())
            .map_err(|e| bad(e.to_string()))?;
        let id = identity.spiffe_id(self.authority.trust_domain());
        info!(identity = %id, "issued a certificate");
        Ok(json!({
            "identity": id,
            "certificate": issued.chain_pem,
            "trustBundle": self.authority.trust_bundle(),
            "notAfter": issued.not_after.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        }))
    }
}

async fn handle(issuer: Arc<Issuer>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Response::new(Full::new(Bytes::from_static(b"ok"))),
        (&Method::POST, "/v1/certify") => {
            let body = match crate::https::body(req, MAX_BODY).await {
                Ok(b) => b,
                Err(answer) => return answer,
            };
            match issuer.certify(&body).await {
                Ok(v) => reply(StatusCode::OK, &v),
                Err((code, why)) => {
                    debug!(%code, error = %why, "certify refused");
                    reply(code, &json!({"error": why}))
                }
            }
        }
        (_, "/v1/certify" | "/healthz") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed"}),
        ),
        _ => reply(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Serves HTTPS on `listener` with a certificate for `server_name` signed by the
/// anchor, until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    issuer: Arc<Issuer>,
    server_name: &str,
) -> Result<(), Error> {
    let (cert_pem, key_pem) = issuer
        .authority
        .serving_certificate(server_name, SystemTime::now())?;
    let acceptor = crate::https::acceptor(&cert_pem, &key_pem).map_err(|source| Error::Io {
        what: "the serving certificate".into(),
        source,
    })?;
    crate::https::serve(listener, acceptor, move |req| handle(issuer.clone(), req))
        .await
        .map_err(|source| Error::Io {
            what: "accepting a connection".into(),
            source,
        })
}

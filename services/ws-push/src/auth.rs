//! Who a browser is: JWT verification (HS256 shared secret, RS256/ES256 from a JWKS
//! file) or a site callback, and the claims that decide what it may do.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::AuthConfig;
use crate::pattern;

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Channel patterns the user may subscribe to (`news`, `room.*`, `*`).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Topic patterns the user may publish on (inbound).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Whether the user is an admin (seed 001's `has_connected_admin`).
    #[serde(default)]
    pub admin: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    /// True when the token allows subscribing to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| pattern::matches(p, channel))
    }

    /// True when the token allows publishing on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| pattern::matches(p, topic))
    }
}

/// Why a token was refused; each maps to one close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, has a bad signature, or the callback refused it.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The auth callback could not be reached.
    #[error("auth callback unavailable: {0}")]
    Unavailable(String),
}

/// Checks tokens.
#[derive(Debug)]
pub struct Verifier {
    hs256: Option<DecodingKey>,
    jwks: HashMap<String, (Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    callback: Option<(reqwest::Client, String)>,
}

impl Verifier {
    /// Reads the config (and the JWKS file, whose errors name it).
    pub fn new(config: &AuthConfig) -> Result<Self, Error> {
        let hs256 = config
            .jwt_secret
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let mut jwks = HashMap::new();
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("auth.jwks_file {}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("auth.jwks_file {}: not a JWKS: {e}", path.display())))?;
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => {
                        return Err(Error::Config(format!(
                            "auth.jwks_file {}: key {kid:?} is neither RSA nor EC",
                            path.display()
                        )));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| Error::Config(format!("auth.jwks_file {}: key {kid:?}: {e}", path.display())))?;
                jwks.insert(kid, (algorithm, key));
            }
        }
        let callback = match &config.callback_url {
            Some(url) => {
                let client = reqwest::Client::builder()
                    .timeout(config.callback_timeout)
                    .build()
                    .map_err(|e| Error::Config(format!("auth.callback_url: {e}")))?;
                Some((client, url.clone()))
            }
            None => None,
        };
        Ok(Self {
            hs256,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            callback,
        })
    }

    /// Verifies `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() || token.len() > 8192 {
            return Err(AuthError::Invalid("empty or longer than 8192 bytes".into()));
        }
        let claims = match self.verify_jwt(token) {
            Err(AuthError::Invalid(reason)) if self.callback.is_some() => {
                self.verify_callback(token).await.map_err(|e| match e {
                    AuthError::Invalid(callback_reason) => AuthError::Invalid(format!("{reason}; {callback_reason}")),
                    other => other,
                })?
            }
            other => other?,
        };
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("sub is empty".into()));
        }
        if claims.exp <= now_seconds() {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    fn verify_jwt(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (algorithm, key) = match header.alg {
            Algorithm::HS256 => (
                Algorithm::HS256,
                self.hs256
                    .as_ref()
                    .ok_or_else(|| AuthError::Invalid("HS256 tokens are not accepted".into()))?,
            ),
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.unwrap_or_default();
                let (algorithm, key) = self
                    .jwks
                    .get(&kid)
                    .ok_or_else(|| AuthError::Invalid(format!("no key {kid:?} in the JWKS")))?;
                if *algorithm != header.alg {
                    return Err(AuthError::Invalid(format!("key {kid:?} is not for {:?}", header.alg)));
                }
                (*algorithm, key)
            }
            other => return Err(AuthError::Invalid(format!("algorithm {other:?} is not accepted"))),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }

    async fn verify_callback(&self, token: &str) -> Result<Claims, AuthError> {
        let Some((client, url)) = &self.callback else {
            return Err(AuthError::Invalid("no callback".into()));
        };
        let response = client
            .post(url)
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .map_err(|e| AuthError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(AuthError::Unavailable(format!("callback answered {status}")));
        }
        if !status.is_success() {
            return Err(AuthError::Invalid(format!("callback refused the token ({status})")));
        }
        response
            .json::<Claims>()
            .await
            .map_err(|e| AuthError::Invalid(format!("callback answer is not claims: {}", e.without_url())))
    }
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

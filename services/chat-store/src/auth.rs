//! Who a caller is: a JWT (HS256, the claims ws-push uses: `sub`, `admin`, `exp`), or
//! the seed's per-user key checked against the site's key URL; and who users are:
//! details fetched in batches from the site's users URL, cached with a TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, ManagementConfig};
use crate::error::Error;
use crate::store::{Caller, Store, UserInfo, check_user_id, now_ms};

/// What a token says about its holder (the same claims ws-push reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Whether the site says the user is an admin.
    #[serde(default)]
    pub admin: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// The credentials a request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Bearer <jwt>`.
    Jwt(String),
    /// The seed's way: a user id and the key the site gave that user's page.
    UserKey {
        /// The user id.
        user: String,
        /// The key.
        key: String,
    },
}

/// Checks credentials and resolves users.
#[derive(Debug)]
pub struct Auth {
    hs256: Option<DecodingKey>,
    key_url: String,
    users_url: String,
    ttl: Duration,
    http: reqwest::Client,
    /// Keys the site confirmed, per user, until they expire.
    keys: Mutex<HashMap<String, (String, Instant)>>,
    store: Store,
}

impl Auth {
    /// Builds from the config; the store holds the users cache and the admins table.
    pub fn new(config: &AuthConfig, store: Store) -> Result<Self, Error> {
        let hs256 =
            (!config.jwt_secret.is_empty()).then(|| DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()));
        let http = reqwest::Client::builder()
            .timeout(config.site_timeout)
            .build()
            .map_err(|e| Error::Config(format!("auth: HTTP client: {e}")))?;
        Ok(Self {
            hs256,
            key_url: config.key_url.clone(),
            users_url: config.users_url.clone(),
            ttl: config.users_ttl,
            http,
            keys: Mutex::new(HashMap::new()),
            store,
        })
    }

    /// Identifies the caller: checks the credentials and looks up admin rights (the
    /// token's claim, configured ids, or the admins table).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Caller, Error> {
        let (user, claim_admin) = match credentials {
            Credentials::Jwt(token) => {
                let claims = self.verify_jwt(token)?;
                (claims.sub, claims.admin)
            }
            Credentials::UserKey { user, key } => {
                self.verify_key(user, key).await?;
                (user.clone(), false)
            }
        };
        check_user_id("token subject", &user).map_err(|e| Error::Unauthenticated(e.to_string()))?;
        let admin = claim_admin || self.store.is_admin(&user).await?;
        Ok(Caller { user, admin })
    }

    /// Verifies an HS256 token and returns its claims.
    pub fn verify_jwt(&self, token: &str) -> Result<Claims, Error> {
        let Some(key) = &self.hs256 else {
            return Err(Error::Unauthenticated("JWT sign-in is not configured".into()));
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::Unauthenticated("token expired".into()),
                _ => Error::Unauthenticated(format!("invalid token: {e}")),
            })
    }

    /// Checks a user's key against the site (`POST key_url`, form `id=<user>`, the
    /// answer is the key), caching confirmed keys for the TTL.
    pub async fn verify_key(&self, user: &str, key: &str) -> Result<(), Error> {
        if self.key_url.is_empty() {
            return Err(Error::Unauthenticated("user-key sign-in is not configured".into()));
        }
        check_user_id("user", user).map_err(|e| Error::Unauthenticated(e.to_string()))?;
        if key.is_empty() || key.len() > 512 {
            return Err(Error::Unauthenticated("invalid user key".into()));
        }
        if let Ok(keys) = self.keys.lock()
            && let Some((known, until)) = keys.get(user)
            && *until > Instant::now()
        {
            return if constant_time_eq(known.as_bytes(), key.as_bytes()) {
                Ok(())
            } else {
                Err(Error::Unauthenticated("invalid user key".into()))
            };
        }
        let response = self
            .http
            .post(&self.key_url)
            .header("content-type", FORM)
            .body(form(&[("id", user)]))
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("the site's key URL did not answer: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(Error::Unavailable(format!(
                "the site's key URL answered {}",
                response.status()
            )));
        }
        let body = response
            .text()
            .await
            .map_err(|e| Error::Unavailable(format!("the site's key URL: {}", e.without_url())))?;
        let expected = body.trim();
        if expected.is_empty() || !constant_time_eq(expected.as_bytes(), key.as_bytes()) {
            return Err(Error::Unauthenticated("invalid user key".into()));
        }
        if let Ok(mut keys) = self.keys.lock() {
            if keys.len() > 100_000 {
                let now = Instant::now();
                keys.retain(|_, (_, until)| *until > now);
            }
            keys.insert(user.to_owned(), (expected.to_owned(), Instant::now() + self.ttl));
        }
        Ok(())
    }

    /// Details of `ids`: fresh ones from the cache, the rest fetched from the site in
    /// one batch (`POST users_url`, form `users=1,2,...`). Unknown users are left out;
    /// with no users URL configured, only what the cache holds is returned.
    pub async fn users(&self, ids: &[String]) -> Result<Vec<UserInfo>, Error> {
        let mut ids: Vec<String> = ids.to_vec();
        ids.sort();
        ids.dedup();
        ids.truncate(500);
        let cached = self.store.cached_users(&ids).await?;
        let fresh_after = now_ms().saturating_sub(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
        let mut found: HashMap<String, UserInfo> = HashMap::new();
        let mut stale: HashMap<String, UserInfo> = HashMap::new();
        for (user, fetched_at) in cached {
            if fetched_at >= fresh_after {
                found.insert(user.id.clone(), user);
            } else {
                stale.insert(user.id.clone(), user);
            }
        }
        let missing: Vec<&String> = ids.iter().filter(|id| !found.contains_key(*id)).collect();
        if !missing.is_empty() && !self.users_url.is_empty() {
            match self.fetch_users(&missing).await {
                Ok(fetched) => {
                    self.store.put_users(&fetched).await?;
                    found.extend(fetched.into_iter().map(|u| (u.id.clone(), u)));
                }
                // The site is down: serve stale details rather than none.
                Err(e) => tracing::warn!(error = %e, "users URL failed; serving cached details"),
            }
        }
        for (id, user) in stale {
            found.entry(id).or_insert(user);
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn fetch_users(&self, ids: &[&String]) -> Result<Vec<UserInfo>, Error> {
        let list = ids.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
        let response = self
            .http
            .post(&self.users_url)
            .header("content-type", FORM)
            .body(form(&[("users", list.as_str())]))
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("the site's users URL did not answer: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(Error::Unavailable(format!(
                "the site's users URL answered {}",
                response.status()
            )));
        }
        let rows: Vec<SiteUser> = response
            .json()
            .await
            .map_err(|e| Error::Unavailable(format!("the site's users URL sent bad JSON: {}", e.without_url())))?;
        Ok(rows
            .into_iter()
            .filter_map(SiteUser::into_info)
            .filter(|u| ids.iter().any(|id| **id == u.id))
            .collect())
    }
}

/// One entry of the site's users answer (the seed's shape; ids as numbers or text).
#[derive(Debug, Deserialize)]
struct SiteUser {
    user_id: serde_json::Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    avatar_url: Option<String>,
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    age: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<String>,
}

impl SiteUser {
    fn into_info(self) -> Option<UserInfo> {
        let id = match self.user_id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        check_user_id("user_id", &id).ok()?;
        let clean = |s: Option<String>| -> String {
            s.unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(500)
                .collect()
        };
        let age = match self.age {
            Some(serde_json::Value::Number(n)) => n.as_i64().and_then(|v| i32::try_from(v).ok()),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Some(UserInfo {
            id,
            name: clean(self.name),
            login: clean(self.login),
            avatar_url: clean(self.avatar_url),
            city: clean(self.city),
            age,
            status: clean(self.status),
        })
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

/// Encodes pairs as an HTML form body (what the seed's PHP backends read from `$_POST`).
fn form(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Compares secrets without an early exit that would leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks management callers: the API key and the trusted addresses.
#[derive(Debug, Clone)]
pub struct Management {
    config: ManagementConfig,
}

impl Management {
    /// From the config.
    pub fn new(config: ManagementConfig) -> Self {
        Self { config }
    }

    /// Allows `key` from `ip` only when the key matches and the address is trusted.
    pub fn check(&self, key: Option<&str>, ip: Option<std::net::IpAddr>) -> Result<(), Error> {
        if self.config.api_key.is_empty() {
            return Err(Error::PermissionDenied(
                "the management API is disabled (no management.api_key)".into(),
            ));
        }
        let Some(key) = key else {
            return Err(Error::Unauthenticated("an API key is required".into()));
        };
        if !constant_time_eq(key.as_bytes(), self.config.api_key.expose().as_bytes()) {
            return Err(Error::Unauthenticated("invalid API key".into()));
        }
        match ip {
            Some(ip)
                if self
                    .config
                    .trusted_ips
                    .iter()
                    .any(|t| t.to_canonical() == ip.to_canonical()) =>
            {
                Ok(())
            }
            _ => Err(Error::PermissionDenied(
                "this address may not call the management API".into(),
            )),
        }
    }
}

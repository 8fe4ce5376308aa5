//! Translation through a LibreTranslate-compatible HTTP API (`POST {url}/translate`
//! with `{q, source, target, format, api_key}` answering `{translatedText}`).

use serde::{Deserialize, Serialize};

use crate::config::TranslateConfig;
use crate::error::Error;

/// A configured translator.
#[derive(Debug, Clone)]
pub struct Translator {
    endpoint: String,
    api_key: String,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct Request<'a> {
    q: &'a str,
    source: &'a str,
    target: &'a str,
    format: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    api_key: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    translated_text: String,
}

impl Translator {
    /// `None` when no URL is configured (translation is off).
    pub fn new(config: &TranslateConfig) -> Result<Option<Self>, Error> {
        if config.url.is_empty() {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::Config(format!("translate: HTTP client: {e}")))?;
        Ok(Some(Self {
            endpoint: format!("{}/translate", config.url.trim_end_matches('/')),
            api_key: config.api_key.expose().to_owned(),
            http,
        }))
    }

    /// Translates plain text into `target`.
    pub async fn translate(&self, text: &str, target: &str) -> Result<String, Error> {
        let response = self
            .http
            .post(&self.endpoint)
            .json(&Request {
                q: text,
                source: "auto",
                target,
                format: "text",
                api_key: &self.api_key,
            })
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("the translator did not answer: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(Error::Unavailable(format!(
                "the translator answered {}",
                response.status()
            )));
        }
        let reply: Reply = response
            .json()
            .await
            .map_err(|e| Error::Unavailable(format!("the translator sent bad JSON: {}", e.without_url())))?;
        Ok(reply.translated_text)
    }
}

/// Checks a language code: 2-3 letters, optionally a region (`pt-BR`, `zh-Hans`).
pub fn check_lang(lang: &str) -> Result<(), Error> {
    let ok = (2..=10).contains(&lang.len())
        && lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && lang.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("lang {lang:?} is not a language code")))
    }
}

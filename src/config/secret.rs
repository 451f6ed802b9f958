//! Secrets in the config never reach an error, a log line or Debug output: a [`Url`] shows its
//! password as `***`, and [`ClientSettings`] show the values of settings whose name marks
//! them secret (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, …)
//! as `***`. Backends read the real values with [`Url::expose`] and
//! [`ClientSettings::pairs`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A URL from the config (`postgres://user:password@host/db`, `redis://:password@host`, …).
/// `Display` and `Debug` hide the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Url(String);

impl Url {
    /// The URL with its password, for the client that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(scheme, rest)` of `scheme://rest`.
    pub fn scheme(&self) -> Option<(&str, &str)> {
        self.0.split_once("://")
    }
}

impl From<String> for Url {
    fn from(url: String) -> Url {
        Url(url)
    }
}

impl From<&str> for Url {
    fn from(url: &str) -> Url {
        Url(url.into())
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// `url` with the password of its user info (`user:password@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.into() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.into(),
        },
        None => url.into(),
    }
}

/// Extra client properties (librdkafka's), shown with their secret values hidden.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientSettings(BTreeMap<String, String>);

impl ClientSettings {
    /// Every setting with its real value, for the client.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn insert(&mut self, key: &str, value: &str) {
        self.0.insert(key.into(), value.into());
    }
}

/// Whether a client setting's name marks its value as secret.
pub fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "key.pem", "oauthbearer.config", "credential"]
        .iter()
        .any(|marker| name.contains(marker))
}

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if is_secret_setting(k) { "***" } else { v.as_str() })))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_is_kept() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("redis://:pw@cache:6379/0"), "redis://:***@cache:6379/0");
        assert_eq!(redact_url("rediss://user@cache"), "rediss://user@cache");
        assert_eq!(redact_url("file://docfold-data/log"), "file://docfold-data/log");
        assert_eq!(
            redact_url("postgres://a:b@c/d@e"),
            "postgres://a:***@c/d@e",
            "an @ in the path is not user info"
        );
        let mut settings = ClientSettings::default();
        settings.insert("sasl.password", "hunter2");
        settings.insert("security.protocol", "SASL_SSL");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2") && shown.contains("SASL_SSL"), "{shown}");
        assert_eq!(format!("{}", Url::from("redis://:hunter2@x")), "redis://:***@x");
    }
}

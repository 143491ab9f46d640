//! Secrets in the config: `${VAR}` expansion, `*_file` keys, and values that never reach an error
//! message or `Debug` output.

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de};

use super::ConfigError;

/// A string with `${VAR}` expanded from the environment.
pub(super) struct Expanded(pub(super) String);

impl<'de> Deserialize<'de> for Expanded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        expand_env(&s, |k| std::env::var(k).ok())
            .map(Expanded)
            .map_err(de::Error::custom)
    }
}

/// A secret value with `${VAR}` expanded; never printed, not even in an error. An empty or
/// whitespace-only value is refused: an empty secret is no secret (an empty `webhook_token` let
/// `?token=` in).
pub(super) struct Secret(pub(super) SecretString);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = d.deserialize_string(SecretVisitor)?;
        let value = expand_secret::<D::Error>(&raw)?;
        if value.trim().is_empty() {
            return Err(de::Error::custom(blank(&raw)));
        }
        Ok(Secret(value.into()))
    }
}

/// A `[kafka.properties]` value: expanded and never printed like a secret, but it may be empty
/// (librdkafka gives some properties a meaning when empty, e.g.
/// `ssl.endpoint.identification.algorithm`).
pub(super) struct PropertyValue(pub(super) SecretString);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = d.deserialize_string(SecretVisitor)?;
        expand_secret::<D::Error>(&raw).map(|v| PropertyValue(v.into()))
    }
}

/// A non-secret half of a credential (`access_key_id`), `${VAR}` expanded; empty is refused,
/// since it stands or falls with its secret.
pub(super) struct CredentialId(pub(super) String);

impl<'de> Deserialize<'de> for CredentialId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let value = expand_env(&raw, |k| std::env::var(k).ok()).map_err(de::Error::custom)?;
        if value.trim().is_empty() {
            return Err(de::Error::custom(blank(&raw)));
        }
        Ok(CredentialId(value))
    }
}

/// `${VAR}` expansion of a secret: an invalid `${…}` would be quoted back, so its message does
/// not show it; the env var name of a missing one is no secret.
fn expand_secret<E: de::Error>(raw: &str) -> Result<String, E> {
    expand_env(raw, |k| std::env::var(k).ok()).map_err(|e| {
        if e.starts_with("invalid variable name") {
            E::custom("invalid ${…} in a secret value (not shown); write $$ for a literal $")
        } else {
            E::custom(e)
        }
    })
}

/// Why a blank credential value is refused, given the value as written.
fn blank(raw: &str) -> String {
    if raw.trim().is_empty() {
        "empty or whitespace-only value: an empty secret is no secret; set it, or remove the key"
            .into()
    } else {
        "the ${…} it names expands to an empty or whitespace-only value: an empty secret is no secret"
            .into()
    }
}

/// Accepts a string; anything else is refused by its type alone. serde's default messages quote
/// the value ("invalid type: integer `12345`"), and `password = 12345` is still a password.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>(&self, what: &str) -> Result<String, E> {
        Err(E::custom(format!(
            "invalid type: {what} (value not shown), expected a string: quote the secret"
        )))
    }
}

impl<'de> de::Visitor<'de> for SecretVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        self.refuse("boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        self.refuse("float")
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<String, E> {
        self.refuse("bytes")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        // TOML datetimes arrive as a map; tables too.
        self.refuse("table or datetime")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        self.refuse("array")
    }
}

/// A secret read from the file a path names, trailing newline removed; an empty or
/// whitespace-only file is refused.
pub(super) struct FileSecret(pub(super) SecretString);

impl<'de> Deserialize<'de> for FileSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::from(String::deserialize(d)?);
        let mut text = std::fs::read_to_string(&path).map_err(|e| {
            de::Error::custom(format!("cannot read secret file {}: {e}", path.display()))
        })?;
        let trimmed = text.trim_end_matches(['\n', '\r']).len();
        text.truncate(trimmed);
        if text.trim().is_empty() {
            return Err(de::Error::custom(format!(
                "secret file {} is empty or holds only whitespace: an empty secret is no secret",
                path.display()
            )));
        }
        Ok(FileSecret(text.into()))
    }
}

/// Expands `${NAME}` from `lookup`; `$$` is a literal `$`. An unset variable is an error.
pub fn expand_env(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${ in value".to_string())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name ${{{name}}}"));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn one_secret(
    inline: Option<Secret>,
    file: Option<FileSecret>,
    key: &str,
    err: &impl Fn(&str, usize, String) -> ConfigError,
    line: usize,
) -> Result<Option<SecretString>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(err(
            key,
            line,
            format!("set either {key} or {key}_file, not both"),
        )),
        (Some(s), None) => Ok(Some(s.0)),
        (None, Some(f)) => Ok(Some(f.0)),
        (None, None) => Ok(None),
    }
}

//! [`Secret`]: the one type that holds an API token, a role password or a
//! connection URI returned by a cloud API.
//!
//! It zeroizes its bytes on drop and its `Debug` prints a placeholder, so a
//! secret that ends up inside a struct being logged, or inside an error,
//! shows as `Secret(<redacted>)`. There is no `Display`: reading the value
//! takes an explicit [`Secret::expose`]. [`SecretJson`] does the same for a
//! JSON document that may hold secrets (a Fly machine config whose `env`
//! carries `DATABASE_URL`). Copies that the HTTP stack makes
//! while a request or response is in flight (reqwest's buffers) are beyond
//! this type's reach; everything this crate owns is zeroized.

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    /// Wraps a string that must not be logged.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value. Every call site is a place where the secret leaves
    /// the type's protection, so keep them few and obvious.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A JSON document that may hold secrets: every string in it is zeroized
/// on drop, and `Debug` shows only the top-level keys. Deliberately not
/// `Serialize`: writing it anywhere takes an explicit [`SecretJson::expose`].
#[derive(Clone, PartialEq, Default)]
pub struct SecretJson(Value);

impl SecretJson {
    pub fn new(value: Value) -> SecretJson {
        SecretJson(value)
    }

    /// The document, secrets included.
    pub fn expose(&self) -> &Value {
        &self.0
    }

    pub fn expose_mut(&mut self) -> &mut Value {
        &mut self.0
    }
}

impl Drop for SecretJson {
    fn drop(&mut self) {
        zeroize_strings(&mut self.0);
    }
}

/// Overwrites every string value in `value` (object keys are names, not
/// secrets, and `serde_json` gives no mutable access to them).
fn zeroize_strings(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(zeroize_strings),
        Value::Object(map) => map.values_mut().for_each(zeroize_strings),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

impl fmt::Debug for SecretJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Value::Object(map) => {
                let keys: Vec<&String> = map.keys().collect();
                write!(f, "SecretJson(keys {keys:?})")
            }
            _ => f.write_str("SecretJson(<redacted>)"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretJson, D::Error> {
        Value::deserialize(deserializer).map(SecretJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_json_debug_shows_keys_only() {
        let doc = SecretJson::new(serde_json::json!({
            "image": "registry.fly.io/app:1",
            "env": { "DATABASE_URL": "postgresql://u:hunter2@h/db" }
        }));
        let shown = format!("{doc:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("postgresql"),
            "{shown}"
        );
        assert!(shown.contains("env") && shown.contains("image"), "{shown}");
    }

    #[test]
    fn zeroizing_reaches_nested_strings() {
        let mut v = serde_json::json!({"a": ["x", {"b": "secret"}], "n": 1});
        zeroize_strings(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["", {"b": ""}], "n": 1}));
    }

    #[test]
    fn debug_output_never_contains_the_value() {
        let s = Secret::new("postgresql://neondb_owner:hunter2@ep-x/neondb");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Secret(<redacted>)");
    }

    #[test]
    fn deserializes_from_a_json_string() {
        let s: Secret = serde_json::from_str(r#""p@ss""#).unwrap();
        assert_eq!(s.expose(), "p@ss");
    }
}

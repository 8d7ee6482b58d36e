//! The one place that knows how to hide a secret in text. Database URLs,
//! connection URIs echoed by an API, and errors that quote either pass
//! through here before they reach a message, a log line or a report.
//!
//! A URL can carry a secret in its user info (`user:password@`) and in its
//! query (`?password=…`, which libpq and sqlx honour, `sslpassword=…`, and
//! anything else whose name says key, token or secret). Each is replaced by
//! `***`; the rest of the URL stays, because the host and database name are
//! what an operator needs to act on an error.

/// Query parameters whose value is a secret. `passfile` names a file, not
/// a secret, and the file is never read into output.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "pass", "pwd"];

/// True for a query parameter whose value must not be shown.
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.contains(&name.as_str())
        || ["secret", "token", "key"]
            .iter()
            .any(|word| name.contains(word))
}

/// A URL with its password and every secret query parameter replaced, for
/// messages; a string that does not parse as a URL is not shown at all.
pub fn url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_param(&k) {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed
                    .query_pairs_mut()
                    .clear()
                    .extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

/// `text` with the user info of every `scheme://user:password@host` in it
/// masked, and the value of every `password=`-like parameter too (an API or
/// a driver may echo a connection URI or a DSN in an error).
pub fn text(text: &str) -> String {
    mask_params(&mask_userinfo(text))
}

fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("<redacted>");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Masks `name=value` where `name` is a secret parameter, in a query
/// string (`&`-separated) or a key/value DSN (space-separated).
fn mask_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        out.push_str(before);
        out.push('=');
        let after = &after[1..];
        if is_secret_param(&before[name_start..]) && !before[name_start..].is_empty() {
            let end = after
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace() || c == '"' || c == '\'')
                .unwrap_or(after.len());
            out.push_str("***");
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_of_every_uri_in_a_message_is_masked() {
        let text =
            "bad value postgresql://owner:hunter2@ep-1.aws.neon.tech/db and redis://:pw@r:6379";
        let masked = super::text(text);
        assert!(
            !masked.contains("hunter2") && !masked.contains(":pw@"),
            "{masked}"
        );
        assert_eq!(
            masked,
            "bad value postgresql://<redacted>@ep-1.aws.neon.tech/db and redis://<redacted>@r:6379"
        );
    }

    #[test]
    fn uris_without_userinfo_are_left_alone() {
        let text = "see https://api.machines.dev/v1/apps?x=1 for email a@b";
        assert_eq!(super::text(text), text);
    }

    #[test]
    fn a_password_in_the_query_of_a_database_url_is_hidden() {
        for raw in [
            "postgres://u@h/db?password=hunter2",
            "postgres://u@h/db?sslmode=require&password=hunter2",
            "postgres://u@h/db?sslpassword=hunter2&sslmode=require",
            "postgres://u:hunter2@h/db?PASSWORD=hunter2",
        ] {
            let shown = url(raw);
            assert!(!shown.contains("hunter2"), "{raw} shown as {shown}");
            assert!(shown.contains("u"), "{shown}");
        }
        assert_eq!(
            url("postgres://u@h/db?sslmode=require"),
            "postgres://u@h/db?sslmode=require"
        );
    }

    #[test]
    fn a_password_parameter_in_free_text_is_hidden() {
        for raw in [
            "error near postgres://u@h/db?password=hunter2&x=1",
            "dsn host=h user=u password=hunter2 dbname=d",
            "sslpassword=hunter2",
        ] {
            let shown = text(raw);
            assert!(!shown.contains("hunter2"), "{raw} shown as {shown}");
        }
        assert_eq!(text("a=b c=d"), "a=b c=d");
    }

    #[test]
    fn an_unparseable_url_is_not_echoed() {
        assert_eq!(url("not a url with hunter2"), "<unparseable URL>");
    }
}

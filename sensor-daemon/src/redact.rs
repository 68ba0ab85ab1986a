//! Secrets out of anything printed: errors, logs, `status.json`.
//!
//! Credentials are refused where they are given (a URL with `user:pass@`,
//! `token=` on the command line), but the refusal itself must not echo
//! them, and a feed URL may carry a key in its query. Everything that shows
//! a location or an `--output` value passes it through here first.

/// Query keys whose values are hidden (case-insensitive substring).
const SECRET_KEYS: &[&str] = &[
    "token",
    "key",
    "pass",
    "secret",
    "auth",
    "sig",
    "credential",
];

/// Option names of an `--output` value whose values are hidden.
const SECRET_OPTIONS: &[&str] = &["token", "password", "api_key", "apikey", "secret"];

const HIDDEN: &str = "***";

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

/// Hides the user information (`user:pass@`) of every URL in `text` and the
/// values of query parameters that look like secrets (`?token=...`).
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        out.push_str(&rest[..at + 3]);
        rest = &rest[at + 3..];
        // The authority ends at the first of these; `@` inside it ends the
        // user information (the last one, as URL parsers do).
        let end = rest
            .find(|c: char| {
                matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"' || c == ','
            })
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        match authority.rfind('@') {
            Some(i) => {
                out.push_str(HIDDEN);
                out.push_str(&authority[i..]);
            }
            None => out.push_str(authority),
        }
        rest = &rest[end..];
        // Path, then the query up to the end of the URL.
        let url_end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == ')')
            .unwrap_or(rest.len());
        let (path_query, after) = rest.split_at(url_end);
        match path_query.split_once('?') {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                let (query, fragment) = match query.split_once('#') {
                    Some((q, f)) => (q, Some(f)),
                    None => (query, None),
                };
                let pairs: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((k, _)) if is_secret_key(k) => format!("{k}={HIDDEN}"),
                        _ => pair.to_owned(),
                    })
                    .collect();
                out.push_str(&pairs.join("&"));
                if let Some(f) = fragment {
                    out.push('#');
                    out.push_str(f);
                }
            }
            None => out.push_str(path_query),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// An `--output DEST[,key=value...]` value: the destination as a URL, and
/// the values of secret options (`token=...`) hidden.
pub fn output_flag(text: &str) -> String {
    let mut parts = text.split(',');
    let mut out = url(parts.next().unwrap_or(""));
    for part in parts {
        out.push(',');
        match part.split_once('=') {
            Some((k, _)) if SECRET_OPTIONS.contains(&k.trim().to_ascii_lowercase().as_str()) => {
                out.push_str(k);
                out.push('=');
                out.push_str(HIDDEN);
            }
            _ => out.push_str(part),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_and_secret_query_values_are_hidden() {
        assert_eq!(
            url("https://user:pw@host.example:8443/p?a=1&api_key=XYZ#f"),
            "https://***@host.example:8443/p?a=1&api_key=***#f"
        );
        assert_eq!(
            url("feed location \"https://t0ken@h/x\": no"),
            "feed location \"https://***@h/x\": no"
        );
        assert_eq!(
            url("a http://h/x?Token=1 and https://u:p@g/ end"),
            "a http://h/x?Token=*** and https://***@g/ end"
        );
        // Nothing to hide: unchanged.
        for plain in [
            "/var/lib/x.txt",
            "https://check.torproject.org/exit-addresses",
            "http://127.0.0.1:80/details?type=relay",
        ] {
            assert_eq!(url(plain), plain);
        }
    }

    #[test]
    fn output_flags_hide_secret_options() {
        assert_eq!(
            output_flag("hec+https://s:8088,token=abc,format=ocsf"),
            "hec+https://s:8088,token=***,format=ocsf"
        );
        assert_eq!(
            output_flag("https://u:p@s/x,Password=abc"),
            "https://***@s/x,Password=***"
        );
    }
}

//! Hiding credentials in backend URLs before they reach logs, errors or `Debug` output.

/// The URL with the password in its user info and any `password=` query parameter replaced by
/// `***`. A string that does not parse as a URL may still hold a secret, so none of it is shown.
///
/// ```
/// assert_eq!(
///     lockcore::redact_url("postgres://app:s3cret@db/locks?password=x&sslmode=require"),
///     "postgres://app:***@db/locks?password=***&sslmode=require"
/// );
/// ```
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<unparsable url>".to_owned();
    };
    if url.password().is_some() && url.set_password(Some("***")).is_err() {
        return "<url with credentials>".to_owned();
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { "***".into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

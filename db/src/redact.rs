//! Keeping secrets out of logs and debug prints: passwords in connection URLs and DSNs, and
//! the values of client properties that name a password, secret, token or key. Every
//! configuration type that holds one implements `Debug` through these.

/// Replaces passwords in a URL (`scheme://user:secret@host`) or a key=value DSN or query
/// (`password=secret`, `sslpassword=…`) with `***`.
pub fn redact(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(auth_start + colon + 1..auth_start + at, "***");
            }
        }
    }
    let lower = out.to_ascii_lowercase();
    let mut result = String::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        let key_at = ["password=", "passwd=", "pwd="]
            .iter()
            .filter_map(|k| lower[i..].find(k).map(|p| (i + p, k.len())))
            .min();
        let Some((p, klen)) = key_at else {
            result.push_str(&out[i..]);
            break;
        };
        let value_start = p + klen;
        let value_end = out[value_start..]
            .find(['&', ' ', ';'])
            .map_or(out.len(), |e| value_start + e);
        result.push_str(&out[i..value_start]);
        result.push_str("***");
        i = value_end;
    }
    result
}

/// Whether a client property (a librdkafka setting) holds a secret: its value is never shown.
pub fn secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("token") || k.ends_with(".key")
}

/// `(key, value)` properties as a debug print shows them: secret values as `***`.
pub fn properties(props: &[(String, String)]) -> Vec<(&str, &str)> {
    props
        .iter()
        .map(|(k, v)| {
            let v = if secret_property(k) {
                "***"
            } else {
                v.as_str()
            };
            (k.as_str(), v)
        })
        .collect()
}

//! Sticky sessions: which kind a target group asks for, the opaque cookie values that name a
//! target (`AWSALB`, `AWSALBAPP-0`) or a target group (`AWSALBTG`), reading them from requests
//! and the `Set-Cookie` headers that keep them.
//!
//! A cookie value is an HMAC of the target group and the target under a key kept in the data
//! directory, so it reveals no address, survives a restart, cannot be made by a client for a
//! target it was never sent to, and a value that names no current target gets a new pick.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, header};
use sha2::Sha256;

/// How a target group keeps a client on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The load balancer's own `AWSALB` cookie.
    LbCookie { duration: u64 },
    /// `AWSALBAPP-0`, issued whenever the target sets the application's cookie `name`.
    AppCookie { name: String, duration: u64 },
    /// NLB: the client's address picks the target.
    SourceIp,
}

pub const LB_COOKIE: &str = "AWSALB";
pub const LB_COOKIE_CORS: &str = "AWSALBCORS";
pub const APP_COOKIE: &str = "AWSALBAPP-0";
pub const TG_COOKIE: &str = "AWSALBTG";
pub const TG_COOKIE_CORS: &str = "AWSALBTGCORS";

impl Sticky {
    /// From target group attributes; None unless `stickiness.enabled` is true.
    pub fn from_attributes(a: &BTreeMap<String, String>) -> Option<Self> {
        if a.get("stickiness.enabled").map(String::as_str) != Some("true") {
            return None;
        }
        let seconds = |k: &str| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(86_400);
        match a.get("stickiness.type").map(String::as_str) {
            Some("source_ip") => Some(Self::SourceIp),
            Some("app_cookie") => {
                let name = a.get("stickiness.app_cookie.cookie_name")?.clone();
                (!name.is_empty()).then(|| Self::AppCookie {
                    name,
                    duration: seconds("stickiness.app_cookie.duration_seconds"),
                })
            }
            _ => Some(Self::LbCookie {
                duration: seconds("stickiness.lb_cookie.duration_seconds"),
            }),
        }
    }
}

/// The secret that cookie values are keyed with.
#[derive(Clone)]
pub struct CookieKey(pub [u8; 32]);

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// The cookie value naming `parts` (a target group ARN, and a target's id and port).
pub fn token(key: &CookieKey, parts: &[&str]) -> String {
    // HMAC takes keys of any length.
    let mut h = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).unwrap_or_else(|_| unreachable!());
    h.update(b"fleetport-alb-sticky");
    for p in parts {
        h.update(&[0u8]);
        h.update(p.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(&h.finalize().into_bytes()[..24])
}

/// The value of the first cookie called one of `names` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| names.contains(k))
        .map(|(_, v)| v.trim_matches('"'))
}

/// Whether a response sets the cookie `name`.
pub fn sets_cookie(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once('='))
        .any(|(k, _)| k.trim() == name)
}

/// Adds `name` (and, when given, its cross-origin twin) with `Expires` `duration` seconds
/// from now, as the ALB does on every response of a sticky session.
pub fn set(headers: &mut HeaderMap, name: &str, cors: Option<&str>, value: &str, duration: u64) {
    let expires = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(duration as i64))
        .unwrap_or(jiff::Timestamp::MAX);
    let date = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&expires)
        .unwrap_or_default();
    let mut add = |v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.append(header::SET_COOKIE, v);
        }
    };
    add(format!("{name}={value}; Expires={date}; Path=/"));
    if let Some(cors) = cors {
        add(format!(
            "{cors}={value}; Expires={date}; Path=/; SameSite=None; Secure"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; AWSALBX=2"));
        h.append(header::COOKIE, HeaderValue::from_static("AWSALB=tok; b=3"));
        assert_eq!(cookie(&h, &[LB_COOKIE, LB_COOKIE_CORS]), Some("tok"));
        assert_eq!(cookie(&h, &[TG_COOKIE]), None);
    }

    #[test]
    fn tokens_are_stable_opaque_keyed_and_distinct() {
        let k = CookieKey([1; 32]);
        let a = token(&k, &["arn:tg/1", "10.0.0.1", "80"]);
        assert_eq!(a, token(&k, &["arn:tg/1", "10.0.0.1", "80"]));
        assert_ne!(a, token(&k, &["arn:tg/1", "10.0.0.1", "81"]));
        assert_ne!(a, token(&k, &["arn:tg/1", "10.0.0.18", "0"]));
        // Without the key, nobody can compute a target's value.
        assert_ne!(
            a,
            token(&CookieKey([2; 32]), &["arn:tg/1", "10.0.0.1", "80"])
        );
        assert!(!a.contains("10.0.0.1"));
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn set_cookie_has_expires_and_cors_twin() {
        let mut h = HeaderMap::new();
        set(&mut h, LB_COOKIE, Some(LB_COOKIE_CORS), "v", 60);
        let all: Vec<&str> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(all.len(), 2);
        assert!(all[0].starts_with("AWSALB=v; Expires=") && all[0].ends_with(" GMT; Path=/"));
        assert!(all[1].ends_with("; Path=/; SameSite=None; Secure"));
        assert!(sets_cookie(&h, "AWSALBCORS"));
    }

    #[test]
    fn kinds_follow_the_attributes() {
        let mut a: BTreeMap<String, String> = BTreeMap::new();
        assert_eq!(Sticky::from_attributes(&a), None);
        a.insert("stickiness.enabled".into(), "true".into());
        a.insert("stickiness.type".into(), "lb_cookie".into());
        a.insert("stickiness.lb_cookie.duration_seconds".into(), "30".into());
        assert_eq!(
            Sticky::from_attributes(&a),
            Some(Sticky::LbCookie { duration: 30 })
        );
        a.insert("stickiness.type".into(), "app_cookie".into());
        a.insert("stickiness.app_cookie.cookie_name".into(), "SESSION".into());
        assert!(matches!(
            Sticky::from_attributes(&a),
            Some(Sticky::AppCookie { name, duration: 86_400 }) if name == "SESSION"
        ));
    }
}

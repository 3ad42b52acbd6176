//! Listener rules compiled for the data plane: conditions (`path-pattern`, `host-header`,
//! `http-header`, `http-request-method`, `query-string`, `source-ip`) and actions, evaluated in
//! priority order with the default rule last, first match wins.

use std::net::IpAddr;

use serde_json::Value;

/// `*` matches any run of characters (including none) and `?` exactly one, over the whole text.
pub fn wildcard(pattern: &[u8], text: &[u8], fold_case: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if fold_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len()
            && (pattern[p] == b'?' || (pattern[p] != b'*' && eq(pattern[p], text[t])))
        {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// An IPv4 or IPv6 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, bits) = s.split_once('/')?;
        let net: IpAddr = ip.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Self { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Cond {
    Path(Vec<String>),
    Host(Vec<String>),
    Header(String, Vec<String>),
    Method(Vec<String>),
    /// (key or none, value) pairs; a pair matches any query parameter.
    Query(Vec<(Option<String>, String)>),
    Source(Vec<Cidr>),
}

/// What a condition can look at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    pub peer: IpAddr,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `\*` and `\?` in query-string conditions stand for the literal characters; they are kept
/// as-is here and compared literally by [`query_wildcard`].
fn query_wildcard(pattern: &str, text: &str) -> bool {
    if !pattern.contains('\\') {
        return wildcard(pattern.as_bytes(), text.as_bytes(), true);
    }
    // Rare: escapes present. Compare piecewise without treating escaped characters as wildcards.
    let literal = pattern.replace("\\*", "\u{1}").replace("\\?", "\u{2}");
    let text = text.replace('*', "\u{1}").replace('?', "\u{2}");
    wildcard(literal.as_bytes(), text.as_bytes(), true)
}

impl Cond {
    pub fn compile(c: &Value) -> Option<Self> {
        let field = c.get("Field")?.as_str()?;
        Some(match field {
            "path-pattern" => Cond::Path(strings(c.pointer("/PathPatternConfig/Values"))),
            "host-header" => Cond::Host(strings(c.pointer("/HostHeaderConfig/Values"))),
            "http-header" => Cond::Header(
                c.pointer("/HttpHeaderConfig/HttpHeaderName")?
                    .as_str()?
                    .to_string(),
                strings(c.pointer("/HttpHeaderConfig/Values")),
            ),
            "http-request-method" => {
                Cond::Method(strings(c.pointer("/HttpRequestMethodConfig/Values")))
            }
            "query-string" => Cond::Query(
                c.pointer("/QueryStringConfig/Values")?
                    .as_array()?
                    .iter()
                    .map(|kv| {
                        (
                            kv.get("Key").and_then(Value::as_str).map(String::from),
                            kv.get("Value")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        )
                    })
                    .collect(),
            ),
            "source-ip" => Cond::Source(
                strings(c.pointer("/SourceIpConfig/Values"))
                    .iter()
                    .filter_map(|s| Cidr::parse(s))
                    .collect(),
            ),
            _ => return None,
        })
    }

    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Cond::Path(ps) => ps
                .iter()
                .any(|p| wildcard(p.as_bytes(), r.path.as_bytes(), false)),
            Cond::Host(hs) => {
                let host = r.host.rsplit_once(':').map_or(r.host, |(h, p)| {
                    if p.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        r.host
                    }
                });
                hs.iter()
                    .any(|h| wildcard(h.as_bytes(), host.as_bytes(), true))
            }
            Cond::Header(name, vs) => r.headers.get_all(name.as_str()).iter().any(|v| {
                let v = v.as_bytes();
                vs.iter().any(|p| wildcard(p.as_bytes(), v, true))
            }),
            Cond::Method(ms) => ms.iter().any(|m| m == r.method),
            Cond::Query(pairs) => {
                let params: Vec<(String, String)> = form_pairs(r.query);
                pairs.iter().any(|(k, v)| {
                    params.iter().any(|(pk, pv)| {
                        k.as_ref().is_none_or(|k| query_wildcard(k, pk)) && query_wildcard(v, pv)
                    })
                })
            }
            Cond::Source(cidrs) => cidrs.iter().any(|c| c.contains(r.peer)),
        }
    }
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_as_alb_documents_them() {
        assert!(wildcard(b"/api/*", b"/api/users", false));
        assert!(wildcard(b"/api/*", b"/api/", false));
        assert!(!wildcard(b"/api/*", b"/api", false));
        assert!(wildcard(b"/img/?.png", b"/img/a.png", false));
        assert!(!wildcard(b"/img/?.png", b"/img/ab.png", false));
        assert!(!wildcard(b"/API/*", b"/api/x", false));
        assert!(wildcard(b"*.example.com", b"WWW.Example.com", true));
        assert!(!wildcard(b"*.example.com", b"example.com", true));
        assert!(wildcard(b"*", b"", false));
        assert!(wildcard(b"a*b*c", b"axxbyyc", false));
        assert!(!wildcard(b"a*b*c", b"axxbyy", false));
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("127.0.0.0/8").unwrap_or(Cidr {
            net: IpAddr::from([0, 0, 0, 0]),
            bits: 32,
        });
        assert!(c.contains("127.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!c.contains("10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(
            c.contains(
                "::ffff:127.0.0.1"
                    .parse()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]))
            )
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("::/0").is_some());
        assert_eq!(
            form_pairs("a=1%202&b+c=%zz"),
            [
                ("a".to_string(), "1 2".to_string()),
                ("b c".to_string(), "%zz".to_string())
            ]
        );
    }
}

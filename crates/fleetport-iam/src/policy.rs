//! Policy documents: parsing with IAM's validation texts, and evaluation of one request against
//! a set of compiled policies (explicit deny wins, then any allow, else an implicit deny).
//!
//! Matching follows the IAM User Guide: actions compare case-insensitively with `*` and `?`
//! anywhere; resources compare ARN segment by segment (the last segment spans `:` and `/`),
//! case-sensitively; every condition operator block, every key in it and at least one value per
//! key must match. Policy variables (`${aws:username}`) are resolved only under version
//! 2012-10-17, and a statement whose variable cannot be resolved does not apply.

use std::collections::HashSet;
use std::net::IpAddr;

use fleetport_proto::auth::{Decision, Principal, PrincipalKind, RequestFacts};
use serde_json::Value;

/// Why a document was refused (`MalformedPolicyDocument`'s message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::error::Error for Malformed {}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed(m: &str) -> Malformed {
    Malformed(m.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A list of patterns, or everything but them (`NotAction`, `NotResource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patterns {
    pub negated: bool,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The operator without its modifiers, e.g. `StringLike`.
    pub operator: String,
    pub if_exists: bool,
    /// `ForAnyValue` / `ForAllValues`, when given.
    pub set: Option<SetOperator>,
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOperator {
    AnyValue,
    AllValues,
}

/// Who a resource policy's statement is about (`Principal` / `NotPrincipal`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principals {
    pub negated: bool,
    /// `"*"` or `{"AWS": "*"}`.
    pub anyone: bool,
    /// Account IDs, `arn:aws:iam::A:root`, user, role and assumed-role session ARNs.
    pub aws: Vec<String>,
    /// Service principals (`ecs-tasks.amazonaws.com`).
    pub service: Vec<String>,
}

/// How a principal entry matched the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Named {
    /// Through its account (`123456789012`, `…:root`) or `*`.
    Account,
    /// By its own ARN (user, role or session).
    Directly,
}

impl Principals {
    /// Whether the statement is about `caller`, and how specifically.
    pub fn matches(&self, caller: &Principal) -> Option<Named> {
        let hit = if self.anyone {
            Some(Named::Account)
        } else {
            self.aws
                .iter()
                .filter_map(|p| aws_principal_matches(p, caller))
                .max()
        };
        match (hit, self.negated) {
            (Some(n), false) => Some(n),
            (None, true) => Some(Named::Account),
            _ => None,
        }
    }

    /// Whether the statement names the AWS service (`ecs-tasks.amazonaws.com`).
    pub fn names_service(&self, service: &str) -> bool {
        (self.anyone || self.service.iter().any(|s| s == service)) != self.negated
    }
}

fn aws_principal_matches(p: &str, caller: &Principal) -> Option<Named> {
    if p == "*" {
        return Some(Named::Account);
    }
    let account = &caller.account_id;
    if p == account || *p == format!("arn:aws:iam::{account}:root") {
        return Some(Named::Account);
    }
    if *p == caller.arn {
        return Some(Named::Directly);
    }
    if let PrincipalKind::AssumedRole { role_arn, .. } = &caller.kind
        && p == role_arn
    {
        return Some(Named::Directly);
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    /// Resource policies only.
    pub principals: Option<Principals>,
    pub actions: Patterns,
    /// None in a resource policy that leaves it out (the resource is implied).
    pub resources: Option<Patterns>,
    pub conditions: Vec<Condition>,
}

/// A parsed policy document, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `2012-10-17` enables policy variables.
    pub version: String,
    pub statements: Vec<Statement>,
}

impl Policy {
    /// Whether a condition tests a resource's tags (`aws:ResourceTag/…`, `ecs:ResourceTag/…`),
    /// by key or through a `${…}` variable in its values.
    pub fn tests_resource_tags(&self) -> bool {
        let mentions = |t: &str| t.to_ascii_lowercase().contains("resourcetag/");
        self.statements.iter().any(|s| {
            s.conditions
                .iter()
                .any(|c| mentions(&c.key) || c.values.iter().any(|v| mentions(v)))
        })
    }
}

const OPERATORS: &[&str] = &[
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "IpAddress",
    "NotIpAddress",
    "ArnEquals",
    "ArnNotEquals",
    "ArnLike",
    "ArnNotLike",
    "Null",
];

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
        _ => None,
    }
}

/// Condition values may be strings, numbers or booleans (JSON `true` for `Bool`).
fn condition_values(v: &Value) -> Option<Vec<String>> {
    let one = |x: &Value| match x {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match v {
        Value::Array(a) => a.iter().map(one).collect(),
        x => one(x).map(|s| vec![s]),
    }
}

/// What kind of document is being parsed: their rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Managed and inline policies of users, groups and roles.
    Identity,
    /// Resource policies (ECR repository policies): principals, optional resource.
    Resource,
    /// A role's trust policy: principals, and no resource.
    Trust,
}

/// Parses and validates a policy document as IAM does.
pub fn parse(text: &str, kind: Kind) -> Result<Policy, Malformed> {
    let doc: Value =
        serde_json::from_str(text).map_err(|_| malformed("Syntax errors in policy."))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| malformed("Syntax errors in policy."))?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
            return Err(malformed("Syntax errors in policy."));
        }
    }
    let version = match obj.get("Version") {
        None => "2008-10-17".to_string(),
        Some(Value::String(v)) if v == "2012-10-17" || v == "2008-10-17" => v.clone(),
        Some(_) => {
            return Err(malformed(
                "Policy document must be version 2012-10-17 or greater.",
            ));
        }
    };
    let raw = match obj.get("Statement") {
        Some(Value::Array(a)) => a.clone(),
        Some(o @ Value::Object(_)) => vec![o.clone()],
        _ => return Err(malformed("Syntax errors in policy.")),
    };
    let mut sids = HashSet::new();
    let mut statements = Vec::with_capacity(raw.len());
    for st in &raw {
        let st = st
            .as_object()
            .ok_or_else(|| malformed("Syntax errors in policy."))?;
        for k in st.keys() {
            if !matches!(
                k.as_str(),
                "Sid"
                    | "Effect"
                    | "Action"
                    | "NotAction"
                    | "Resource"
                    | "NotResource"
                    | "Condition"
                    | "Principal"
                    | "NotPrincipal"
            ) {
                return Err(malformed("Syntax errors in policy."));
            }
        }
        let sid = match st.get("Sid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed("Syntax errors in policy.")),
        };
        if let Some(s) = &sid
            && kind == Kind::Identity
            && !s.is_empty()
            && !sids.insert(s.clone())
        {
            return Err(malformed(
                "Statement IDs (SID) in a single policy must be unique.",
            ));
        }
        let effect = match st.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err(malformed("Syntax errors in policy.")),
        };
        let has_principal = st.contains_key("Principal") || st.contains_key("NotPrincipal");
        if kind == Kind::Identity && has_principal {
            return Err(malformed("Policy document should not specify a principal."));
        }
        if kind == Kind::Trust && (st.contains_key("Resource") || st.contains_key("NotResource")) {
            return Err(malformed("Has prohibited field Resource"));
        }
        if kind != Kind::Identity && !has_principal {
            return Err(malformed(
                "Invalid principal in policy: The passed in policy has a statement with no principals!",
            ));
        }
        let principals = match (st.get("Principal"), st.get("NotPrincipal")) {
            (Some(p), None) => Some(parse_principals(p, false)?),
            (None, Some(p)) => Some(parse_principals(p, true)?),
            (None, None) => None,
            _ => return Err(malformed("Syntax errors in policy.")),
        };
        let actions = match (st.get("Action"), st.get("NotAction")) {
            (Some(a), None) => Patterns {
                negated: false,
                values: strings(a).ok_or_else(|| malformed("Syntax errors in policy."))?,
            },
            (None, Some(a)) => Patterns {
                negated: true,
                values: strings(a).ok_or_else(|| malformed("Syntax errors in policy."))?,
            },
            (None, None) => return Err(malformed("Policy statement must contain actions.")),
            _ => return Err(malformed("Syntax errors in policy.")),
        };
        if actions.values.is_empty() {
            return Err(malformed("Policy statement must contain actions."));
        }
        for a in &actions.values {
            if a != "*" && !a.contains(':') {
                return Err(malformed(
                    "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.",
                ));
            }
        }
        let resources = match (st.get("Resource"), st.get("NotResource")) {
            (Some(r), None) => Some(Patterns {
                negated: false,
                values: strings(r).ok_or_else(|| malformed("Syntax errors in policy."))?,
            }),
            (None, Some(r)) => Some(Patterns {
                negated: true,
                values: strings(r).ok_or_else(|| malformed("Syntax errors in policy."))?,
            }),
            (None, None) if kind != Kind::Identity => None,
            (None, None) => return Err(malformed("Policy statement must contain resources.")),
            _ => return Err(malformed("Syntax errors in policy.")),
        };
        let conditions = match st.get("Condition") {
            None => Vec::new(),
            Some(Value::Object(blocks)) => parse_conditions(blocks)?,
            Some(_) => return Err(malformed("Syntax errors in policy.")),
        };
        statements.push(Statement {
            sid,
            effect,
            principals,
            actions,
            resources,
            conditions,
        });
    }
    Ok(Policy {
        version,
        statements,
    })
}

fn parse_principals(v: &Value, negated: bool) -> Result<Principals, Malformed> {
    let mut out = Principals {
        negated,
        ..Principals::default()
    };
    match v {
        Value::String(s) if s == "*" => out.anyone = true,
        Value::Object(m) => {
            for (kind, values) in m {
                let values =
                    strings(values).ok_or_else(|| malformed("Syntax errors in policy."))?;
                match kind.as_str() {
                    "AWS" => {
                        if values.iter().any(|v| v == "*") {
                            out.anyone = true;
                        }
                        out.aws.extend(values);
                    }
                    "Service" => out.service.extend(values),
                    "Federated" | "CanonicalUser" => {}
                    _ => return Err(malformed("Syntax errors in policy.")),
                }
            }
        }
        _ => return Err(malformed("Syntax errors in policy.")),
    }
    Ok(out)
}

fn parse_conditions(blocks: &serde_json::Map<String, Value>) -> Result<Vec<Condition>, Malformed> {
    let mut out = Vec::new();
    for (op, keys) in blocks {
        let (set, rest) = if let Some(r) = op.strip_prefix("ForAnyValue:") {
            (Some(SetOperator::AnyValue), r)
        } else if let Some(r) = op.strip_prefix("ForAllValues:") {
            (Some(SetOperator::AllValues), r)
        } else {
            (None, op.as_str())
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(b) if b != "Null" => (b, true),
            _ => (rest, false),
        };
        if !OPERATORS.contains(&base) {
            return Err(Malformed(format!("Invalid Condition type : {op}.")));
        }
        let keys = keys
            .as_object()
            .ok_or_else(|| malformed("Syntax errors in policy."))?;
        for (key, values) in keys {
            if !key.contains(':') {
                return Err(malformed(
                    "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.",
                ));
            }
            let values =
                condition_values(values).ok_or_else(|| malformed("Syntax errors in policy."))?;
            out.push(Condition {
                operator: base.to_string(),
                if_exists,
                set,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(out)
}

/// `*` matches any run of characters, `?` any one.
pub fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    // The common case, ASCII on both sides, runs on the bytes without allocating: this is on
    // every request a non-root key signs.
    if pattern.is_ascii() && text.is_ascii() {
        let eq = |a: &u8, b: &u8| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        return glob_with(pattern.as_bytes(), text.as_bytes(), b'*', b'?', eq);
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: &char, b: &char| {
        if ignore_case {
            a.to_lowercase().eq(b.to_lowercase())
        } else {
            a == b
        }
    };
    glob_with(&p, &t, '*', '?', eq)
}

fn glob_with<T: PartialEq>(p: &[T], t: &[T], any: T, one: T, eq: impl Fn(&T, &T) -> bool) -> bool {
    // Iterative matching with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || (p[pi] != any && eq(&p[pi], &t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == any {
        pi += 1;
    }
    pi == p.len()
}

/// ARN matching: the first five segments one by one, the rest (which may hold `:` and `/`)
/// as one.
pub fn arn_like(pattern: &str, arn: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (mut ps, mut ts) = (pattern.splitn(6, ':'), arn.splitn(6, ':'));
    if pattern.matches(':').count() < 5 || arn.matches(':').count() < 5 {
        return glob(pattern, arn, false);
    }
    ps.by_ref().zip(ts.by_ref()).all(|(p, t)| glob(p, t, false))
}

/// The request as conditions and variables see it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub principal: &'a Principal,
    /// The user's or role's tags (`aws:PrincipalTag/<key>`).
    pub principal_tags: &'a [(String, String)],
    pub action: &'a str,
    pub resource: &'a str,
    pub facts: &'a RequestFacts,
    /// Unix seconds, for `aws:CurrentTime` and `aws:EpochTime`.
    pub now: i64,
    /// Condition keys of this access alone (lower-cased names).
    pub context: &'a [(String, String)],
}

impl Request<'_> {
    /// The values of a context key (key names are case-insensitive); None when absent.
    fn context(&self, key: &str) -> Option<Vec<String>> {
        let k = key.to_ascii_lowercase();
        let own: Vec<String> = self
            .context
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(&k))
            .map(|(_, v)| v.clone())
            .collect();
        if !own.is_empty() {
            return Some(own);
        }
        let p = self.principal;
        let one = |s: String| Some(vec![s]);
        if let Some(tag) = k.strip_prefix("aws:principaltag/") {
            return self
                .principal_tags
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(tag))
                .map(|(_, v)| vec![v.clone()]);
        }
        match k.as_str() {
            "aws:requestedregion" if !self.facts.region.is_empty() => {
                one(self.facts.region.clone())
            }
            "aws:sourceip" => self.facts.source_ip.map(|ip| vec![ip.to_string()]),
            "aws:securetransport" => one(self.facts.secure_transport.to_string()),
            "aws:principalarn" => one(p.arn.clone()),
            "aws:principalaccount" => one(p.account_id.clone()),
            "aws:userid" => one(p.user_id.clone()),
            "aws:username" => match &p.kind {
                PrincipalKind::User { name } => one(name.clone()),
                _ => None,
            },
            "aws:principaltype" => one(match p.kind {
                PrincipalKind::Root => "Account",
                PrincipalKind::User { .. } => "User",
                PrincipalKind::AssumedRole { .. } => "AssumedRole",
            }
            .to_string()),
            "aws:tokenissuetime" => self.facts.token_issued_at.and_then(|t| {
                jiff::Timestamp::from_second(t)
                    .ok()
                    .map(|t| vec![t.to_string()])
            }),
            "aws:currenttime" => jiff::Timestamp::from_second(self.now)
                .ok()
                .map(|t| vec![t.to_string()]),
            "aws:epochtime" => one(self.now.to_string()),
            "aws:multifactorauthpresent" => None,
            _ => None,
        }
    }
}

/// Replaces `${…}` variables; None when one cannot be resolved (the statement then does not
/// apply).
fn substitute(text: &str, req: &Request<'_>) -> Option<String> {
    if !text.contains("${") {
        return Some(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        let inner = &after[..end];
        match inner {
            "*" => out.push('*'),
            "?" => out.push('?'),
            "$" => out.push('$'),
            _ => {
                let (key, default) = match inner.split_once(',') {
                    Some((k, d)) => (k.trim(), Some(d.trim().trim_matches('\'').to_string())),
                    None => (inner.trim(), None),
                };
                match req
                    .context(key)
                    .and_then(|v| v.into_iter().next())
                    .or(default)
                {
                    Some(v) => out.push_str(&v),
                    None => return None,
                }
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn matches_patterns(
    patterns: &Patterns,
    value: &str,
    policy: &Policy,
    req: &Request<'_>,
    action: bool,
) -> Option<bool> {
    let mut any = false;
    for p in &patterns.values {
        let p = if !action && policy.version == "2012-10-17" && p.contains("${") {
            std::borrow::Cow::Owned(substitute(p, req)?)
        } else {
            std::borrow::Cow::Borrowed(p.as_str())
        };
        let hit = if action {
            glob(&p, value, true)
        } else {
            arn_like(&p, value)
        };
        if hit {
            any = true;
            break;
        }
    }
    Some(any != patterns.negated)
}

fn parse_date(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

fn cidr_contains(cidr: &str, ip: &str) -> bool {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let (net, bits) = match cidr.split_once('/') {
        Some((n, b)) => (n, b.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Whether one context value satisfies an operator against one policy value.
fn value_matches(op: &str, policy: &str, actual: &str) -> bool {
    match op {
        "StringEquals" | "StringNotEquals" => policy == actual,
        "StringEqualsIgnoreCase" | "StringNotEqualsIgnoreCase" => {
            policy.eq_ignore_ascii_case(actual)
        }
        "StringLike" | "StringNotLike" => glob(policy, actual, false),
        "ArnEquals" | "ArnNotEquals" | "ArnLike" | "ArnNotLike" => arn_like(policy, actual),
        "Bool" => policy.eq_ignore_ascii_case(actual),
        "IpAddress" | "NotIpAddress" => cidr_contains(policy, actual),
        op if op.starts_with("Numeric") => {
            let (Ok(p), Ok(a)) = (policy.parse::<f64>(), actual.parse::<f64>()) else {
                return false;
            };
            match op {
                "NumericEquals" | "NumericNotEquals" => a == p,
                "NumericLessThan" => a < p,
                "NumericLessThanEquals" => a <= p,
                "NumericGreaterThan" => a > p,
                "NumericGreaterThanEquals" => a >= p,
                _ => false,
            }
        }
        op if op.starts_with("Date") => {
            let (Some(p), Some(a)) = (parse_date(policy), parse_date(actual)) else {
                return false;
            };
            match op {
                "DateEquals" | "DateNotEquals" => a == p,
                "DateLessThan" => a < p,
                "DateLessThanEquals" => a <= p,
                "DateGreaterThan" => a > p,
                "DateGreaterThanEquals" => a >= p,
                _ => false,
            }
        }
        _ => false,
    }
}

fn negated(op: &str) -> bool {
    matches!(
        op,
        "StringNotEquals"
            | "StringNotEqualsIgnoreCase"
            | "StringNotLike"
            | "ArnNotEquals"
            | "ArnNotLike"
            | "NotIpAddress"
            | "NumericNotEquals"
            | "DateNotEquals"
    )
}

fn condition_holds(c: &Condition, policy: &Policy, req: &Request<'_>) -> Option<bool> {
    let actual = req.context(&c.key);
    if c.operator == "Null" {
        let want_absent = c.values.iter().any(|v| v.eq_ignore_ascii_case("true"));
        return Some(actual.is_none() == want_absent);
    }
    let Some(actual) = actual else {
        // A missing key: false, except for negated operators and `…IfExists`.
        return Some(c.if_exists || negated(&c.operator));
    };
    let variables = policy.version == "2012-10-17"
        && (c.operator.starts_with("String")
            || c.operator.starts_with("Arn")
            || c.operator == "Bool");
    let mut values = Vec::with_capacity(c.values.len());
    for v in &c.values {
        values.push(if variables {
            substitute(v, req)?
        } else {
            v.clone()
        });
    }
    let neg = negated(&c.operator);
    let any_value = |a: &str| values.iter().any(|p| value_matches(&c.operator, p, a));
    let holds = match c.set {
        Some(SetOperator::AllValues) => actual.iter().all(|a| any_value(a) != neg),
        Some(SetOperator::AnyValue) => actual.iter().any(|a| any_value(a) != neg),
        None => {
            // A single-valued key: negated operators hold when no value matches.
            let hit = actual.iter().any(|a| any_value(a));
            hit != neg
        }
    };
    Some(holds)
}

/// Whether a statement applies to the request (None: an unresolvable variable, so it does not).
fn applies(st: &Statement, policy: &Policy, req: &Request<'_>) -> bool {
    let action = matches_patterns(&st.actions, req.action, policy, req, true).unwrap_or(false);
    if !action {
        return false;
    }
    let resource = match &st.resources {
        None => true,
        Some(r) => matches_patterns(r, req.resource, policy, req, false).unwrap_or(false),
    };
    if !resource {
        return false;
    }
    st.conditions
        .iter()
        .all(|c| condition_holds(c, policy, req).unwrap_or(false))
}

/// A resource policy's (trust policy's) verdict on the caller: the strongest way an applicable
/// statement names them, and whether one denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceVerdict {
    Deny,
    Allow(Named),
    Silent,
}

/// Evaluates a resource policy (statements with principals) for the caller.
pub fn evaluate_resource(policy: &Policy, req: &Request<'_>) -> ResourceVerdict {
    let mut best: Option<Named> = None;
    for st in &policy.statements {
        let Some(named) = st
            .principals
            .as_ref()
            .and_then(|p| p.matches(req.principal))
        else {
            continue;
        };
        if !applies(st, policy, req) {
            continue;
        }
        match st.effect {
            Effect::Deny => return ResourceVerdict::Deny,
            Effect::Allow => best = best.max(Some(named)),
        }
    }
    best.map_or(ResourceVerdict::Silent, ResourceVerdict::Allow)
}

/// Evaluates identity policies for one request: an applicable Deny wins, else an applicable
/// Allow allows, else the request is implicitly denied.
pub fn evaluate<'p>(policies: impl IntoIterator<Item = &'p Policy>, req: &Request<'_>) -> Decision {
    let mut allowed = false;
    for p in policies {
        for st in &p.statements {
            if applies(st, p, req) {
                match st.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Principal {
        Principal {
            account_id: "123456789012".into(),
            arn: "arn:aws:iam::123456789012:user/alice".into(),
            user_id: "AIDAEXAMPLEALICE".into(),
            kind: PrincipalKind::User {
                name: "alice".into(),
            },
        }
    }

    fn decide(doc: &str, action: &str, resource: &str) -> Decision {
        let p = parse(doc, Kind::Identity).unwrap_or_else(|e| panic!("{e}"));
        let principal = user();
        let facts = RequestFacts {
            region: "us-east-1".into(),
            source_ip: Some("127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            secure_transport: false,
            token_issued_at: None,
        };
        evaluate(
            [&p],
            &Request {
                principal_tags: &[],
                principal: &principal,
                action,
                resource,
                facts: &facts,
                now: 1_700_000_000,
                context: &[],
            },
        )
    }

    const REPO: &str = "arn:aws:ecr:us-east-1:123456789012:repository/app";

    #[test]
    fn globs_and_arns() {
        assert!(glob("iam:*AccessKey*", "iam:ListAccessKeys", true));
        assert!(glob("IAM:listaccesskeys", "iam:ListAccessKeys", true));
        assert!(!glob("ecr:Get*", "ecr:BatchGetImage", true));
        assert!(glob("a?c", "abc", false) && !glob("a?c", "abbc", false));
        assert!(glob("*", "", false) && !glob("a*b", "ac", false));
        assert!(arn_like("arn:aws:ecr:*:123456789012:repository/*", REPO));
        assert!(!arn_like("arn:aws:ecr:*:999999999999:repository/*", REPO));
        // The last part spans `/` and `:`; other segments do not.
        assert!(arn_like(
            "arn:aws:ecs:us-east-1:1:task/*",
            "arn:aws:ecs:us-east-1:1:task/c/x:y"
        ));
        assert!(!arn_like("arn:aws:s:*:1:f/*", "arn:aws:s:r:2:x:1:f/y"));
        assert!(!arn_like(
            "arn:aws:ecr:us-east-1:123456789012:repository/App",
            REPO
        ));
    }

    #[test]
    fn the_documented_rules() {
        let allow_ecr = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]}"#;
        assert_eq!(
            decide(allow_ecr, "ecr:CreateRepository", REPO),
            Decision::Allow
        );
        assert_eq!(
            decide(allow_ecr, "ecs:CreateCluster", "*"),
            Decision::ImplicitDeny
        );
        let deny_wins = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"*","Resource":"*"},
            {"Effect":"Deny","Action":"ecr:DeleteRepository","Resource":"arn:aws:ecr:*:*:repository/app"}]}"#;
        assert_eq!(
            decide(deny_wins, "ecr:DeleteRepository", REPO),
            Decision::ExplicitDeny
        );
        assert_eq!(decide(deny_wins, "ecr:PutImage", REPO), Decision::Allow);
        let not_action = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","NotAction":"iam:*","Resource":"*"}}"#;
        assert_eq!(
            decide(not_action, "iam:CreateUser", "*"),
            Decision::ImplicitDeny
        );
        assert_eq!(decide(not_action, "ecs:ListClusters", "*"), Decision::Allow);
        let not_resource = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"ecr:*","NotResource":"arn:aws:ecr:*:*:repository/secret*"}}"#;
        assert_eq!(decide(not_resource, "ecr:PutImage", REPO), Decision::Allow);
        assert_eq!(
            decide(
                not_resource,
                "ecr:PutImage",
                "arn:aws:ecr:us-east-1:1:repository/secret-x"
            ),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn variables_and_conditions() {
        let own = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"ecr:*","Resource":"arn:aws:ecr:*:*:repository/${aws:username}-*"}}"#;
        assert_eq!(
            decide(
                own,
                "ecr:PutImage",
                "arn:aws:ecr:us-east-1:1:repository/alice-web"
            ),
            Decision::Allow
        );
        assert_eq!(decide(own, "ecr:PutImage", REPO), Decision::ImplicitDeny);
        // Without the 2012 version the variable is literal text.
        let old = own.replace(r#""Version":"2012-10-17","#, "");
        assert_eq!(
            decide(
                &old,
                "ecr:PutImage",
                "arn:aws:ecr:us-east-1:1:repository/alice-web"
            ),
            Decision::ImplicitDeny
        );
        let region = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"aws:RequestedRegion":["eu-west-1","us-east-1"]}}}}"#;
        assert_eq!(decide(region, "ecs:ListClusters", "*"), Decision::Allow);
        let other = region.replace("us-east-1", "ap-south-1");
        assert_eq!(
            decide(&other, "ecs:ListClusters", "*"),
            Decision::ImplicitDeny
        );
        let ip = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Deny","Action":"*","Resource":"*","Condition":{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}}]}"#;
        assert_eq!(decide(ip, "ecs:ListClusters", "*"), Decision::ExplicitDeny);
        let tls = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Deny","Action":"*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":false}}}]}"#;
        assert_eq!(decide(tls, "ecs:ListClusters", "*"), Decision::ExplicitDeny);
        let missing = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"aws:PrincipalTag/team":"x"}}}}"#;
        assert_eq!(
            decide(missing, "ecs:ListClusters", "*"),
            Decision::ImplicitDeny
        );
        let if_exists = missing.replace("StringEquals", "StringEqualsIfExists");
        assert_eq!(decide(&if_exists, "ecs:ListClusters", "*"), Decision::Allow);
        let null = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Null":{"aws:PrincipalTag/team":"true"}}}}"#;
        assert_eq!(decide(null, "ecs:ListClusters", "*"), Decision::Allow);
    }

    #[test]
    fn malformed_documents_get_iam_texts() {
        let bad = |d: &str| parse(d, Kind::Identity).err().map(|e| e.0);
        assert_eq!(bad("{"), Some("Syntax errors in policy.".into()));
        assert_eq!(
            bad(r#"{"Version":"2011-01-01","Statement":[]}"#),
            Some("Policy document must be version 2012-10-17 or greater.".into())
        );
        assert_eq!(
            bad(r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Resource":"*"}}"#),
            Some("Policy statement must contain actions.".into())
        );
        assert_eq!(
            bad(r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"ecr:*"}}"#),
            Some("Policy statement must contain resources.".into())
        );
        assert_eq!(
            bad(
                r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"GetObject","Resource":"*"}}"#
            ),
            Some(
                "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.".into()
            )
        );
        assert_eq!(
            bad(
                r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"ecr:*","Resource":"*"}}"#
            ),
            Some("Policy document should not specify a principal.".into())
        );
        assert_eq!(
            bad(
                r#"{"Version":"2012-10-17","Statement":[{"Sid":"a","Effect":"Allow","Action":"ecr:*","Resource":"*"},{"Sid":"a","Effect":"Deny","Action":"ecr:*","Resource":"*"}]}"#
            ),
            Some("Statement IDs (SID) in a single policy must be unique.".into())
        );
        assert_eq!(
            bad(
                r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"ecr:*","Resource":"*","Condition":{"StringSorta":{"aws:x":"y"}}}}"#
            ),
            Some("Invalid Condition type : StringSorta.".into())
        );
    }
}

//! Listeners and their rules: create, describe, modify, delete, priorities, listener
//! attributes, and the checks on actions and conditions that AWS makes before accepting them.

use serde_json::{Map, Value, json};

use crate::Elb;
use crate::attrs;
use crate::error::{
    ElbResult, code, invalid_config, lb_not_found, listener_not_found, new_id, rule_not_found,
    tg_not_found, validation,
};
use crate::plane::Reservation;
use crate::state::{ElbState, Listener, Rule, forward_targets};
use crate::tags;

const ALB_PROTOCOLS: &[&str] = &["HTTP", "HTTPS"];
const NLB_PROTOCOLS: &[&str] = &["TCP", "TLS", "UDP", "TCP_UDP"];

/// The target-group protocols a listener of `protocol` can forward to: either ALB protocol;
/// on an NLB, TCP passes bytes through to TCP (or TCP_UDP) groups, TLS terminates and may
/// re-encrypt to TLS groups, and the UDP kinds need groups that take UDP.
fn target_protocols(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => ALB_PROTOCOLS,
        "TCP" => &["TCP", "TCP_UDP"],
        "TLS" => &["TCP", "TLS"],
        "UDP" => &["UDP", "TCP_UDP"],
        "TCP_UDP" => &["TCP_UDP"],
        _ => &[],
    }
}
const CONTENT_TYPES: &[&str] = &[
    "text/plain",
    "text/css",
    "text/html",
    "application/javascript",
    "application/json",
];
const MAX_RULES_PER_LB: usize = 100;

fn bad_action(message: impl Into<String>) -> crate::error::ElbResult<Vec<Value>> {
    Err(code("InvalidLoadBalancerAction", message))
}

/// Checks and normalises a list of actions for a listener of `protocol` on `lb_arn`, the way
/// AWS echoes them (Order set, forward actions in both their single and `ForwardConfig` forms).
fn check_actions(
    s: &ElbState,
    lb_arn: &str,
    lb_kind: &str,
    protocol: &str,
    actions: &[Value],
) -> ElbResult<Vec<Value>> {
    if actions.is_empty() {
        return bad_action("At least one action must be specified");
    }
    let mut out: Vec<Value> = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        let mut a = a.as_object().cloned().unwrap_or_default();
        let kind = a
            .get("Type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let order = a
            .get("Order")
            .and_then(Value::as_i64)
            .unwrap_or(i as i64 + 1);
        a.insert("Order".into(), json!(order));
        match kind.as_str() {
            "forward" => normalise_forward(s, lb_arn, lb_kind, protocol, &mut a)?,
            "redirect" | "fixed-response" if lb_kind == "network" => {
                return bad_action(format!(
                    "Action type '{kind}' is not supported by Network Load Balancers"
                ));
            }
            "redirect" => check_redirect(protocol, &a)?,
            "fixed-response" => check_fixed(&a)?,
            "authenticate-oidc" | "authenticate-cognito" | "jwt-validation" => {
                if protocol != "HTTPS" {
                    return bad_action(format!(
                        "Action type '{kind}' can only be used with HTTPS listeners"
                    ));
                }
                return bad_action(format!(
                    "Action type '{kind}' is not supported by Fleetport"
                ));
            }
            other => return bad_action(format!("Action type '{other}' is not valid")),
        }
        out.push(Value::Object(a));
    }
    out.sort_by_key(|a| a.get("Order").and_then(Value::as_i64).unwrap_or(0));
    let terminal = |a: &Value| {
        matches!(
            a.get("Type").and_then(Value::as_str),
            Some("forward" | "redirect" | "fixed-response")
        )
    };
    if out.iter().filter(|a| terminal(a)).count() != 1 || out.last().is_some_and(|a| !terminal(a)) {
        return bad_action(
            "Exactly one of the actions must be forward, redirect or fixed-response, and it must be the last",
        );
    }
    Ok(out)
}

fn normalise_forward(
    s: &ElbState,
    lb_arn: &str,
    lb_kind: &str,
    protocol: &str,
    a: &mut Map<String, Value>,
) -> ElbResult<()> {
    let single = a
        .get("TargetGroupArn")
        .and_then(Value::as_str)
        .map(String::from);
    let groups = forward_targets(&Value::Object(a.clone()));
    if let (Some(single), true) = (&single, a.contains_key("ForwardConfig"))
        && (groups.len() != 1 || &groups[0].0 != single)
    {
        return Err(validation(
            "TargetGroupArn and ForwardConfig must name the same single target group when both are given",
        ));
    }
    if groups.is_empty() {
        return Err(validation("A forward action must name a target group"));
    }
    if lb_kind == "network" && groups.len() > 1 {
        return Err(validation(
            "You cannot specify multiple target groups in a single action with a load balancer of type 'network'",
        ));
    }
    if groups.len() > 5 {
        return Err(code(
            "TooManyTargetGroups",
            "A forward action can name at most 5 target groups",
        ));
    }
    for (arn, weight) in &groups {
        let tg = s.tg(arn).ok_or_else(tg_not_found)?;
        if *weight > 999 {
            return Err(validation("Target group weights must be between 0 and 999"));
        }
        let compatible = target_protocols(protocol).contains(&tg.protocol.as_str());
        if !compatible {
            return Err(code(
                "IncompatibleProtocols",
                format!(
                    "The listener protocol '{protocol}' is not compatible with the target group protocol '{}'",
                    tg.protocol
                ),
            ));
        }
        if let Some(other) = s.lbs_of_tg(arn).into_iter().find(|l| l != lb_arn) {
            return Err(code(
                "TargetGroupAssociationLimit",
                format!(
                    "The target group '{arn}' is already associated with load balancer '{other}'"
                ),
            ));
        }
    }
    let mut config = a
        .get("ForwardConfig")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    config.insert(
        "TargetGroups".into(),
        Value::Array(
            groups
                .iter()
                .map(|(arn, w)| json!({"TargetGroupArn": arn, "Weight": w}))
                .collect(),
        ),
    );
    let stickiness = config
        .get("TargetGroupStickinessConfig")
        .cloned()
        .unwrap_or_else(|| json!({"Enabled": false}));
    if let Some(d) = stickiness.get("DurationSeconds").and_then(Value::as_i64)
        && !(1..=604_800).contains(&d)
    {
        return Err(validation(
            "Target group stickiness duration must be between 1 and 604800 seconds",
        ));
    }
    config.insert("TargetGroupStickinessConfig".into(), stickiness);
    a.insert("ForwardConfig".into(), Value::Object(config));
    if groups.len() == 1 {
        a.insert("TargetGroupArn".into(), json!(groups[0].0));
    } else {
        a.remove("TargetGroupArn");
    }
    Ok(())
}

fn check_redirect(protocol: &str, a: &Map<String, Value>) -> ElbResult<()> {
    let Some(r) = a.get("RedirectConfig").and_then(Value::as_object) else {
        return Err(validation("A redirect action needs a RedirectConfig"));
    };
    let field = |k: &str, default: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    let status = field("StatusCode", "");
    if status != "HTTP_301" && status != "HTTP_302" {
        return Err(validation(
            "Redirect status code must be HTTP_301 or HTTP_302",
        ));
    }
    let (proto, host, port, path) = (
        field("Protocol", "#{protocol}"),
        field("Host", "#{host}"),
        field("Port", "#{port}"),
        field("Path", "/#{path}"),
    );
    if proto == "#{protocol}" && host == "#{host}" && port == "#{port}" && path == "/#{path}" {
        return Err(code(
            "InvalidLoadBalancerAction",
            "The redirect would send requests back to the same location: change at least one of protocol, host, port or path",
        ));
    }
    if protocol == "HTTPS" && proto == "HTTP" {
        return Err(code(
            "InvalidLoadBalancerAction",
            "Redirects from HTTPS to HTTP are not allowed",
        ));
    }
    if !["#{protocol}", "HTTP", "HTTPS"].contains(&proto.as_str()) {
        return Err(validation(
            "Redirect protocol must be HTTP, HTTPS or #{protocol}",
        ));
    }
    if host.len() > 128 || path.len() > 128 {
        return Err(validation(
            "Redirect host and path can be at most 128 characters",
        ));
    }
    if !path.starts_with('/') {
        return Err(validation("Redirect path must start with a '/'"));
    }
    Ok(())
}

fn check_fixed(a: &Map<String, Value>) -> ElbResult<()> {
    let Some(f) = a.get("FixedResponseConfig").and_then(Value::as_object) else {
        return Err(validation(
            "A fixed-response action needs a FixedResponseConfig",
        ));
    };
    let status = f
        .get("StatusCode")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let b = status.as_bytes();
    if b.len() != 3 || !matches!(b[0], b'2' | b'4' | b'5') || !b.iter().all(u8::is_ascii_digit) {
        return Err(validation(format!(
            "Fixed response status code '{status}' must be a 2XX, 4XX or 5XX code"
        )));
    }
    if let Some(ct) = f.get("ContentType").and_then(Value::as_str)
        && !CONTENT_TYPES.contains(&ct)
    {
        return Err(validation(format!(
            "Fixed response content type '{ct}' must be one of {}",
            CONTENT_TYPES.join(", ")
        )));
    }
    if f.get("MessageBody")
        .and_then(Value::as_str)
        .is_some_and(|m| m.chars().count() > 1024)
    {
        return Err(validation(
            "Fixed response message body can be at most 1024 characters",
        ));
    }
    Ok(())
}

/// The string values of a condition's `*Config` (non-strings read as empty, and refused).
fn config_values(config: &Value) -> Vec<&str> {
    config
        .get("Values")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or_default()).collect())
        .unwrap_or_default()
}

/// The condition fields and where each keeps its values.
fn config_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "host-header" => "HostHeaderConfig",
        "path-pattern" => "PathPatternConfig",
        "http-header" => "HttpHeaderConfig",
        "http-request-method" => "HttpRequestMethodConfig",
        "query-string" => "QueryStringConfig",
        "source-ip" => "SourceIpConfig",
        _ => return None,
    })
}

fn check_conditions(conditions: &[Value]) -> ElbResult<Vec<Value>> {
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut values_total = 0;
    for c in conditions {
        let mut c = c.as_object().cloned().unwrap_or_default();
        let field = c
            .get("Field")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = config_key(&field)
            .ok_or_else(|| validation(format!("Condition field '{field}' is not valid")))?;
        if field != "http-header" && field != "query-string" {
            if seen.contains(&field) {
                return Err(validation(format!(
                    "A rule can have at most one '{field}' condition"
                )));
            }
            seen.push(field.clone());
        }
        let legacy = c.get("Values").and_then(Value::as_array).cloned();
        if legacy.is_some() && !matches!(field.as_str(), "host-header" | "path-pattern") {
            return Err(validation(format!(
                "The 'Values' field is not supported for condition '{field}'; use {key}"
            )));
        }
        if let (Some(l), true) = (&legacy, c.contains_key(key)) {
            let inner = c.get(key).and_then(|v| v.get("Values")).cloned();
            if inner.as_ref().and_then(Value::as_array) != Some(l) {
                return Err(validation(format!(
                    "'Values' and '{key}' must not differ in condition '{field}'"
                )));
            }
        }
        if let Some(l) = &legacy {
            c.insert(key.into(), json!({"Values": l}));
        }
        let config = c.get(key).cloned().unwrap_or(Value::Null);
        let count = config
            .get("Values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if count == 0 {
            return Err(validation(format!(
                "Condition '{field}' needs at least one value"
            )));
        }
        values_total += count;
        match field.as_str() {
            "path-pattern" | "host-header" => {
                for v in config_values(&config) {
                    if v.is_empty() || v.len() > 128 {
                        return Err(validation(format!(
                            "Condition value '{v}' must be 1 to 128 characters long"
                        )));
                    }
                }
                c.insert(
                    "Values".into(),
                    config.get("Values").cloned().unwrap_or(json!([])),
                );
            }
            "http-header" => {
                let name = config
                    .get("HttpHeaderName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if name.is_empty() || name.len() > 40 || name.eq_ignore_ascii_case("host") {
                    return Err(validation(format!(
                        "HTTP header name '{name}' must be 1 to 40 characters and not 'Host'"
                    )));
                }
            }
            "http-request-method" => {
                for v in config_values(&config) {
                    if v.is_empty()
                        || v.len() > 40
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
                    {
                        return Err(validation(format!(
                            "HTTP request method '{v}' is not valid"
                        )));
                    }
                }
            }
            "source-ip" => {
                for v in config_values(&config) {
                    if crate::plane::route::Cidr::parse(v).is_none() {
                        return Err(validation(format!(
                            "Source IP '{v}' is not a valid CIDR block"
                        )));
                    }
                }
            }
            _ => {}
        }
        out.push(Value::Object(c));
    }
    if values_total > 5 {
        return Err(validation(
            "A rule can have at most 5 condition values in all",
        ));
    }
    Ok(out)
}

fn render_listener(l: &Listener) -> Value {
    let mut out = json!({
        "ListenerArn": l.arn,
        "LoadBalancerArn": l.load_balancer_arn,
        "Port": l.port,
        "Protocol": l.protocol,
        "DefaultActions": l.default_actions,
    });
    if !l.certificates.is_empty() {
        out["Certificates"] = json!(l.certificates);
    }
    if let Some(p) = &l.ssl_policy {
        out["SslPolicy"] = json!(p);
    }
    if !l.alpn_policy.is_empty() {
        out["AlpnPolicy"] = json!(l.alpn_policy);
    }
    out
}

fn render_rule(r: &Rule) -> Value {
    json!({"RuleArn": r.arn, "Priority": r.priority.to_string(), "Conditions": r.conditions,
           "Actions": r.actions, "IsDefault": false})
}

fn render_default_rule(l: &Listener) -> Value {
    json!({"RuleArn": l.default_rule_arn, "Priority": "default", "Conditions": [],
           "Actions": l.default_actions, "IsDefault": true})
}

fn priority_of(input: &Value) -> ElbResult<u32> {
    match input.get("Priority").and_then(Value::as_i64) {
        Some(p) if (1..=50_000).contains(&p) => Ok(p as u32),
        Some(p) => Err(validation(format!(
            "Priority '{p}' must be between 1 and 50000"
        ))),
        None => Err(validation("A priority must be specified")),
    }
}

impl Elb {
    /// Opens `port` now when no listener of ours holds it yet, so a port that cannot be
    /// opened fails the call instead of leaving a listener that serves nothing. The caller
    /// keeps the reservation once its change is stored.
    fn claim_port(
        &self,
        s: &ElbState,
        lb_arn: &str,
        port: u16,
        protocol: &str,
    ) -> ElbResult<Option<Reservation>> {
        let users: Vec<(String, String)> = s
            .listeners
            .iter()
            .filter(|l| l.port == port)
            .map(|l| (l.protocol.clone(), l.load_balancer_arn.clone()))
            .chain(self.inner.shared.others_on_port(self.inner.slot, port))
            .collect();
        if users.is_empty() {
            return self
                .inner
                .ports
                .reserve(port, protocol)
                .map(Some)
                .map_err(|e| invalid_config(format!(
                    "Port {port} cannot be opened on 127.0.0.1: {e}. Choose another port, or run Fleetport with the right to bind it"
                )));
        }
        // Load balancers share 127.0.0.1: HTTP listeners on one port are told apart by the
        // Host header (each LB's DNS name); anything else needs the port to itself.
        let shareable =
            protocol == "HTTP" && users.iter().all(|(p, lb)| p == "HTTP" && lb != lb_arn);
        if shareable {
            Ok(None)
        } else {
            Err(invalid_config(format!(
                "Port {port} on 127.0.0.1 is already used by another {} listener on this host",
                users[0].0
            )))
        }
    }

    pub(crate) async fn create_listener(&self, input: Value) -> ElbResult<Value> {
        let lb_arn = fleetport_proto::input::owned(&input, "LoadBalancerArn");
        let new_tags = tags::parse(&input)?;
        let this = self.clone();
        let (listener, reservation) = self
            .change(move |s| {
                let lb = s.lb(&lb_arn).ok_or_else(lb_not_found)?.clone();
                let allowed = if lb.kind == "network" {
                    NLB_PROTOCOLS
                } else {
                    ALB_PROTOCOLS
                };
                let protocol = input
                    .get("Protocol")
                    .and_then(Value::as_str)
                    .unwrap_or(allowed[0])
                    .to_string();
                if !allowed.contains(&protocol.as_str()) {
                    return Err(validation(format!(
                        "Listener protocol '{protocol}' must be one of '{}'",
                        allowed.join(", ")
                    )));
                }
                let port = match input.get("Port").and_then(Value::as_i64) {
                    Some(p) if (1..=65535).contains(&p) => p as u16,
                    Some(p) => {
                        return Err(validation(format!(
                            "Port '{p}' must be between 1 and 65535"
                        )));
                    }
                    None => return Err(validation("A port must be specified")),
                };
                let actions = input
                    .get("DefaultActions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let actions = check_actions(s, &lb.arn, &lb.kind, &protocol, &actions)?;
                let tls = this.tls_settings(&input, &protocol, None)?;
                if let Some(old) = s
                    .listeners
                    .iter()
                    .find(|l| l.load_balancer_arn == lb.arn && l.port == port)
                {
                    if old.protocol == protocol
                        && old.default_actions == actions
                        && old.certificates == tls.certificates
                    {
                        return Ok((old.clone(), None));
                    }
                    return Err(code(
                        "DuplicateListener",
                        "A listener already exists on this port for this load balancer",
                    ));
                }
                if s.listeners
                    .iter()
                    .filter(|l| l.load_balancer_arn == lb.arn)
                    .count()
                    >= 50
                {
                    return Err(code(
                        "TooManyListeners",
                        "A load balancer can have at most 50 listeners",
                    ));
                }
                let reservation = this.claim_port(s, &lb.arn, port, &protocol)?;
                let lb_tail = lb.arn.split_once(":loadbalancer/").map_or("", |(_, t)| t);
                let lid = new_id();
                let listener = Listener {
                    arn: this.arn(&format!("listener/{lb_tail}/{lid}")),
                    load_balancer_arn: lb.arn.clone(),
                    port,
                    attributes: attrs::listener_defaults(&protocol),
                    protocol,
                    default_actions: actions,
                    certificates: tls.certificates,
                    extra_certificates: tls.extra_certificates,
                    ssl_policy: tls.ssl_policy,
                    alpn_policy: tls.alpn_policy,
                    default_rule_arn: this
                        .arn(&format!("listener-rule/{lb_tail}/{lid}/{}", new_id())),
                };
                tags::merge(s, &listener.arn, &new_tags)?;
                s.listeners.push(listener.clone());
                Ok((listener, reservation))
            })
            .await?;
        if let Some(r) = reservation {
            r.keep();
        }
        Ok(json!({"Listeners": [render_listener(&listener)]}))
    }

    pub(crate) fn describe_listeners(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let arns = fleetport_proto::input::strings(&input, "ListenerArns");
        let lb = fleetport_proto::input::string(&input, "LoadBalancerArn");
        let found: Vec<&Listener> = if !arns.is_empty() {
            if lb.is_some() {
                return Err(validation(
                    "Listener ARNs and a load balancer ARN cannot be specified at the same time",
                ));
            }
            let mut v = Vec::new();
            for a in &arns {
                v.push(s.listener(a).ok_or_else(listener_not_found)?);
            }
            v
        } else if let Some(lb) = lb {
            s.lb(lb).ok_or_else(lb_not_found)?;
            s.listeners
                .iter()
                .filter(|l| l.load_balancer_arn == lb)
                .collect()
        } else {
            return Err(validation(
                "You must specify either listener ARNs or a load balancer ARN",
            ));
        };
        let items = found
            .into_iter()
            .map(|l| (l.arn.clone(), render_listener(l)))
            .collect();
        crate::error::page(&input, "Listeners", items)
    }

    pub(crate) async fn modify_listener(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "ListenerArn");
        let this = self.clone();
        let (listener, reservation) = self
            .change(move |s| {
                let old = s.listener(&arn).ok_or_else(listener_not_found)?.clone();
                let lb = s
                    .lb(&old.load_balancer_arn)
                    .ok_or_else(lb_not_found)?
                    .clone();
                let mut next = old.clone();
                if let Some(p) = input.get("Protocol").and_then(Value::as_str) {
                    let allowed = if lb.kind == "network" {
                        NLB_PROTOCOLS
                    } else {
                        ALB_PROTOCOLS
                    };
                    if !allowed.contains(&p) {
                        return Err(validation(format!(
                            "Listener protocol '{p}' is not supported here"
                        )));
                    }
                    next.protocol = p.to_string();
                }
                if let Some(p) = input.get("Port").and_then(Value::as_i64) {
                    if !(1..=65535).contains(&p) {
                        return Err(validation(format!(
                            "Port '{p}' must be between 1 and 65535"
                        )));
                    }
                    next.port = p as u16;
                }
                if let Some(a) = input.get("DefaultActions").and_then(Value::as_array) {
                    next.default_actions = check_actions(s, &lb.arn, &lb.kind, &next.protocol, a)?;
                }
                let tls = this.tls_settings(&input, &next.protocol, Some(&old))?;
                next.certificates = tls.certificates;
                next.extra_certificates = tls.extra_certificates;
                next.ssl_policy = tls.ssl_policy;
                next.alpn_policy = tls.alpn_policy;
                let mut reservation = None;
                if next.port != old.port {
                    if s.listeners
                        .iter()
                        .any(|l| l.load_balancer_arn == lb.arn && l.port == next.port)
                    {
                        return Err(code(
                            "DuplicateListener",
                            "A listener already exists on this port for this load balancer",
                        ));
                    }
                    // The listener itself still holds its old port in `s`, so it is not
                    // counted as a user of the new one.
                    reservation = this.claim_port(s, &lb.arn, next.port, &next.protocol)?;
                } else if next.protocol != old.protocol
                    && (s.listeners.iter().any(|l| l.port == next.port && l.arn != old.arn)
                        || !this
                            .inner
                            .shared
                            .others_on_port(this.inner.slot, next.port)
                            .is_empty())
                {
                    // Only HTTP listeners share a port (told apart by Host).
                    return Err(invalid_config(format!(
                        "Port {} on 127.0.0.1 is shared with another load balancer's listener, so it must stay {}",
                        next.port, old.protocol
                    )));
                } else if next.protocol != old.protocol {
                    // A UDP socket, say, may be needed where only TCP was open.
                    let made = this
                        .inner
                        .ports
                        .reserve(next.port, &next.protocol)
                        .map_err(|e| {
                            invalid_config(format!(
                                "Port {} cannot be opened on 127.0.0.1 for {}: {e}",
                                next.port, next.protocol
                            ))
                        })?;
                    reservation = Some(made);
                }
                if let Some(l) = s.listener_mut(&arn) {
                    *l = next.clone();
                }
                Ok((next, reservation))
            })
            .await?;
        if let Some(r) = reservation {
            r.keep();
        }
        Ok(json!({"Listeners": [render_listener(&listener)]}))
    }

    pub(crate) async fn delete_listener(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "ListenerArn");
        self.change(move |s| {
            s.listener(&arn).ok_or_else(listener_not_found)?;
            let rules: Vec<String> = s
                .rules
                .iter()
                .filter(|r| r.listener_arn == arn)
                .map(|r| r.arn.clone())
                .collect();
            for r in &rules {
                s.tags.remove(r);
            }
            s.rules.retain(|r| r.listener_arn != arn);
            s.listeners.retain(|l| l.arn != arn);
            s.tags.remove(&arn);
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) fn describe_listener_attributes(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let l = s
            .listener(fleetport_proto::input::string(&input, "ListenerArn").unwrap_or_default())
            .ok_or_else(listener_not_found)?;
        Ok(json!({"Attributes": attrs::render(&l.attributes)}))
    }

    pub(crate) async fn modify_listener_attributes(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "ListenerArn");
        let attributes = self
            .change(move |s| {
                let l = s.listener_mut(&arn).ok_or_else(listener_not_found)?;
                attrs::apply("Listener", &mut l.attributes, &input)?;
                Ok(l.attributes.clone())
            })
            .await?;
        Ok(json!({"Attributes": attrs::render(&attributes)}))
    }

    pub(crate) async fn create_rule(&self, input: Value) -> ElbResult<Value> {
        let listener_arn = fleetport_proto::input::owned(&input, "ListenerArn");
        let priority = priority_of(&input)?;
        let new_tags = tags::parse(&input)?;
        let this = self.clone();
        let rule = self
            .change(move |s| {
                let l = s.listener(&listener_arn).ok_or_else(listener_not_found)?.clone();
                let lb = s.lb(&l.load_balancer_arn).ok_or_else(lb_not_found)?.clone();
                if lb.kind == "network" {
                    return Err(code("OperationNotPermitted", "Network Load Balancer listeners have no rules besides the default"));
                }
                let conditions = input.get("Conditions").and_then(Value::as_array).cloned().unwrap_or_default();
                if conditions.is_empty() {
                    return Err(validation("A rule needs at least one condition"));
                }
                let conditions = check_conditions(&conditions)?;
                let actions = input.get("Actions").and_then(Value::as_array).cloned().unwrap_or_default();
                let actions = check_actions(s, &lb.arn, &lb.kind, &l.protocol, &actions)?;
                if s.rules.iter().any(|r| r.listener_arn == l.arn && r.priority == priority) {
                    return Err(code("PriorityInUse", format!("Priority '{priority}' is currently in use")));
                }
                let on_lb = s
                    .rules
                    .iter()
                    .filter(|r| s.listener(&r.listener_arn).is_some_and(|x| x.load_balancer_arn == lb.arn))
                    .count();
                if on_lb >= MAX_RULES_PER_LB {
                    return Err(code("TooManyRules", format!("A load balancer can have at most {MAX_RULES_PER_LB} rules besides the defaults")));
                }
                let tail = l.arn.split_once(":listener/").map(|(_, t)| t.to_string()).unwrap_or_default();
                let rule = Rule {
                    arn: this.arn(&format!("listener-rule/{tail}/{}", new_id())),
                    listener_arn: l.arn.clone(),
                    priority,
                    conditions,
                    actions,
                };
                tags::merge(s, &rule.arn, &new_tags)?;
                s.rules.push(rule.clone());
                Ok(rule)
            })
            .await?;
        Ok(json!({"Rules": [render_rule(&rule)]}))
    }

    pub(crate) fn describe_rules(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let arns = fleetport_proto::input::strings(&input, "RuleArns");
        let listener = fleetport_proto::input::string(&input, "ListenerArn");
        let mut found: Vec<(u64, String, Value)> = Vec::new();
        if !arns.is_empty() {
            for a in &arns {
                if let Some(r) = s.rules.iter().find(|r| &r.arn == a) {
                    found.push((r.priority as u64, r.arn.clone(), render_rule(r)));
                } else if let Some(l) = s.listeners.iter().find(|l| &l.default_rule_arn == a) {
                    found.push((u64::MAX, l.default_rule_arn.clone(), render_default_rule(l)));
                } else {
                    return Err(rule_not_found());
                }
            }
        } else if let Some(la) = listener {
            let l = s.listener(la).ok_or_else(listener_not_found)?;
            found.extend(
                s.rules
                    .iter()
                    .filter(|r| r.listener_arn == l.arn)
                    .map(|r| (r.priority as u64, r.arn.clone(), render_rule(r))),
            );
            found.push((u64::MAX, l.default_rule_arn.clone(), render_default_rule(l)));
        } else {
            return Err(validation(
                "You must specify either rule ARNs or a listener ARN",
            ));
        }
        found.sort_by_key(|(p, _, _)| *p);
        let items = found.into_iter().map(|(_, k, v)| (k, v)).collect();
        crate::error::page(&input, "Rules", items)
    }

    pub(crate) async fn modify_rule(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "RuleArn");
        let out = self
            .change(move |s| {
                let conditions = input.get("Conditions").and_then(Value::as_array).cloned();
                let actions = input.get("Actions").and_then(Value::as_array).cloned();
                if let Some(l) = s
                    .listeners
                    .iter()
                    .find(|l| l.default_rule_arn == arn)
                    .cloned()
                {
                    if conditions.is_some_and(|c| !c.is_empty()) {
                        return Err(code(
                            "OperationNotPermitted",
                            "The default rule cannot have conditions",
                        ));
                    }
                    let lb = s.lb(&l.load_balancer_arn).ok_or_else(lb_not_found)?.clone();
                    let mut next = l.clone();
                    if let Some(a) = actions {
                        next.default_actions =
                            check_actions(s, &lb.arn, &lb.kind, &l.protocol, &a)?;
                    }
                    if let Some(x) = s.listener_mut(&l.arn) {
                        *x = next.clone();
                    }
                    return Ok(render_default_rule(&next));
                }
                let rule = s
                    .rules
                    .iter()
                    .find(|r| r.arn == arn)
                    .ok_or_else(rule_not_found)?
                    .clone();
                let l = s
                    .listener(&rule.listener_arn)
                    .ok_or_else(listener_not_found)?
                    .clone();
                let lb = s.lb(&l.load_balancer_arn).ok_or_else(lb_not_found)?.clone();
                let mut next = rule.clone();
                if let Some(c) = conditions {
                    next.conditions = check_conditions(&c)?;
                }
                if let Some(a) = actions {
                    next.actions = check_actions(s, &lb.arn, &lb.kind, &l.protocol, &a)?;
                }
                if let Some(x) = s.rules.iter_mut().find(|x| x.arn == arn) {
                    *x = next.clone();
                }
                Ok(render_rule(&next))
            })
            .await?;
        Ok(json!({"Rules": [out]}))
    }

    pub(crate) async fn delete_rule(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "RuleArn");
        self.change(move |s| {
            if s.listeners.iter().any(|l| l.default_rule_arn == arn) {
                return Err(code(
                    "OperationNotPermitted",
                    "The default rule cannot be deleted",
                ));
            }
            if !s.rules.iter().any(|r| r.arn == arn) {
                return Err(rule_not_found());
            }
            s.rules.retain(|r| r.arn != arn);
            s.tags.remove(&arn);
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) async fn set_rule_priorities(&self, input: Value) -> ElbResult<Value> {
        let pairs = input
            .get("RulePriorities")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let rules = self
            .change(move |s| {
                let mut changed = Vec::new();
                for p in &pairs {
                    let arn = p.get("RuleArn").and_then(Value::as_str).unwrap_or_default();
                    let priority = priority_of(p)?;
                    if s.listeners.iter().any(|l| l.default_rule_arn == arn) {
                        return Err(code(
                            "OperationNotPermitted",
                            "The priority of the default rule cannot be changed",
                        ));
                    }
                    let r = s
                        .rules
                        .iter_mut()
                        .find(|r| r.arn == arn)
                        .ok_or_else(rule_not_found)?;
                    r.priority = priority;
                    changed.push(arn.to_string());
                }
                // Checked after every change, so swapping two rules' priorities in one call works.
                let mut seen = std::collections::HashSet::new();
                for r in &s.rules {
                    if !seen.insert((r.listener_arn.clone(), r.priority)) {
                        return Err(code(
                            "PriorityInUse",
                            format!("Priority '{}' is currently in use", r.priority),
                        ));
                    }
                }
                Ok(s.rules
                    .iter()
                    .filter(|r| changed.contains(&r.arn))
                    .map(render_rule)
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(json!({"Rules": rules}))
    }
}

//! Task placement for the EC2 launch type: which instances can hold a task (CPU, memory, ports,
//! agent connected, ACTIVE), constraints (`distinctInstance`, `memberOf` with the cluster query
//! language), and strategies (`binpack`, `spread`, `random`), in ECS's order: filter by resources,
//! filter by constraints, rank by strategies.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{EcsResult, invalid};
use crate::instance::{InstanceRecord, Usage};

/// One comparison of the cluster query language.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A cluster query: terms joined by `and` within groups, groups joined by `or`
/// (`and` binds tighter, as in ECS). Parentheses and regex matches are not supported yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr(Vec<Vec<Term>>);

fn bad(expr: &str) -> crate::error::EcsResult<Expr> {
    Err(invalid(format!("Invalid expression: {expr}")))
}

fn split_words<'a>(s: &'a str, word: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = s;
    let pat = format!(" {word} ");
    while let Some(i) = rest.to_ascii_lowercase().find(&pat) {
        out.push(&rest[..i]);
        rest = &rest[i + pat.len()..];
    }
    out.push(rest);
    out
}

impl Expr {
    pub fn parse(expr: &str) -> EcsResult<Self> {
        let normal = expr.replace("&&", " and ").replace("||", " or ");
        let mut groups = Vec::new();
        for group in split_words(&normal, "or") {
            let mut terms = Vec::new();
            for t in split_words(group, "and") {
                let t = t.trim();
                let Some(term) = parse_term(t) else {
                    return bad(expr);
                };
                terms.push(term);
            }
            groups.push(terms);
        }
        if groups.is_empty() {
            return bad(expr);
        }
        Ok(Self(groups))
    }

    /// `seen_after`: agents that polled after it count as connected.
    pub fn matches(&self, inst: &InstanceRecord, seen_after: f64) -> bool {
        self.0
            .iter()
            .any(|g| g.iter().all(|t| term_matches(t, inst, seen_after)))
    }
}

fn parse_list(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn parse_term(t: &str) -> Option<Term> {
    let words: Vec<&str> = t.splitn(3, char::is_whitespace).collect();
    let subject = words.first()?.trim().to_string();
    if subject.is_empty() {
        return None;
    }
    let op = words.get(1).map(|s| s.trim()).unwrap_or("");
    let arg = words.get(2).map(|s| s.trim()).unwrap_or("");
    match (op, arg.is_empty()) {
        ("exists", true) => Some(Term::Exists(subject)),
        ("!exists", true) => Some(Term::NotExists(subject)),
        ("==" | "equals", false) => Some(Term::Eq(subject, arg.to_string())),
        ("!=" | "not_equals", false) => Some(Term::Ne(subject, arg.to_string())),
        ("in", false) => Some(Term::In(subject, parse_list(arg)?)),
        ("!in" | "not_in", false) => Some(Term::NotIn(subject, parse_list(arg)?)),
        _ => None,
    }
}

fn subject_value(subject: &str, inst: &InstanceRecord, now: f64) -> Option<String> {
    if let Some(name) = subject.strip_prefix("attribute:") {
        return inst.attribute(name).map(String::from);
    }
    match subject {
        "ec2InstanceId" => Some(inst.ec2_instance_id.clone()),
        "agentConnected" => Some(inst.connected(now).to_string()),
        _ => None,
    }
}

fn term_matches(t: &Term, inst: &InstanceRecord, now: f64) -> bool {
    match t {
        Term::Eq(s, v) => subject_value(s, inst, now).as_deref() == Some(v.as_str()),
        Term::Ne(s, v) => subject_value(s, inst, now).as_deref() != Some(v.as_str()),
        Term::Exists(s) => subject_value(s, inst, now).is_some(),
        Term::NotExists(s) => subject_value(s, inst, now).is_none(),
        Term::In(s, vs) => subject_value(s, inst, now).is_some_and(|v| vs.contains(&v)),
        Term::NotIn(s, vs) => !subject_value(s, inst, now).is_some_and(|v| vs.contains(&v)),
    }
}

/// CPU, memory and static host ports: what one task holds on its instance, or what all the
/// tasks on an instance hold together.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub cpu: i64,
    pub memory: i64,
    pub ports: Vec<String>,
    pub ports_udp: Vec<String>,
}

impl Reservation {
    pub fn add(&mut self, other: &Reservation) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.ports.extend(other.ports.iter().cloned());
        self.ports_udp.extend(other.ports_udp.iter().cloned());
    }
}

/// Why an instance cannot take the task (ECS's failure reasons), or `None` if it can.
pub fn misfit(
    inst: &InstanceRecord,
    u: &Usage,
    d: &Reservation,
    seen_after: f64,
) -> Option<&'static str> {
    if inst.status != "ACTIVE" {
        return Some("INACTIVE");
    }
    if !inst.connected(seen_after) {
        return Some("AGENT");
    }
    if inst.cpu - u.held.cpu < d.cpu {
        return Some("RESOURCE:CPU");
    }
    if inst.memory - u.held.memory < d.memory {
        return Some("RESOURCE:MEMORY");
    }
    let taken = |p: &String| inst.ports.contains(p) || u.held.ports.contains(p);
    if d.ports.iter().any(taken) {
        return Some("RESOURCE:PORTS");
    }
    let taken_udp = |p: &String| inst.ports_udp.contains(p) || u.held.ports_udp.contains(p);
    if d.ports_udp.iter().any(taken_udp) {
        return Some("RESOURCE:PORTS_UDP");
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Binpack(String),
    Spread(String),
    Random,
}

pub fn parse_strategies(input: &Value) -> EcsResult<Vec<Strategy>> {
    let mut out = Vec::new();
    for s in input
        .get("placementStrategy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = s.get("type").and_then(Value::as_str).unwrap_or("");
        let field = s.get("field").and_then(Value::as_str).unwrap_or("");
        out.push(match kind {
            "binpack" => match field.to_ascii_lowercase().as_str() {
                "cpu" | "memory" => Strategy::Binpack(field.to_ascii_lowercase()),
                _ => {
                    return Err(invalid(
                        "The binpack placement strategy requires the field cpu or memory.",
                    ));
                }
            },
            "spread" if !field.is_empty() => Strategy::Spread(field.to_string()),
            "spread" => return Err(invalid("The spread placement strategy requires a field.")),
            "random" => Strategy::Random,
            other => {
                return Err(invalid(format!(
                    "Unknown placement strategy type '{other}'."
                )));
            }
        });
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub enum Constraint {
    DistinctInstance,
    MemberOf(Expr),
}

pub fn parse_constraints(items: &[Value]) -> EcsResult<Vec<Constraint>> {
    let mut out = Vec::new();
    for c in items {
        match c.get("type").and_then(Value::as_str).unwrap_or("") {
            "distinctInstance" => out.push(Constraint::DistinctInstance),
            "memberOf" => {
                let e = c.get("expression").and_then(Value::as_str).unwrap_or("");
                out.push(Constraint::MemberOf(Expr::parse(e)?));
            }
            other => {
                return Err(invalid(format!(
                    "Unknown placement constraint type '{other}'."
                )));
            }
        }
    }
    Ok(out)
}

/// One candidate while placing: an instance, what it holds, and how many of the task's group it runs.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub inst: InstanceRecord,
    pub usage: Usage,
    pub group_count: u64,
}

/// Orders fitting candidates by the strategies (the first strategy decides, later ones break ties);
/// returns the index of the chosen one.
pub fn choose(cands: &[&Candidate], strategies: &[Strategy], seed: u64) -> usize {
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    // Random first so that every later (stable) sort keeps a random order among equals.
    let mut x = seed | 1;
    for i in (1..idx.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        idx.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for s in strategies.iter().rev() {
        match s {
            Strategy::Binpack(f) => idx.sort_by_key(|&i| {
                let c = cands[i];
                if f == "cpu" {
                    c.inst.cpu - c.usage.held.cpu
                } else {
                    c.inst.memory - c.usage.held.memory
                }
            }),
            Strategy::Spread(f) => {
                if f == "instanceId" || f == "host" {
                    idx.sort_by_key(|&i| cands[i].group_count);
                } else {
                    let attr = f.strip_prefix("attribute:").unwrap_or(f);
                    let mut per_value: HashMap<String, u64> = HashMap::new();
                    for c in cands {
                        *per_value
                            .entry(c.inst.attribute(attr).unwrap_or("").to_string())
                            .or_default() += c.group_count;
                    }
                    idx.sort_by_key(|&i| {
                        per_value
                            .get(cands[i].inst.attribute(attr).unwrap_or(""))
                            .copied()
                            .unwrap_or(0)
                    });
                }
            }
            Strategy::Random => {}
        }
    }
    idx.first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(attrs: &[(&str, &str)]) -> InstanceRecord {
        InstanceRecord {
            arn: "arn".into(),
            id: "id".into(),
            cluster: "c".into(),
            ec2_instance_id: "i-1".into(),
            status: "ACTIVE".into(),
            registered_at: 0.0,
            last_seen: 100.0,
            version: 1,
            attributes: attrs
                .iter()
                .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
                .collect(),
            cpu: 1024,
            memory: 512,
            ports: vec!["22".into()],
            ports_udp: vec![],
            version_info: Value::Null,
            tags: vec![],
        }
    }

    #[test]
    fn query_language_subset() {
        let i = inst(&[("stack", "prod"), ("ecs.instance-type", "t3.small")]);
        let yes = [
            "attribute:stack == prod",
            "attribute:stack exists and attribute:ecs.instance-type in [t3.small, t3.large]",
            "attribute:stack == dev or attribute:stack == prod",
            "attribute:missing !exists",
            "attribute:stack != dev && ec2InstanceId == i-1",
        ];
        for e in yes {
            assert!(Expr::parse(e).unwrap().matches(&i, 40.0), "{e}");
        }
        assert!(
            !Expr::parse("attribute:stack == dev")
                .unwrap()
                .matches(&i, 40.0)
        );
        for e in ["", "attribute:stack ==", "attribute:stack ~ x", "x in nope"] {
            assert!(Expr::parse(e).is_err(), "{e}");
        }
    }

    #[test]
    fn misfit_reasons() {
        let i = inst(&[]);
        let u = Usage::default();
        let d = |cpu, memory, ports: &[&str]| Reservation {
            cpu,
            memory,
            ports: ports.iter().map(|p| p.to_string()).collect(),
            ports_udp: vec![],
        };
        assert_eq!(misfit(&i, &u, &d(10, 10, &[]), 40.0), None);
        assert_eq!(
            misfit(&i, &u, &d(2048, 10, &[]), 40.0),
            Some("RESOURCE:CPU")
        );
        assert_eq!(
            misfit(&i, &u, &d(1, 1024, &[]), 40.0),
            Some("RESOURCE:MEMORY")
        );
        assert_eq!(
            misfit(&i, &u, &d(1, 1, &["22"]), 40.0),
            Some("RESOURCE:PORTS")
        );
        assert_eq!(misfit(&i, &u, &d(1, 1, &[]), 100.0), Some("AGENT"));
    }

    #[test]
    fn binpack_prefers_the_fullest_and_spread_the_emptiest() {
        let mut a = inst(&[]);
        a.memory = 2048;
        let b = inst(&[]);
        let ca = Candidate {
            inst: a,
            usage: Usage::default(),
            group_count: 0,
        };
        let cb = Candidate {
            inst: b,
            usage: Usage::default(),
            group_count: 3,
        };
        let c = [&ca, &cb];
        for seed in 1..20 {
            assert_eq!(choose(&c, &[Strategy::Binpack("memory".into())], seed), 1);
            assert_eq!(
                choose(&c, &[Strategy::Spread("instanceId".into())], seed),
                0
            );
        }
    }
}

//! Task placement for the EC2 launch type: which instances can hold a task (CPU, memory, ports,
//! agent connected, ACTIVE), constraints (`distinctInstance`, `memberOf` with the cluster query
//! language), and strategies (`binpack`, `spread`, `random`), in ECS's order: filter by resources,
//! filter by constraints, rank by strategies.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{EcsResult, invalid};
use crate::instance::{InstanceRecord, Usage};
use crate::query::Query;

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
    MemberOf(Query),
}

pub fn parse_constraints(items: &[Value]) -> EcsResult<Vec<Constraint>> {
    let mut out = Vec::new();
    for c in items {
        match c.get("type").and_then(Value::as_str).unwrap_or("") {
            "distinctInstance" => out.push(Constraint::DistinctInstance),
            "memberOf" => {
                let e = c.get("expression").and_then(Value::as_str).unwrap_or("");
                out.push(Constraint::MemberOf(Query::parse(e)?));
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
    // splitmix64 spreads nearby seeds (one per task of a RunTask) before xorshift runs.
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x = (x ^ (x >> 31)) | 1;
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

    use crate::instance::test_instance as inst;

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

    #[test]
    fn random_spreads_consecutive_seeds_over_every_candidate() {
        let cands: Vec<Candidate> = (0..3)
            .map(|_| Candidate {
                inst: inst(&[]),
                usage: Usage::default(),
                group_count: 0,
            })
            .collect();
        let refs: Vec<&Candidate> = cands.iter().collect();
        // A RunTask's tasks get seeds base, base+1, …; each pick must still be random.
        for base in [0u64, 2, 1 << 40, 1_763_900_000_000] {
            let picks: Vec<usize> = (0..30)
                .map(|n| choose(&refs, &[Strategy::Random], base + n))
                .collect();
            let mut hits = [0; 3];
            picks.iter().for_each(|&p| hits[p] += 1);
            assert!(
                hits.iter().all(|h| (4..=18).contains(h)),
                "{base}: {hits:?}"
            );
            let same_as_neighbour = picks.chunks(2).filter(|p| p[0] == p[1]).count();
            assert!(same_as_neighbour <= 10, "{base}: {picks:?}");
        }
    }
}

//! Where tasks run: a launch type, or a capacity provider strategy (`base` then `weight`) over
//! the providers attached to the cluster. Fleetport's providers are FARGATE and FARGATE_SPOT,
//! both served by the managed capacity; a task reports the provider it was placed on.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::ClusterRecord;
use crate::error::{EcsResult, invalid};
use crate::task::MANAGED;

/// One item of a capacity provider strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub provider: String,
    pub base: u32,
    pub weight: u32,
}

/// How a task or service chose its capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capacity {
    LaunchType(String),
    Strategy(Vec<Item>),
}

/// Parses and checks a strategy against the providers attached to `cluster`.
pub fn parse_strategy(items: &[Value], cluster: &ClusterRecord) -> EcsResult<Vec<Item>> {
    if items.is_empty() {
        return Err(invalid(
            "The capacity provider strategy must contain at least one capacity provider.",
        ));
    }
    if items.len() > 20 {
        return Err(invalid(
            "A capacity provider strategy can contain at most 20 capacity providers.",
        ));
    }
    let mut out: Vec<Item> = Vec::new();
    for item in items {
        let provider = item
            .get("capacityProvider")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let weight = item.get("weight").and_then(Value::as_i64).unwrap_or(0);
        let base = item.get("base").and_then(Value::as_i64).unwrap_or(0);
        if !(0..=1000).contains(&weight) {
            return Err(invalid("The weight must be between 0 and 1000."));
        }
        if !(0..=100_000).contains(&base) {
            return Err(invalid("The base must be between 0 and 100000."));
        }
        if !cluster.capacity_providers.contains(&provider) {
            return Err(invalid(
                "The specified capacity provider strategy cannot contain a capacity provider that is not associated with the cluster. Associate the capacity provider with the cluster or specify a valid capacity provider and try again.",
            ));
        }
        if out.iter().any(|i| i.provider == provider) {
            return Err(invalid(format!(
                "The capacity provider {provider} is specified more than once in the capacity provider strategy."
            )));
        }
        out.push(Item {
            provider,
            base: base as u32,
            weight: weight as u32,
        });
    }
    if out.iter().filter(|i| i.base > 0).count() > 1 {
        return Err(invalid(
            "Only one capacity provider in a capacity provider strategy can have a base defined.",
        ));
    }
    if out.iter().all(|i| i.weight == 0) {
        return Err(invalid(
            "At least one capacity provider in a capacity provider strategy must have a weight greater than zero.",
        ));
    }
    Ok(out)
}

/// An explicit strategy wins, then a launch type, then the cluster's default strategy, then EC2.
/// StartTask (`direct`) names its instances, so it always runs on EC2.
pub fn resolve(
    launch_type: Option<&str>,
    strategy: Option<Vec<Value>>,
    cluster: &ClusterRecord,
    direct: bool,
) -> EcsResult<Capacity> {
    if launch_type.is_some() && strategy.is_some() {
        return Err(invalid(
            "Specifying both a launch type and capacity provider strategy is not supported. Remove one and try again.",
        ));
    }
    if let Some(items) = strategy {
        return Ok(Capacity::Strategy(parse_strategy(&items, cluster)?));
    }
    if let Some(lt) = launch_type {
        if lt != "EC2" && lt != MANAGED {
            return Err(invalid(format!(
                "Fleetport does not run the {lt} launch type; use EC2 or FARGATE."
            )));
        }
        return Ok(Capacity::LaunchType(lt.to_string()));
    }
    if !direct && !cluster.default_capacity_provider_strategy.is_empty() {
        return Ok(Capacity::Strategy(parse_strategy(
            &cluster.default_capacity_provider_strategy,
            cluster,
        )?));
    }
    Ok(Capacity::LaunchType("EC2".into()))
}

impl Capacity {
    /// The launch type tasks run with: every provider Fleetport has is managed capacity.
    pub fn launch_type(&self) -> &str {
        match self {
            Capacity::LaunchType(l) => l,
            Capacity::Strategy(_) => MANAGED,
        }
    }

    /// The provider of each of `count` new tasks, given how many tasks each provider already
    /// holds (`existing`); empty for a launch type. The base provider fills its base first; the
    /// rest go to the provider furthest below its weight's share (ties in list order), so
    /// `[{A, base 2, weight 1}, {B, weight 3}]` gives 10 tasks as A 4, B 6.
    pub fn split(&self, count: u32, existing: &[(String, u32)]) -> Vec<Option<String>> {
        let Capacity::Strategy(items) = self else {
            return Vec::new();
        };
        let mut held: Vec<u32> = items
            .iter()
            .map(|i| {
                existing
                    .iter()
                    .filter(|(p, _)| *p == i.provider)
                    .map(|(_, n)| *n)
                    .sum()
            })
            .collect();
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let pick = items
                .iter()
                .position(|i| i.base > 0)
                .filter(|&b| held[b] < items[b].base)
                .or_else(|| {
                    let mut best: Option<(usize, u64, u64)> = None;
                    for (n, i) in items.iter().enumerate().filter(|(_, i)| i.weight > 0) {
                        // Compare (beyond_base + 1) / weight as fractions.
                        let num = u64::from(held[n].saturating_sub(i.base)) + 1;
                        let den = u64::from(i.weight);
                        if best.is_none_or(|(_, bn, bd)| num * bd < bn * den) {
                            best = Some((n, num, den));
                        }
                    }
                    best.map(|(n, _, _)| n)
                });
            let Some(n) = pick else { break };
            held[n] += 1;
            out.push(Some(items[n].provider.clone()));
        }
        out
    }

    /// The service and deployment echo: `launchType` or `capacityProviderStrategy`.
    pub fn render_into(&self, o: &mut serde_json::Map<String, Value>) {
        match self {
            Capacity::LaunchType(l) => {
                o.insert("launchType".into(), json!(l));
            }
            Capacity::Strategy(items) => {
                o.insert(
                    "capacityProviderStrategy".into(),
                    Value::Array(
                        items
                            .iter()
                            .map(|i| {
                                json!({"capacityProvider": i.provider, "weight": i.weight, "base": i.base})
                            })
                            .collect(),
                    ),
                );
            }
        }
    }
}

/// The capacity providers every account has.
const BUILT_IN: [&str; 2] = ["FARGATE", "FARGATE_SPOT"];

impl crate::Ecs {
    /// DescribeCapacityProviders: FARGATE and FARGATE_SPOT (the only providers Fleetport has
    /// until Auto Scaling group providers come with EC2); unknown names are `failures`.
    pub fn describe_capacity_providers(&self, input: Value) -> EcsResult<Value> {
        let limit = fleetport_proto::paging::max_results(&input, 10, 10)?;
        let after = fleetport_proto::paging::decode_token(&input)?;
        let names = fleetport_proto::input::strings(&input, "capacityProviders");
        let with_tags = fleetport_proto::input::includes(&input, "include", "TAGS");
        let render = |name: &str| {
            let mut o = json!({
                "capacityProviderArn": self.scope.arn(&format!("capacity-provider/{name}")),
                "name": name,
                "status": "ACTIVE",
                "type": name,
            });
            if with_tags {
                o["tags"] = json!([]);
            }
            o
        };
        if names.is_empty() {
            let items: Vec<(String, Value)> = BUILT_IN
                .iter()
                .map(|n| (n.to_string(), render(n)))
                .collect();
            let (page, token) =
                fleetport_proto::paging::page(items, after.as_deref(), limit, false);
            return Ok(fleetport_proto::paging::with_token(
                json!({"capacityProviders": page, "failures": []}),
                token,
            ));
        }
        let mut found = Vec::new();
        let mut failures = Vec::new();
        for n in &names {
            let name = n.rsplit('/').next().unwrap_or(n);
            if BUILT_IN.contains(&name) {
                found.push(render(name));
            } else {
                failures.push(json!({"arn": n, "reason": "MISSING"}));
            }
        }
        Ok(json!({"capacityProviders": found, "failures": failures}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(items: &[(&str, u32, u32)]) -> Capacity {
        Capacity::Strategy(
            items
                .iter()
                .map(|(p, base, weight)| Item {
                    provider: p.to_string(),
                    base: *base,
                    weight: *weight,
                })
                .collect(),
        )
    }

    fn counts(split: &[Option<String>]) -> (usize, usize) {
        let a = split.iter().filter(|p| p.as_deref() == Some("A")).count();
        (a, split.len() - a)
    }

    #[test]
    fn base_first_then_weights() {
        let s = strategy(&[("A", 2, 1), ("B", 0, 3)]);
        assert_eq!(counts(&s.split(10, &[])), (4, 6));
        assert_eq!(counts(&s.split(1, &[])), (1, 0));
        // Growing a service from what it holds gives the same totals.
        let first = s.split(3, &[]);
        let (a, b) = counts(&first);
        let rest = s.split(7, &[("A".into(), a as u32), ("B".into(), b as u32)]);
        let (ra, rb) = counts(&rest);
        assert_eq!((a + ra, b + rb), (4, 6));
    }

    #[test]
    fn zero_weight_gets_only_its_base() {
        let s = strategy(&[("A", 1, 0), ("B", 0, 1)]);
        assert_eq!(counts(&s.split(5, &[])), (1, 4));
        assert!(Capacity::LaunchType("EC2".into()).split(3, &[]).is_empty());
    }

    #[test]
    fn strategies_are_checked_against_the_cluster() {
        let cluster = ClusterRecord {
            name: "c".into(),
            arn: "arn".into(),
            status: "ACTIVE".into(),
            created_at: 0.0,
            settings: vec![],
            configuration: None,
            service_connect_defaults: None,
            capacity_providers: vec!["FARGATE".into(), "FARGATE_SPOT".into()],
            default_capacity_provider_strategy: vec![],
        };
        let item = |p: &str, w: i64| json!({"capacityProvider": p, "weight": w});
        assert!(parse_strategy(&[item("FARGATE", 1)], &cluster).is_ok());
        assert!(parse_strategy(&[item("OTHER", 1)], &cluster).is_err());
        assert!(parse_strategy(&[item("FARGATE", 0)], &cluster).is_err());
        assert!(parse_strategy(&[item("FARGATE", 1001)], &cluster).is_err());
        assert!(parse_strategy(&[], &cluster).is_err());
        assert!(resolve(Some("EC2"), Some(vec![item("FARGATE", 1)]), &cluster, false).is_err());
        assert_eq!(
            resolve(None, None, &cluster, false).unwrap(),
            Capacity::LaunchType("EC2".into())
        );
    }
}

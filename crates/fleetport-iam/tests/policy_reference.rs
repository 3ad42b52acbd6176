//! Random identity policies checked against a reference evaluator written here from the IAM
//! User Guide's rules, independently of the crate's matcher: explicit deny wins, then any allow,
//! else an implicit deny; actions match case-insensitively, ARNs segment by segment with the
//! resource part spanning `:` and `/`; `NotAction`/`NotResource` match what they do not list.

use fleetport_iam::policy::{self, Kind, Request};
use fleetport_proto::auth::{Decision, Principal, PrincipalKind, RequestFacts};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Recursive wildcard matching (the crate uses an iterative one).
fn wild(p: &[char], t: &[char], fold: bool) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some('*'), _) => wild(&p[1..], t, fold) || (!t.is_empty() && wild(p, &t[1..], fold)),
        (Some('?'), Some(_)) => wild(&p[1..], &t[1..], fold),
        (Some(a), Some(b)) => {
            let same = if fold {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            };
            same && wild(&p[1..], &t[1..], fold)
        }
        _ => false,
    }
}

fn wild_str(p: &str, t: &str, fold: bool) -> bool {
    let p: Vec<char> = p.chars().collect();
    let t: Vec<char> = t.chars().collect();
    wild(&p, &t, fold)
}

fn arn_match(p: &str, a: &str) -> bool {
    if p == "*" {
        return true;
    }
    let ps: Vec<&str> = p.splitn(6, ':').collect();
    let xs: Vec<&str> = a.splitn(6, ':').collect();
    if ps.len() < 6 || xs.len() < 6 {
        return wild_str(p, a, false);
    }
    (0..6).all(|i| wild_str(ps[i], xs[i], false))
}

fn list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => vec![],
    }
}

fn reference(doc: &Value, action: &str, resource: &str) -> Decision {
    let mut allow = false;
    let mut deny = false;
    for st in doc["Statement"].as_array().into_iter().flatten() {
        let action_hit = if let Some(a) = st.get("Action") {
            list(a).iter().any(|p| wild_str(p, action, true))
        } else {
            !list(&st["NotAction"])
                .iter()
                .any(|p| wild_str(p, action, true))
        };
        let resource_hit = if let Some(r) = st.get("Resource") {
            list(r).iter().any(|p| arn_match(p, resource))
        } else {
            !list(&st["NotResource"])
                .iter()
                .any(|p| arn_match(p, resource))
        };
        if action_hit && resource_hit {
            if st["Effect"] == "Deny" {
                deny = true;
            } else {
                allow = true;
            }
        }
    }
    if deny {
        Decision::ExplicitDeny
    } else if allow {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

fn action_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("ecr:*".to_string()),
        Just("ECR:get*".to_string()),
        Just("ecr:Get?uthorizationToken".to_string()),
        Just("ecs:*Cluster*".to_string()),
        Just("ecs:CreateCluster".to_string()),
        Just("iam:List*".to_string()),
        Just("elasticloadbalancing:Describe*".to_string()),
    ]
}

fn resource_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("arn:aws:ecr:*:*:repository/*".to_string()),
        Just("arn:aws:ecr:us-east-1:123456789012:repository/app".to_string()),
        Just("arn:aws:ecr:*:123456789012:repository/a*".to_string()),
        Just("arn:aws:ecs:us-?ast-1:*:cluster/*".to_string()),
        Just("arn:aws:ecs:*:*:task/*/x:1".to_string()),
        Just("arn:aws:*:*:*:*".to_string()),
    ]
}

fn statement() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(action_pattern(), 1..3),
        prop::collection::vec(resource_pattern(), 1..3),
    )
        .prop_map(|(deny, not_action, not_resource, actions, resources)| {
            let mut st = json!({"Effect": if deny { "Deny" } else { "Allow" }});
            st[if not_action { "NotAction" } else { "Action" }] = json!(actions);
            st[if not_resource {
                "NotResource"
            } else {
                "Resource"
            }] = json!(resources);
            st
        })
}

fn request() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("ecr:GetAuthorizationToken"),
            Just("ecr:PutImage"),
            Just("ecs:CreateCluster"),
            Just("ecs:DeleteCluster"),
            Just("iam:ListUsers"),
            Just("elasticloadbalancing:DescribeTargetHealth"),
        ],
        prop_oneof![
            Just("*"),
            Just("arn:aws:ecr:us-east-1:123456789012:repository/app"),
            Just("arn:aws:ecr:eu-west-1:123456789012:repository/api"),
            Just("arn:aws:ecr:us-east-1:999999999999:repository/app"),
            Just("arn:aws:ecs:us-east-1:123456789012:cluster/demo"),
            Just("arn:aws:ecs:us-west-1:123456789012:task/demo/x:1"),
        ],
    )
        .prop_map(|(a, r)| (a.to_string(), r.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn evaluation_agrees_with_the_reference(
        statements in prop::collection::vec(statement(), 1..5),
        (action, resource) in request(),
    ) {
        let doc = json!({"Version": "2012-10-17", "Statement": statements});
        let parsed = policy::parse(&doc.to_string(), Kind::Identity);
        prop_assert!(parsed.is_ok(), "{:?}", parsed);
        let Ok(parsed) = parsed else { return Ok(()) };
        let principal = Principal {
            account_id: "123456789012".into(),
            arn: "arn:aws:iam::123456789012:user/u".into(),
            user_id: "AIDAEXAMPLE".into(),
            kind: PrincipalKind::User { name: "u".into() },
        };
        let facts = RequestFacts::default();
        let got = policy::evaluate([&parsed], &Request {
            principal_tags: &[],
            principal: &principal,
            action: &action,
            resource: &resource,
            facts: &facts,
            now: 0,
            context: &[],
        });
        prop_assert_eq!(got, reference(&doc, &action, &resource), "{} {} {}", doc, action, resource);
    }

    /// Parsing never panics, whatever the text.
    #[test]
    fn parsing_any_text_never_panics(text in ".{0,200}") {
        let _ = policy::parse(&text, Kind::Identity);
        let _ = policy::parse(&text, Kind::Resource);
    }
}

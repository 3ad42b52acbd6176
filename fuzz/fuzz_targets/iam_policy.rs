//! IAM policy documents (identity, resource and trust policies), parsed and, when accepted,
//! evaluated for a few accesses with variables and condition keys in play.
#![no_main]

use fleetport_iam::policy::{Kind, Request, evaluate, evaluate_resource, parse};
use fleetport_proto::auth::{Principal, PrincipalKind, RequestFacts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let principal = Principal {
        account_id: "123456789012".into(),
        arn: "arn:aws:iam::123456789012:user/alice".into(),
        user_id: "AIDAEXAMPLEALICE".into(),
        kind: PrincipalKind::User {
            name: "alice".into(),
        },
    };
    let facts = RequestFacts {
        region: "us-east-1".into(),
        source_ip: Some(std::net::IpAddr::from([10, 1, 2, 3])),
        secure_transport: false,
        token_issued_at: Some(1_700_000_000),
    };
    let tags = [("team".to_string(), "a".to_string())];
    let context = [("ecr:resourcetag/team".to_string(), "a".to_string())];
    for kind in [Kind::Identity, Kind::Resource, Kind::Trust] {
        let Ok(policy) = parse(text, kind) else {
            continue;
        };
        for (action, resource) in [
            (
                "ecr:PutImage",
                "arn:aws:ecr:us-east-1:123456789012:repository/app",
            ),
            ("ecs:CreateCluster", "*"),
            ("sts:AssumeRole", "arn:aws:iam::123456789012:role/deployer"),
        ] {
            let req = Request {
                principal: &principal,
                principal_tags: &tags,
                action,
                resource,
                facts: &facts,
                now: 1_700_000_000,
                context: &context,
            };
            let _ = evaluate([&policy], &req);
            let _ = evaluate_resource(&policy, &req);
        }
    }
});

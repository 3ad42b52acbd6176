//! Property test of the whole request path (gateway → validation → ECS → store): arbitrary
//! bytes, arbitrary JSON aimed at real ECS members, and arbitrary awsQuery forms, all correctly
//! signed so they get past SigV4. Every answer must be a well-formed AWS response, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::Arc;

use bytes::Bytes;
use fleetport_ecs::Ecs;
use fleetport_proto::sigv4::{CredentialSet, Signer, Verifier};
use fleetport_proto::{ApiRequest, Gateway, GatewayConfig};
use fleetport_store::sqlite::SqliteStore;
use proptest::prelude::*;
use serde_json::Value;

struct Harness {
    rt: tokio::runtime::Runtime,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let mut creds = CredentialSet::new();
    creds.insert("test", "test");
    let mut gateway = Gateway::new(
        GatewayConfig {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        },
        Verifier::new(creds),
    );
    gateway.serve(Arc::new(Ecs::new(store, "us-east-1", "000000000000")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Harness {
        rt,
        gateway,
        _dir: dir,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Harness {
    fn send(
        &self,
        headers: Vec<(&str, String)>,
        body: Vec<u8>,
        service: &str,
    ) -> http::Response<Bytes> {
        let mut h = http::HeaderMap::new();
        h.insert("host", "localhost:4566".parse().unwrap());
        for (k, v) in headers {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v);
            }
        }
        let signer = Signer {
            access_key: "test".into(),
            secret: "test".into(),
            region: "us-east-1".into(),
            service: service.into(),
        };
        signer.sign("POST", "/", "", &mut h, &body, now());
        let req = ApiRequest {
            peer: None,
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body: Bytes::from(body),
        };
        self.rt.block_on(self.gateway.handle(req))
    }
}

fn assert_json_answer(resp: &http::Response<Bytes>) {
    assert!(resp.headers().contains_key("x-amzn-requestid"));
    let v: Value = serde_json::from_slice(resp.body()).expect("JSON body");
    if resp.status() != 200 {
        assert!(resp.status().is_client_error() || resp.status().is_server_error());
        assert!(v["__type"].is_string() && v["message"].is_string(), "{v}");
        assert_ne!(
            v["__type"], "ServerException",
            "internal fault on input: {v}"
        );
    } else {
        assert!(v.is_object());
    }
}

fn op_name() -> impl Strategy<Value = String> {
    let mut ops: Vec<String> = fleetport_proto::model::ecs()
        .operations
        .keys()
        .cloned()
        .collect();
    ops.sort();
    prop_oneof![4 => proptest::sample::select(ops), 1 => "[A-Za-z]{0,12}"]
}

/// JSON that uses real ECS member names, so validation and handlers see plausible shapes.
fn json_value() -> impl Strategy<Value = Value> {
    let key = proptest::sample::select(vec![
        "clusterName",
        "cluster",
        "clusters",
        "family",
        "containerDefinitions",
        "name",
        "image",
        "memory",
        "memoryReservation",
        "cpu",
        "portMappings",
        "containerPort",
        "hostPort",
        "networkMode",
        "essential",
        "dependsOn",
        "containerName",
        "condition",
        "requiresCompatibilities",
        "tags",
        "key",
        "value",
        "taskDefinition",
        "include",
        "maxResults",
        "nextToken",
        "settings",
        "healthCheck",
        "command",
        "resourceArn",
        "tagKeys",
        "status",
        "sort",
        "familyPrefix",
        "capacityProviders",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        "[ -~]{0,20}".prop_map(Value::String),
        proptest::sample::select(vec![
            "web",
            "web:1",
            "FARGATE",
            "awsvpc",
            "bridge",
            "ACTIVE",
            "TAGS",
            "CMD",
            "arn:aws:ecs:us-east-1:000000000000:cluster/web"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_aws_shaped_answers(op in op_name(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let h = harness();
        let resp = h.send(vec![("x-amz-target", format!("AmazonEC2ContainerServiceV20141113.{op}"))], body, "ecs");
        assert_json_answer(&resp);
    }

    #[test]
    fn arbitrary_json_gets_aws_shaped_answers(op in op_name(), body in json_value()) {
        let h = harness();
        let bytes = serde_json::to_vec(&body).unwrap();
        let resp = h.send(vec![("x-amz-target", format!("AmazonEC2ContainerServiceV20141113.{op}"))], bytes, "ecs");
        assert_json_answer(&resp);
    }

    #[test]
    fn arbitrary_forms_get_xml_errors(
        pairs in proptest::collection::vec(("[A-Za-z.0-9]{0,24}", "[ -~]{0,16}"), 0..8),
        action in proptest::sample::select(vec!["DescribeLoadBalancers", "CreateRule", "Nope", ""]),
        version in proptest::sample::select(vec!["2015-12-01", "2012-06-01", ""]),
    ) {
        let h = harness();
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action).append_pair("Version", version);
        for (k, v) in &pairs {
            form.append_pair(k, v);
        }
        let body = form.finish().into_bytes();
        let resp = h.send(vec![("content-type", "application/x-www-form-urlencoded".into())], body, "elasticloadbalancing");
        let text = String::from_utf8(resp.body().to_vec()).unwrap();
        prop_assert!(resp.status().is_client_error(), "{}", text);
        prop_assert!(text.starts_with("<ErrorResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">"));
        prop_assert!(text.contains("<RequestId>"));
    }
}

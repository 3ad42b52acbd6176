//! The official AWS service models (botocore `service-2.json`, vendored under `models/` without
//! documentation) loaded into a compact form. They are the source of truth for operation names,
//! member names and types, enums, constraints and modeled errors.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub protocol: String,
    #[serde(default)]
    pub target_prefix: Option<String>,
    #[serde(default)]
    pub signing_name: Option<String>,
    pub endpoint_prefix: String,
    pub api_version: String,
    #[serde(default)]
    pub xml_namespace: Option<String>,
    #[serde(default)]
    pub fleetport_botocore_version: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ShapeRef {
    pub shape: String,
    #[serde(default, rename = "resultWrapper")]
    pub result_wrapper: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Operation {
    pub name: String,
    #[serde(default)]
    pub input: Option<ShapeRef>,
    #[serde(default)]
    pub output: Option<ShapeRef>,
    #[serde(default)]
    pub errors: Vec<ShapeRef>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorTrait {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default, rename = "httpStatusCode")]
    pub http_status_code: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct Shape {
    #[serde(rename = "type")]
    pub kind: ShapeKind,
    #[serde(default)]
    pub members: HashMap<String, ShapeRef>,
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub member: Option<ShapeRef>,
    #[serde(default)]
    pub key: Option<ShapeRef>,
    #[serde(default)]
    pub value: Option<ShapeRef>,
    #[serde(default, rename = "enum")]
    pub enum_values: Option<Vec<String>>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub union: bool,
    #[serde(default)]
    pub error: Option<ErrorTrait>,
    #[serde(default)]
    pub exception: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapeKind {
    Structure,
    List,
    Map,
    String,
    Integer,
    Long,
    Boolean,
    Timestamp,
    Blob,
    Double,
    Float,
}

#[derive(Debug, Deserialize)]
pub struct ServiceModel {
    pub metadata: Metadata,
    pub operations: HashMap<String, Operation>,
    pub shapes: HashMap<String, Shape>,
}

impl ServiceModel {
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.shapes.get(name)
    }

    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.operations.get(name)
    }
}

static ECS: OnceLock<ServiceModel> = OnceLock::new();
static ECR: OnceLock<ServiceModel> = OnceLock::new();
static ELBV2: OnceLock<ServiceModel> = OnceLock::new();
static AGENT: OnceLock<ServiceModel> = OnceLock::new();
static ACM: OnceLock<ServiceModel> = OnceLock::new();
static IAM: OnceLock<ServiceModel> = OnceLock::new();
static STS: OnceLock<ServiceModel> = OnceLock::new();

fn load(cell: &'static OnceLock<ServiceModel>, json: &'static str) -> &'static ServiceModel {
    // The vendored files are tested to parse (see tests below), so a failure here is a build defect.
    #[allow(clippy::expect_used)]
    cell.get_or_init(|| ServiceModel::parse(json).expect("vendored service model parses"))
}

/// Amazon ECS (awsJson1.1).
pub fn ecs() -> &'static ServiceModel {
    load(&ECS, include_str!("../models/ecs.json"))
}

/// Amazon ECR (awsJson1.1).
pub fn ecr() -> &'static ServiceModel {
    load(&ECR, include_str!("../models/ecr.json"))
}

/// Elastic Load Balancing v2 (awsQuery).
pub fn elbv2() -> &'static ServiceModel {
    load(&ELBV2, include_str!("../models/elbv2.json"))
}

/// AWS Certificate Manager (awsJson1.1).
pub fn acm() -> &'static ServiceModel {
    load(&ACM, include_str!("../models/acm.json"))
}

/// AWS Identity and Access Management (awsQuery, global).
pub fn iam() -> &'static ServiceModel {
    load(&IAM, include_str!("../models/iam.json"))
}

/// AWS Security Token Service (awsQuery, global).
pub fn sts() -> &'static ServiceModel {
    load(&STS, include_str!("../models/sts.json"))
}

/// Fleetport's own agent channel (awsJson1.1, `FleetportAgentV20261124`): the long poll that
/// replaces ECS's ACS WebSocket. Written here in botocore's format, not vendored.
pub fn agent() -> &'static ServiceModel {
    load(&AGENT, include_str!("../models/fleetport-agent.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_models_parse_and_reference_only_known_shapes() {
        for m in [ecs(), ecr(), elbv2(), agent(), acm(), iam(), sts()] {
            assert!(!m.operations.is_empty());
            for op in m.operations.values() {
                for r in op
                    .input
                    .iter()
                    .chain(op.output.iter())
                    .chain(op.errors.iter())
                {
                    assert!(
                        m.shape(&r.shape).is_some(),
                        "{} refers to {}",
                        op.name,
                        r.shape
                    );
                }
            }
            for (name, s) in &m.shapes {
                for r in s
                    .members
                    .values()
                    .chain(s.member.iter())
                    .chain(s.key.iter())
                    .chain(s.value.iter())
                {
                    assert!(m.shape(&r.shape).is_some(), "{name} refers to {}", r.shape);
                }
            }
        }
        assert_eq!(
            ecs().metadata.target_prefix.as_deref(),
            Some("AmazonEC2ContainerServiceV20141113")
        );
        assert_eq!(
            ecr().metadata.target_prefix.as_deref(),
            Some("AmazonEC2ContainerRegistry_V20150921")
        );
        assert_eq!(elbv2().metadata.protocol, "query");
    }
}

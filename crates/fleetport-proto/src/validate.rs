//! Checks an awsJson input document against its model shape before any handler sees it.
//!
//! Wrong JSON types are answered as AWS's JSON services do (`SerializationException`, e.g.
//! `STRING_VALUE can not be converted to an Integer`); missing required members, enum values
//! outside the model's set and length/range violations are constraint errors, reported in AWS's
//! `1 validation error detected: …` style under the service's validation code. Unknown members
//! are accepted, because newer SDKs send fields older models do not know.

use serde_json::Value;

use crate::error::AwsError;
use crate::model::{ServiceModel, Shape, ShapeKind};

/// The reason an input failed the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The JSON does not have the shape's type at all.
    Serialization(String),
    /// The JSON has the right types but breaks a model constraint.
    Constraint(String),
}

impl Invalid {
    /// Maps to the wire error, given the code the service uses for constraint failures.
    pub fn into_error(self, constraint_code: &str) -> AwsError {
        match self {
            Invalid::Serialization(m) => AwsError::serialization(m),
            Invalid::Constraint(m) => AwsError::client(constraint_code, m),
        }
    }
}

const MAX_DEPTH: usize = 64;

/// Validates `value` against shape `shape_name` of `model`.
pub fn validate(model: &ServiceModel, shape_name: &str, value: &Value) -> Result<(), Invalid> {
    let mut v = Validator { model, depth: 0 };
    v.check(shape_name, value, "")
}

struct Validator<'a> {
    model: &'a ServiceModel,
    depth: usize,
}

fn token(value: &Value) -> &'static str {
    match value {
        Value::Null => "VALUE_NULL",
        Value::Bool(true) => "VALUE_TRUE",
        Value::Bool(false) => "VALUE_FALSE",
        Value::Number(n) if n.is_f64() => "NUMBER_VALUE",
        Value::Number(_) => "NUMBER_VALUE",
        Value::String(_) => "STRING_VALUE",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
    }
}

fn type_mismatch(value: &Value, target: &str) -> Invalid {
    match value {
        Value::Object(_) => {
            Invalid::Serialization("Start of structure or map found where not expected.".into())
        }
        Value::Array(_) => Invalid::Serialization("Start of list found where not expected".into()),
        _ => Invalid::Serialization(format!("{} can not be converted to {target}", token(value))),
    }
}

fn constraint(path: &str, value: &Value, rule: &str) -> Invalid {
    let shown = match value {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    };
    let at = if path.is_empty() { "input" } else { path };
    let value = if matches!(value, Value::Null) {
        "null".to_string()
    } else {
        format!("'{shown}'")
    };
    Invalid::Constraint(format!(
        "1 validation error detected: Value {value} at '{at}' failed to satisfy constraint: {rule}"
    ))
}

fn join(path: &str, member: &str) -> String {
    if path.is_empty() {
        member.to_string()
    } else {
        format!("{path}.{member}")
    }
}

impl<'a> Validator<'a> {
    fn shape(&self, name: &str) -> Result<&'a Shape, Invalid> {
        // A dangling reference is a defect in a vendored model; a unit test keeps that impossible.
        let model: &'a ServiceModel = self.model;
        model
            .shape(name)
            .ok_or_else(|| Invalid::Serialization(format!("Unknown shape {name}")))
    }

    fn check(&mut self, shape_name: &str, value: &Value, path: &str) -> Result<(), Invalid> {
        if value.is_null() {
            return Ok(());
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Invalid::Serialization("Input nesting is too deep.".into()));
        }
        let shape = self.shape(shape_name)?;
        let out = match shape.kind {
            ShapeKind::Structure => self.structure(shape, value, path),
            ShapeKind::List => {
                let Value::Array(items) = value else {
                    return Err(type_mismatch(value, "a List"));
                };
                self.length(shape, items.len(), value, path, "Member must have length")?;
                let member = shape
                    .member
                    .as_ref()
                    .map(|m| m.shape.as_str())
                    .unwrap_or_default();
                for (i, item) in items.iter().enumerate() {
                    self.check(member, item, &format!("{path}.{}.member", i + 1))?;
                }
                Ok(())
            }
            ShapeKind::Map => {
                let Value::Object(entries) = value else {
                    return Err(type_mismatch(value, "a Map"));
                };
                self.length(shape, entries.len(), value, path, "Member must have length")?;
                let key = shape
                    .key
                    .as_ref()
                    .map(|m| m.shape.as_str())
                    .unwrap_or_default();
                let val = shape
                    .value
                    .as_ref()
                    .map(|m| m.shape.as_str())
                    .unwrap_or_default();
                for (k, v) in entries {
                    self.check(key, &Value::String(k.clone()), path)?;
                    self.check(val, v, &format!("{path}.{k}"))?;
                }
                Ok(())
            }
            ShapeKind::String => {
                let Value::String(s) = value else {
                    return Err(type_mismatch(value, "a String"));
                };
                if let Some(allowed) = &shape.enum_values
                    && !allowed.iter().any(|a| a == s)
                {
                    return Err(constraint(
                        path,
                        value,
                        &format!(
                            "Member must satisfy enum value set: [{}]",
                            allowed.join(", ")
                        ),
                    ));
                }
                self.length(
                    shape,
                    s.chars().count(),
                    value,
                    path,
                    "Member must have length",
                )
            }
            ShapeKind::Integer | ShapeKind::Long => {
                let n = match value {
                    Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64().unwrap_or(i64::MAX),
                    _ => {
                        let t = if shape.kind == ShapeKind::Integer {
                            "an Integer"
                        } else {
                            "a Long"
                        };
                        return Err(type_mismatch(value, t));
                    }
                };
                if shape.kind == ShapeKind::Integer && i32::try_from(n).is_err() {
                    return Err(Invalid::Serialization(format!(
                        "Numeric value ({n}) out of range of int"
                    )));
                }
                self.range(shape, n as f64, value, path)
            }
            ShapeKind::Double | ShapeKind::Float => match value {
                Value::Number(n) => self.range(shape, n.as_f64().unwrap_or(0.0), value, path),
                _ => Err(type_mismatch(value, "a Double")),
            },
            ShapeKind::Boolean => match value {
                Value::Bool(_) => Ok(()),
                _ => Err(type_mismatch(value, "a Boolean")),
            },
            ShapeKind::Timestamp => match value {
                Value::Number(_) => Ok(()),
                _ => Err(type_mismatch(value, "a Date")),
            },
            ShapeKind::Blob => match value {
                Value::String(_) => Ok(()),
                _ => Err(type_mismatch(value, "a ByteBuffer")),
            },
        };
        self.depth -= 1;
        out
    }

    fn structure(&mut self, shape: &Shape, value: &Value, path: &str) -> Result<(), Invalid> {
        let Value::Object(obj) = value else {
            return Err(type_mismatch(value, "a Structure"));
        };
        for req in &shape.required {
            if obj.get(req).is_none_or(Value::is_null) {
                return Err(constraint(
                    &join(path, req),
                    &Value::Null,
                    "Member must not be null",
                ));
            }
        }
        if shape.union && obj.values().filter(|v| !v.is_null()).count() > 1 {
            return Err(Invalid::Constraint(format!(
                "Only one member of '{}' may be set.",
                if path.is_empty() { "input" } else { path }
            )));
        }
        for (name, member) in &shape.members {
            if let Some(v) = obj.get(name) {
                self.check(&member.shape, v, &join(path, name))?;
            }
        }
        Ok(())
    }

    fn length(
        &self,
        shape: &Shape,
        len: usize,
        value: &Value,
        path: &str,
        rule: &str,
    ) -> Result<(), Invalid> {
        let len = len as f64;
        if let Some(min) = shape.min
            && len < min
        {
            return Err(constraint(
                path,
                value,
                &format!("{rule} greater than or equal to {min}"),
            ));
        }
        if let Some(max) = shape.max
            && len > max
        {
            return Err(constraint(
                path,
                value,
                &format!("{rule} less than or equal to {max}"),
            ));
        }
        Ok(())
    }

    fn range(&self, shape: &Shape, n: f64, value: &Value, path: &str) -> Result<(), Invalid> {
        if let Some(min) = shape.min
            && n < min
        {
            return Err(constraint(
                path,
                value,
                &format!("Member must have value greater than or equal to {min}"),
            ));
        }
        if let Some(max) = shape.max
            && n > max
        {
            return Err(constraint(
                path,
                value,
                &format!("Member must have value less than or equal to {max}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ecs;
    use serde_json::json;

    fn check(op: &str, v: Value) -> Result<(), Invalid> {
        let shape = &ecs().operation(op).unwrap().input.as_ref().unwrap().shape;
        validate(ecs(), shape, &v)
    }

    #[test]
    fn accepts_valid_and_unknown_members() {
        check(
            "CreateCluster",
            json!({"clusterName": "a", "futureField": 1}),
        )
        .unwrap();
        check("ListClusters", json!({"maxResults": 10})).unwrap();
    }

    #[test]
    fn wrong_types_are_serialization_errors() {
        let e = check("ListClusters", json!({"maxResults": "10"})).unwrap_err();
        assert_eq!(
            e,
            Invalid::Serialization("STRING_VALUE can not be converted to an Integer".into())
        );
        let e = check("CreateCluster", json!({"clusterName": {"a": 1}})).unwrap_err();
        assert!(matches!(e, Invalid::Serialization(_)));
        let e = check("CreateCluster", json!({"tags": "x"})).unwrap_err();
        assert!(matches!(e, Invalid::Serialization(_)));
    }

    #[test]
    fn missing_required_and_enums_are_constraint_errors() {
        let e = check("DeleteCluster", json!({})).unwrap_err();
        assert_eq!(
            e,
            Invalid::Constraint(
                "1 validation error detected: Value null at 'cluster' failed to satisfy constraint: Member must not be null"
                    .into()
            )
        );
        let e = check(
            "RegisterTaskDefinition",
            json!({"family": "f", "containerDefinitions": [], "networkMode": "bogus"}),
        )
        .unwrap_err();
        assert!(matches!(e, Invalid::Constraint(m) if m.contains("enum value set")));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let mut v = json!({});
        for _ in 0..500 {
            v = json!({ "x": v });
        }
        // Unknown members are not walked, so depth is bounded by the model; still no panic.
        check("CreateCluster", v).unwrap();
    }
}

//! awsQuery: decoding `Action=…&Version=…&Names.member.1=…` forms into the same JSON document
//! an awsJson client would have sent (guided by the input shape), and writing output documents
//! as the XML botocore expects (`<OpResponse><OpResult>…</OpResult><ResponseMetadata>`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{xml_char, xml_escape};
use crate::model::{ServiceModel, ShapeKind};
use crate::validate::Invalid;

/// The form parameters of one request, sorted so nested prefixes are contiguous.
pub type Params = BTreeMap<String, String>;

/// Parses an `application/x-www-form-urlencoded` body or query string.
pub fn parse_form(raw: &[u8]) -> Params {
    form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Builds the input document for `shape` from the parameters under `prefix`.
pub fn decode(model: &ServiceModel, shape: &str, params: &Params) -> Result<Value, Invalid> {
    Ok(decode_at(model, shape, params, "", 0)?.unwrap_or_else(|| Value::Object(Map::new())))
}

fn bad(path: &str, what: &str) -> Invalid {
    Invalid::Constraint(format!(
        "1 validation error detected: Value at '{path}' failed to satisfy constraint: Member must be {what}"
    ))
}

fn has_prefix(params: &Params, prefix: &str) -> bool {
    params
        .range(prefix.to_string()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(prefix))
}

/// The member (or entry) numbers under `base` (`Names.member.`), in numeric order: parameters
/// sort as text, which would put `member.10` before `member.2`. A number must be written
/// plainly (1, 2, …): `member.01` beside `member.1` would name one member twice.
fn indices(params: &Params, base: &str) -> Result<Vec<usize>, Invalid> {
    let mut out = Vec::new();
    for (k, _) in params
        .range(base.to_string()..)
        .take_while(|(k, _)| k.starts_with(base))
    {
        let n = k[base.len()..].split('.').next().unwrap_or_default();
        let plain = !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
        let index = n.parse::<usize>().ok().filter(|_| plain).ok_or_else(|| {
            Invalid::Serialization(format!(
                "Parameter '{k}' is not valid: list members are numbered 1, 2, 3, …"
            ))
        })?;
        out.push(index);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn decode_at(
    model: &ServiceModel,
    shape_name: &str,
    params: &Params,
    path: &str,
    depth: usize,
) -> Result<Option<Value>, Invalid> {
    if depth > 32 {
        return Err(Invalid::Serialization("Input nesting is too deep.".into()));
    }
    let Some(shape) = model.shape(shape_name) else {
        return Ok(None);
    };
    let dotted = |m: &str| {
        if path.is_empty() {
            m.to_string()
        } else {
            format!("{path}.{m}")
        }
    };
    match shape.kind {
        ShapeKind::Structure => {
            if !path.is_empty()
                && !has_prefix(params, &format!("{path}."))
                && !params.contains_key(path)
            {
                return Ok(None);
            }
            let mut obj = Map::new();
            for (name, member) in &shape.members {
                if let Some(v) = decode_at(model, &member.shape, params, &dotted(name), depth + 1)?
                {
                    obj.insert(name.clone(), v);
                }
            }
            Ok(Some(Value::Object(obj)))
        }
        ShapeKind::List => {
            let item = shape
                .member
                .as_ref()
                .map(|m| m.shape.as_str())
                .unwrap_or_default();
            let base = format!("{path}.member.");
            let indices = indices(params, &base)?;
            if indices.is_empty() {
                // An empty list goes on the wire as the bare key with an empty value.
                return Ok(params.get(path).map(|_| Value::Array(Vec::new())));
            }
            if indices.len() > 1000 {
                return Err(bad(path, "a list of at most 1000 members"));
            }
            let mut out = Vec::with_capacity(indices.len());
            for i in indices {
                if let Some(v) = decode_at(model, item, params, &format!("{base}{i}"), depth + 1)? {
                    out.push(v);
                }
            }
            Ok(Some(Value::Array(out)))
        }
        ShapeKind::Map => {
            let base = format!("{path}.entry.");
            let indices = indices(params, &base)?;
            if indices.is_empty() {
                return Ok(None);
            }
            let value_shape = shape
                .value
                .as_ref()
                .map(|m| m.shape.as_str())
                .unwrap_or_default();
            let mut obj = Map::new();
            for i in indices {
                let Some(key) = params.get(&format!("{base}{i}.key")) else {
                    continue;
                };
                if let Some(v) = decode_at(
                    model,
                    value_shape,
                    params,
                    &format!("{base}{i}.value"),
                    depth + 1,
                )? {
                    obj.insert(key.clone(), v);
                }
            }
            Ok(Some(Value::Object(obj)))
        }
        kind => {
            let Some(raw) = params.get(path) else {
                return Ok(None);
            };
            let v = match kind {
                ShapeKind::Integer | ShapeKind::Long => Value::from(
                    raw.trim()
                        .parse::<i64>()
                        .map_err(|_| bad(path, "an integer"))?,
                ),
                ShapeKind::Double | ShapeKind::Float => {
                    let f = raw
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| bad(path, "a number"))?;
                    serde_json::Number::from_f64(f)
                        .map(Value::Number)
                        .ok_or_else(|| bad(path, "a finite number"))?
                }
                ShapeKind::Boolean => match raw.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => return Err(bad(path, "true or false")),
                },
                ShapeKind::Timestamp => {
                    let ts: jiff::Timestamp = raw
                        .parse()
                        .map_err(|_| bad(path, "an ISO-8601 timestamp"))?;
                    Value::from(ts.as_millisecond() as f64 / 1000.0)
                }
                _ => {
                    if !raw.chars().all(xml_char) {
                        return Err(bad(
                            path,
                            "text without control characters other than tab, line feed and carriage return",
                        ));
                    }
                    Value::String(raw.clone())
                }
            };
            Ok(Some(v))
        }
    }
}

/// Writes `<{op}Response>` for an output document, wrapping it in the model's `resultWrapper`.
pub fn write_response(
    model: &ServiceModel,
    operation: &str,
    output: &Value,
    request_id: &str,
) -> String {
    let ns = model.metadata.xml_namespace.as_deref().unwrap_or_default();
    let mut out = format!("<{operation}Response xmlns=\"{}\">", xml_escape(ns));
    if let Some(op) = model.operation(operation)
        && let Some(output_ref) = &op.output
    {
        let wrapper = output_ref
            .result_wrapper
            .clone()
            .unwrap_or_else(|| format!("{operation}Result"));
        out.push_str(&format!("<{wrapper}>"));
        write_members(model, &output_ref.shape, output, &mut out);
        out.push_str(&format!("</{wrapper}>"));
    }
    out.push_str(&format!(
        "<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{operation}Response>",
        xml_escape(request_id)
    ));
    out
}

fn write_members(model: &ServiceModel, shape_name: &str, value: &Value, out: &mut String) {
    let (Some(shape), Value::Object(obj)) = (model.shape(shape_name), value) else {
        return;
    };
    let mut names: Vec<&String> = shape.members.keys().collect();
    names.sort();
    for name in names {
        if let (Some(member), Some(v)) = (shape.members.get(name), obj.get(name))
            && !v.is_null()
        {
            write_value(model, &member.shape, name, v, out);
        }
    }
}

fn write_value(model: &ServiceModel, shape_name: &str, tag: &str, value: &Value, out: &mut String) {
    let Some(shape) = model.shape(shape_name) else {
        return;
    };
    out.push_str(&format!("<{tag}>"));
    match (shape.kind, value) {
        (ShapeKind::Structure, _) => write_members(model, shape_name, value, out),
        (ShapeKind::List, Value::Array(items)) => {
            let item = shape
                .member
                .as_ref()
                .map(|m| m.shape.as_str())
                .unwrap_or_default();
            for v in items {
                write_value(model, item, "member", v, out);
            }
        }
        (ShapeKind::Map, Value::Object(entries)) => {
            let vs = shape
                .value
                .as_ref()
                .map(|m| m.shape.as_str())
                .unwrap_or_default();
            for (k, v) in entries {
                out.push_str(&format!("<entry><key>{}</key>", xml_escape(k)));
                write_value(model, vs, "value", v, out);
                out.push_str("</entry>");
            }
        }
        (ShapeKind::Timestamp, Value::Number(n)) => {
            let ms = (n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            out.push_str(&ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }
        (_, Value::String(s)) => out.push_str(&xml_escape(s)),
        (_, other) => out.push_str(&xml_escape(&other.to_string())),
    }
    out.push_str(&format!("</{tag}>"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::elbv2;

    fn input(op: &str) -> String {
        elbv2()
            .operation(op)
            .unwrap()
            .input
            .as_ref()
            .unwrap()
            .shape
            .clone()
    }

    #[test]
    fn decodes_nested_lists_and_empty_lists() {
        let p = parse_form(
            b"Action=CreateRule&Version=2015-12-01&ListenerArn=arn:l&Priority=10&Conditions.member.1.Field=path-pattern&Conditions.member.1.Values.member.1=%2Fapi%2F*&Actions.member.1.Type=forward&Actions.member.1.ForwardConfig.TargetGroups.member.2.Weight=20&Actions.member.1.ForwardConfig.TargetGroups.member.1.Weight=80",
        );
        let v = decode(elbv2(), &input("CreateRule"), &p).unwrap();
        assert_eq!(v["Priority"], 10);
        assert_eq!(v["Conditions"][0]["Values"][0], "/api/*");
        assert_eq!(
            v["Actions"][0]["ForwardConfig"]["TargetGroups"][1]["Weight"],
            20
        );
        let p = parse_form(b"LoadBalancerArn=a&SecurityGroups=");
        let v = decode(elbv2(), &input("SetSecurityGroups"), &p).unwrap();
        assert_eq!(v["SecurityGroups"], serde_json::json!([]));
    }

    #[test]
    fn list_members_keep_their_numeric_order() {
        let form: String = (1..=12)
            .map(|i| format!("Names.member.{i}=n{i}&"))
            .collect();
        let v = decode(
            elbv2(),
            &input("DescribeLoadBalancers"),
            &parse_form(form.as_bytes()),
        )
        .unwrap();
        let names: Vec<&str> = v["Names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let want: Vec<String> = (1..=12).map(|i| format!("n{i}")).collect();
        assert_eq!(names, want);
        for bad in [
            "Names.member.01=a&Names.member.1=b",
            "Names.member.0=a",
            "Names.member.x=a",
        ] {
            assert!(
                decode(
                    elbv2(),
                    &input("DescribeLoadBalancers"),
                    &parse_form(bad.as_bytes())
                )
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn text_xml_cannot_carry_is_refused_and_never_written() {
        let p =
            parse_form(b"ResourceArns.member.1=arn&Tags.member.1.Key=k&Tags.member.1.Value=a%01b");
        assert!(decode(elbv2(), &input("AddTags"), &p).is_err());
        assert_eq!(xml_escape("a\u{1}b\tc"), "a\u{FFFD}b\tc");
    }

    #[test]
    fn bad_scalars_are_validation_errors() {
        let p = parse_form(b"ListenerArn=a&Priority=ten");
        assert!(matches!(
            decode(elbv2(), &input("CreateRule"), &p),
            Err(Invalid::Constraint(_))
        ));
    }

    #[test]
    fn writes_result_wrapper_members_and_timestamps() {
        let out =
            serde_json::json!({"Limits": [{"Name": "application-load-balancers", "Max": "50"}]});
        let xml = write_response(elbv2(), "DescribeAccountLimits", &out, "rid-1");
        assert!(xml.starts_with("<DescribeAccountLimitsResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">"));
        assert!(xml.contains("<DescribeAccountLimitsResult><Limits><member><Max>50</Max><Name>application-load-balancers</Name></member></Limits></DescribeAccountLimitsResult>"));
        assert!(xml.ends_with("<ResponseMetadata><RequestId>rid-1</RequestId></ResponseMetadata></DescribeAccountLimitsResponse>"));
    }
}

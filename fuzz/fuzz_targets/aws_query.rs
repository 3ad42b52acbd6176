//! The awsQuery form (IAM, STS, ELBv2): a form body decoded against an operation's input shape
//! and validated. Input: one byte picks the service, one the operation, the rest is the form.
#![no_main]

use fleetport_proto::model;
use fleetport_proto::{query, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [service, operation, form @ ..] = data else {
        return;
    };
    let models = [model::iam(), model::sts(), model::elbv2()];
    let m = models[usize::from(*service) % models.len()];
    let mut names: Vec<&String> = m.operations.keys().collect();
    names.sort();
    let Some(name) = names.get(usize::from(*operation) % names.len().max(1)) else {
        return;
    };
    let Some(input) = m.operations[*name].input.as_ref() else {
        return;
    };
    let params = query::parse_form(form);
    if let Ok(value) = query::decode(m, &input.shape, &params) {
        let _ = validate::validate(m, &input.shape, &value);
    }
});

//! The awsJson bodies (ECS, ECR, ACM, the agent channel): parsed and validated against an
//! operation's input shape. Input: one byte picks the service, one the operation, the rest is
//! the body.
#![no_main]

use fleetport_proto::{model, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [service, operation, body @ ..] = data else {
        return;
    };
    let models = [model::ecs(), model::ecr(), model::acm(), model::agent()];
    let m = models[usize::from(*service) % models.len()];
    let mut names: Vec<&String> = m.operations.keys().collect();
    names.sort();
    let Some(name) = names.get(usize::from(*operation) % names.len().max(1)) else {
        return;
    };
    let Some(input) = m.operations[*name].input.as_ref() else {
        return;
    };
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let _ = validate::validate(m, &input.shape, &value);
    }
});

//! The ECS cluster query language (ListContainerInstances filters, memberOf constraints).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fleetport_ecs::query::Query::parse(text);
    }
});

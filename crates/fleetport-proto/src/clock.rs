//! Wall-clock readings in the forms AWS APIs use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole Unix seconds (SigV4 dates, token expiry).
pub fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Epoch seconds with millisecond precision, as awsJson timestamps go on the wire.
pub fn epoch_seconds() -> f64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    ms as f64 / 1000.0
}

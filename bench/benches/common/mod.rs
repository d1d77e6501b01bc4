//! Settings shared by every bench: short enough for a busy 2-core machine.

use criterion::Criterion;
use std::time::Duration;

pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

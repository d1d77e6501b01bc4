//! The push stream as the sidecar reads it: bytes cut into chunks at arbitrary points, split
//! into lines, each decoded, completed and validated into a snapshot (or a NACK reason).
//! The first byte picks the chunk size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrigger_proxy::control_plane::push_stream::{parse, Line, Lines};

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let app = "127.0.0.1:8080".parse().ok();
    let mut lines = Lines::default();
    for chunk in rest.chunks(usize::from(size).max(1)) {
        let fed = lines.feed(chunk, |line| {
            if let Line::Snapshot {
                snapshot: Err(reason),
                ..
            } = parse(line, app.as_ref(), "v1")
            {
                assert!(!reason.is_empty(), "a NACK without a reason");
            }
        });
        if fed.is_err() {
            break;
        }
    }
});

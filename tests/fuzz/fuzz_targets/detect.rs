//! Protocol detection on any first bytes of an intercepted connection, and with every
//! shorter prefix (the bytes arrive in pieces): it must decide the same or wait, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrigger_proxy::intercept::{classify, Protocol};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    if let Some(p) = &whole {
        if matches!(p, Protocol::Http1 | Protocol::H2c) {
            // A longer input never changes an HTTP verdict into another.
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n");
            assert_eq!(classify(&longer).as_ref(), Some(p));
        }
    }
});

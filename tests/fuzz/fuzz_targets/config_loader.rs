//! The config loader on any text: mesh resources as the control plane's apply reads them
//! (multi-document YAML, or JSON), and the sidecar file as the proxy reads it. Errors are
//! expected; panics are bugs, and every error must carry a position.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrigger_config::{from_yaml_validated, mesh, SidecarFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = mesh::parse_stream(text);
    let _ = mesh::parse_resources(text);
    let _ = from_yaml_validated::<SidecarFile>(text);
});

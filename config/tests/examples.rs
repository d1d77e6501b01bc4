//! Every file in `config/examples/` must parse and validate: they are the documentation users
//! copy from.

use outrigger_config::mesh::parse_resources;
use outrigger_config::{from_yaml_validated, SidecarFile};
use std::path::Path;

#[test]
fn every_example_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        if text.lines().any(|l| l.starts_with("kind:")) {
            let res = parse_resources(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!res.is_empty(), "{}: no resources", path.display());
        } else {
            from_yaml_validated::<SidecarFile>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the sidecar and shop examples, found {checked}"
    );
}

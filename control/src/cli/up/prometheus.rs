//! `up --prometheus-targets DIR`: Prometheus file-based service discovery for the local mesh.
//! Every sidecar and the control plane listen on ports reserved at random, so a fixed scrape
//! config cannot name them; `up` writes them as `file_sd` target files that
//! `deploy/prometheus/prometheus.yml` reads, and removes them when the mesh stops so
//! Prometheus drops the targets instead of reporting a dead mesh as down.
//!
//! The control plane serves HTTPS and its `/metrics` wants a reader token, which file_sd cannot
//! carry: its job names `control-ca.pem` and `control-reader-token` beside the target files,
//! and `up` makes them links to the trust bundle the control plane keeps current and to the
//! reader token file (so no secret is copied, and a rotated bundle is seen at once).

use super::{io, Instance, UpError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The sidecars' admin ports (`/metrics`); the `outrigger-sidecars` job reads it.
const SIDECARS: &str = "sidecars.json";
/// The control plane's API port (`/metrics`); the `outrigger-control` job reads it.
const CONTROL: &str = "control.json";
/// The `outrigger-control` job's `tls_config.ca_file`: the control plane's trust bundle.
const CONTROL_CA: &str = "control-ca.pem";
/// The `outrigger-control` job's `authorization.credentials_file`: a reader token.
const CONTROL_TOKEN: &str = "control-reader-token";

/// What Prometheus needs to scrape the control plane: its trust bundle and a reader token.
pub struct ControlAuth<'a> {
    pub ca: &'a Path,
    pub token: &'a Path,
}

/// One `file_sd` entry. Target labels deliberately avoid `service` and `version`: the proxy's
/// own metrics carry those, and a clashing target label would rename them to `exported_*`.
#[derive(Serialize)]
struct Group {
    targets: [String; 1],
    labels: BTreeMap<&'static str, String>,
}

fn group(addr: SocketAddr, instance: String, app: &str, version: Option<&str>) -> Group {
    let mut labels = BTreeMap::from([("instance", instance), ("app", app.to_string())]);
    if let Some(v) = version {
        labels.insert("app_version", v.to_string());
    }
    Group {
        targets: [addr.to_string()],
        labels,
    }
}

/// The written target files; dropping it removes them.
pub struct Targets {
    files: Vec<PathBuf>,
}

impl Targets {
    /// Writes the sidecars (each shop instance's and the edge's admin port) and the control
    /// plane as target files in `dir`, and links the control plane's CA and reader token there.
    pub fn write(
        dir: &Path,
        control: SocketAddr,
        instances: &[Instance],
        edge_admin: SocketAddr,
        auth: &ControlAuth<'_>,
    ) -> Result<Self, UpError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut sidecars: Vec<Group> = instances
            .iter()
            .enumerate()
            .map(|(n, i)| group(i.admin, i.id(n), i.service, Some(i.version)))
            .collect();
        sidecars.push(group(
            edge_admin,
            "storefront".into(),
            "storefront",
            Some("v1"),
        ));
        let control = [group(control, "control".into(), "outrigger-control", None)];
        let mut targets = Self { files: Vec::new() };
        targets.put(&dir.join(SIDECARS), &sidecars)?;
        // The credentials before the target that needs them.
        targets.link(auth.ca, &dir.join(CONTROL_CA))?;
        targets.link(auth.token, &dir.join(CONTROL_TOKEN))?;
        targets.put(&dir.join(CONTROL), &control)?;
        Ok(targets)
    }

    /// `link` → `to` (absolute), replacing whatever an earlier run left there.
    fn link(&mut self, to: &Path, link: &Path) -> Result<(), UpError> {
        let to = std::path::absolute(to).map_err(io(format!("resolving {}", to.display())))?;
        let tmp = link.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&to, &tmp).map_err(io(format!("linking {}", tmp.display())))?;
        std::fs::rename(&tmp, link).map_err(io(format!("linking {}", link.display())))?;
        self.files.push(link.to_path_buf());
        Ok(())
    }

    /// Writes through a temporary name and renames, because Prometheus watches the directory
    /// and must never read a half-written file.
    fn put(&mut self, path: &Path, groups: &[Group]) -> Result<(), UpError> {
        let json = serde_json::to_vec_pretty(groups).unwrap_or_default();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))?;
        self.files.push(path.to_path_buf());
        Ok(())
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &'static str, version: &'static str, admin: u16) -> Instance {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Instance {
            service,
            version,
            app: a(1),
            outbound: a(2),
            inbound: a(3),
            admin: a(admin),
            pod: None,
        }
    }

    #[test]
    fn writes_every_sidecar_and_the_control_plane_and_removes_them_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let targets_dir = dir.path().join("targets");
        let instances = [
            instance("payment", "v1", 9001),
            instance("payment", "v2", 9002),
        ];
        let control = SocketAddr::from(([127, 0, 0, 1], 9100));
        let edge = SocketAddr::from(([127, 0, 0, 1], 9003));
        let (ca, token) = (
            dir.path().join("bundle.pem"),
            dir.path().join("reader.token"),
        );
        std::fs::write(&ca, "pem").expect("ca");
        std::fs::write(&token, "secret").expect("token");
        let auth = ControlAuth {
            ca: &ca,
            token: &token,
        };
        let targets =
            Targets::write(&targets_dir, control, &instances, edge, &auth).expect("write");

        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(targets_dir.join(name)).expect("file"))
                .expect("json")
        };
        let sidecars = read(SIDECARS);
        let list = sidecars.as_array().expect("array");
        assert_eq!(list.len(), 3);
        assert_eq!(list[1]["targets"][0], "127.0.0.1:9002");
        assert_eq!(list[1]["labels"]["instance"], "payment-v2-1");
        assert_eq!(list[1]["labels"]["app"], "payment");
        assert_eq!(list[1]["labels"]["app_version"], "v2");
        assert_eq!(list[2]["labels"]["instance"], "storefront");
        assert!(list[0]["labels"].get("service").is_none());
        let control = read(CONTROL);
        assert_eq!(control[0]["targets"][0], "127.0.0.1:9100");
        assert_eq!(control[0]["labels"]["app"], "outrigger-control");
        // Links, not copies: the token is not duplicated and the bundle stays current.
        assert_eq!(
            std::fs::read_link(targets_dir.join(CONTROL_TOKEN)).expect("link"),
            token
        );
        assert_eq!(
            std::fs::read_to_string(targets_dir.join(CONTROL_CA)).expect("ca"),
            "pem"
        );

        drop(targets);
        assert_eq!(std::fs::read_dir(&targets_dir).expect("dir").count(), 0);
        assert!(token.exists(), "the token itself stays");
    }
}

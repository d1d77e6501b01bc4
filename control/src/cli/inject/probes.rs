//! The app's HTTP probes under interception. The kubelet probes from outside the pod; the
//! init container's rules take every inbound connection to an app port into the sidecar's
//! mutual-TLS inbound, where a plaintext probe is refused. So each `httpGet` liveness,
//! readiness and startup probe of an app container is pointed at the sidecar's health port
//! (`/app-health/<container>/<livez|readyz|startupz>` on 15021), and its original target goes to
//! the sidecar in `OUTRIGGER_APP_PROBES`, which makes the probe on loopback (not intercepted)
//! and answers with its result.
//!
//! tcpSocket, grpc and exec probes are left alone, and so is an httpGet probe with a `host`
//! (it goes to another address, not this pod's intercepted ports).

use super::field::FieldError;

/// The sidecar's health listener, where the kubelet's probes go instead of the app's ports.
pub const HEALTH_PORT: u16 = 15021;
use super::yaml::{int, map, s};
use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;

/// The sidecar's view of one rewritten probe, as `outrigger-proxy --app-probes` reads it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Target {
    pub port: u16,
    pub path: String,
    pub scheme: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    #[serde(rename = "timeoutSeconds", skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Rewritten probes by health path; a BTreeMap, so the JSON is the same on every run.
pub type Targets = BTreeMap<String, Target>;

const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// Rewrites the httpGet probes of one app container (`path` is its field path, e.g.
/// `spec.template.spec.containers[0]`) and records their targets.
pub fn rewrite(
    container: &mut Mapping,
    name: &str,
    path: &str,
    targets: &mut Targets,
) -> Result<(), FieldError> {
    let ports = named_ports(container, path)?;
    for (field, suffix) in KINDS {
        let probe_path = format!("{path}.{field}");
        let Some(probe) = container.get_mut(field) else {
            continue;
        };
        let Some(probe) = probe.as_mapping_mut() else {
            if probe.is_null() {
                continue;
            }
            return Err(FieldError::new(&probe_path, "must be a mapping"));
        };
        let timeout_seconds = probe.get("timeoutSeconds").and_then(Value::as_u64);
        let Some(get) = probe.get_mut("httpGet") else {
            continue;
        };
        let get_path = format!("{probe_path}.httpGet");
        let get = get
            .as_mapping_mut()
            .ok_or_else(|| FieldError::new(&get_path, "must be a mapping"))?;
        if get
            .get("host")
            .and_then(Value::as_str)
            .is_some_and(|h| !h.is_empty())
        {
            continue;
        }
        let scheme = get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        if scheme != "HTTP" {
            return Err(FieldError::new(
                &format!("{get_path}.scheme"),
                &format!(
                    "{scheme} probes cannot be made by the sidecar (only HTTP); use a tcpSocket, \
                     grpc or exec probe for container {name:?}"
                ),
            ));
        }
        let port_path = format!("{get_path}.port");
        let port = resolve(get.get("port"), &ports, name, &port_path)?;
        let target_path = match get.get("path") {
            None | Some(Value::Null) => "/".to_string(),
            Some(Value::String(p)) => p.clone(),
            Some(_) => {
                return Err(FieldError::new(
                    &format!("{get_path}.path"),
                    "must be a string",
                ))
            }
        };
        let headers = headers(get.get("httpHeaders"), &format!("{get_path}.httpHeaders"))?;
        let health_path = format!("/app-health/{name}/{suffix}");
        *get = match map([
            ("path", s(&health_path)),
            ("port", int(i64::from(HEALTH_PORT))),
            ("scheme", s("HTTP")),
        ]) {
            Value::Mapping(m) => m,
            _ => Mapping::new(),
        };
        targets.insert(
            health_path,
            Target {
                port,
                path: target_path,
                scheme: "HTTP",
                headers,
                timeout_seconds,
            },
        );
    }
    Ok(())
}

/// The container's ports by name.
fn named_ports(container: &Mapping, path: &str) -> Result<Vec<(String, u16)>, FieldError> {
    let mut out = Vec::new();
    let Some(ports) = container.get("ports").and_then(Value::as_sequence) else {
        return Ok(out);
    };
    for (i, p) in ports.iter().enumerate() {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        let number = p
            .get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                FieldError::new(
                    &format!("{path}.ports[{i}].containerPort"),
                    "must be a port number (1-65535)",
                )
            })?;
        out.push((name.to_string(), number));
    }
    Ok(out)
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve(
    port: Option<&Value>,
    ports: &[(String, u16)],
    container: &str,
    path: &str,
) -> Result<u16, FieldError> {
    let bad = || FieldError::new(path, "must be a port number (1-65535) or a port name");
    match port {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(bad),
        Some(Value::String(name))
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(bad)
        }
        Some(Value::String(name)) => ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                FieldError::new(
                    path,
                    &format!("container {container:?} has no port named {name:?}"),
                )
            }),
        None | Some(Value::Null) => Err(FieldError::new(path, "missing")),
        Some(_) => Err(bad()),
    }
}

fn headers(v: Option<&Value>, path: &str) -> Result<Vec<Header>, FieldError> {
    let Some(list) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_sequence()
        .ok_or_else(|| FieldError::new(path, "must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let field = |k: &str| {
                h.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| FieldError::new(&format!("{path}[{i}].{k}"), "must be a string"))
            };
            Ok(Header {
                name: field("name")?,
                value: field("value")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Mapping {
        serde_yaml_ng::from_str(yaml).unwrap_or_default()
    }

    #[test]
    fn named_ports_are_resolved_and_headers_and_timeouts_kept() {
        let mut c = container(
            "name: web\nports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9090}]\n\
             livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 7}\n\
             readinessProbe: {httpGet: {path: /ready, port: admin, httpHeaders: [{name: X-Probe, value: '1'}]}, timeoutSeconds: 3}\n\
             startupProbe: {tcpSocket: {port: http}}\n",
        );
        let mut t = Targets::new();
        assert_eq!(rewrite(&mut c, "web", "spec.containers[0]", &mut t), Ok(()));
        assert_eq!(t.len(), 2);
        assert_eq!(
            serde_json::to_string(&t).unwrap_or_default(),
            r#"{"/app-health/web/livez":{"port":8080,"path":"/healthz","scheme":"HTTP"},"/app-health/web/readyz":{"port":9090,"path":"/ready","scheme":"HTTP","headers":[{"name":"X-Probe","value":"1"}],"timeoutSeconds":3}}"#
        );
        let live = c.get("livenessProbe");
        assert_eq!(
            str_of(live, "httpGet", "path"),
            Some("/app-health/web/livez")
        );
        assert_eq!(
            live.and_then(|p| p.get("httpGet"))
                .and_then(|g| g.get("port"))
                .and_then(Value::as_u64),
            Some(15021)
        );
        assert_eq!(
            live.and_then(|p| p.get("periodSeconds"))
                .and_then(Value::as_u64),
            Some(7)
        );
        // The tcpSocket probe is left as it was.
        assert_eq!(
            str_of(c.get("startupProbe"), "tcpSocket", "port"),
            Some("http")
        );
    }

    fn str_of<'a>(v: Option<&'a Value>, a: &str, b: &str) -> Option<&'a str> {
        v?.get(a)?.get(b)?.as_str()
    }

    #[test]
    fn an_unknown_named_port_names_the_container_and_the_port() {
        let mut c = container(
            "name: api\nports: [{name: http, containerPort: 8080}]\n\
             readinessProbe: {httpGet: {path: /, port: metrics}}\n",
        );
        let e = rewrite(
            &mut c,
            "api",
            "spec.template.spec.containers[1]",
            &mut Targets::new(),
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err(
                "spec.template.spec.containers[1].readinessProbe.httpGet.port: container \"api\" \
                 has no port named \"metrics\""
                    .to_string()
            )
        );
    }

    #[test]
    fn https_probes_are_refused_and_host_probes_left_alone() {
        let mut c = container("name: a\nlivenessProbe: {httpGet: {port: 443, scheme: HTTPS}}\n");
        assert!(rewrite(&mut c, "a", "c", &mut Targets::new())
            .is_err_and(|e| e.path == "c.livenessProbe.httpGet.scheme"));
        let mut c = container("name: a\nlivenessProbe: {httpGet: {port: 80, host: 10.0.0.1}}\n");
        let before = c.clone();
        let mut t = Targets::new();
        assert_eq!(rewrite(&mut c, "a", "c", &mut t), Ok(()));
        assert_eq!((c, t.len()), (before, 0));
    }

    #[test]
    fn numeric_ports_as_numbers_or_strings_default_path() {
        let mut c = container("name: a\nlivenessProbe: {httpGet: {port: '8080'}}\n");
        let mut t = Targets::new();
        assert_eq!(rewrite(&mut c, "a", "c", &mut t), Ok(()));
        assert_eq!(
            t.get("/app-health/a/livez")
                .map(|t| (t.port, t.path.as_str())),
            Some((8080, "/"))
        );
    }
}

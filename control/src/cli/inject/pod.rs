//! The pod-spec transformation: which documents are workloads, whether to inject them, and
//! what injecting adds (the init container with the interception rules, the sidecar, its
//! volumes, annotations and grace period, and the app's rewritten probes).

pub use super::field::FieldError;
use super::probes::{self, Targets, HEALTH_PORT};
use super::yaml::{int, map, map_mut, s, seq, seq_mut, str_at, strs};
use serde_yaml_ng::{Mapping, Value};

pub const PROXY_UID: i64 = 1337;
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15000;
/// The sidecar's `--drain-timeout`, and the pod grace period it needs (drain plus margin).
pub const DRAIN_SECS: i64 = 30;
pub const MIN_GRACE_SECS: i64 = 45;

pub const PROXY_NAME: &str = "outrigger-proxy";
pub const INIT_NAME: &str = "outrigger-init";
pub const COPY_NAME: &str = "outrigger-copy";

pub const ANN_INJECT: &str = "outrigger.io/inject";
pub const ANN_INJECTED: &str = "outrigger.io/injected";
pub const ANN_SERVICE: &str = "outrigger.io/service";
pub const ANN_APP_PORT: &str = "outrigger.io/app-port";
pub const ANN_SKIP_INBOUND: &str = "outrigger.io/skip-inbound-ports";
pub const ANN_SKIP_OUTBOUND: &str = "outrigger.io/skip-outbound-ports";
pub const ANN_SKIP_SUBNETS: &str = "outrigger.io/skip-subnets";

const TRUST_DIR: &str = "/var/run/outrigger/trust";
const BOOTSTRAP_DIR: &str = "/var/run/outrigger/bootstrap";
const BIN_DIR: &str = "/var/run/outrigger/bin";
pub const TRUST_CONFIGMAP: &str = "outrigger-trust-bundle";
pub const BOOTSTRAP_SECRET_PREFIX: &str = "outrigger-bootstrap-";

/// What `inject` puts in the pods.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sidecar as an init container with `restartPolicy: Always` (Kubernetes 1.29+);
    /// otherwise the first app container, with a postStart hook that waits for it.
    pub native_sidecar: bool,
    pub proxy_image: String,
    pub init_image: String,
    /// The control plane's URL as the sidecars reach it.
    pub control_plane: String,
}

/// What became of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Not a kind with a pod spec (Service, ConfigMap, ...).
    NotAWorkload,
    /// `outrigger.io/inject: disabled` on the workload or its pod template.
    OptedOut,
    /// It already has the sidecar (the output of an earlier `inject`).
    AlreadyInjected,
}

/// Where a kind keeps its pod template, and whether it runs to completion.
fn template_path(kind: &str) -> Option<(&'static [&'static str], bool)> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            Some((&["spec", "template"], false))
        }
        "Job" => Some((&["spec", "template"], true)),
        "CronJob" => Some((&["spec", "jobTemplate", "spec", "template"], true)),
        "Pod" => Some((&[], false)),
        _ => None,
    }
}

/// Injects the sidecar into `doc` if it is a workload that wants it. `doc` is changed only
/// when the answer is `Injected`; warnings (nothing wrong, but worth knowing) go to `warnings`.
pub fn inject(
    doc: &mut Value,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<Outcome, FieldError> {
    let Some(kind) = doc.get("kind").and_then(Value::as_str) else {
        return Ok(Outcome::NotAWorkload);
    };
    let Some((path, is_job)) = template_path(kind) else {
        return Ok(Outcome::NotAWorkload);
    };
    let prefix: String = path.iter().map(|p| format!("{p}.")).collect();

    // Read-only first: decide, and gather what the sidecar needs.
    let workload_meta = doc.get("metadata");
    let mut template = Some(&*doc);
    for p in path {
        template = template.and_then(|t| t.get(*p));
    }
    let Some(template) = template.filter(|t| t.is_mapping()) else {
        let shown = prefix.trim_end_matches('.');
        return Err(FieldError::new(
            shown,
            "missing: a workload needs a pod template",
        ));
    };
    let template_meta = template.get("metadata");
    let ann = Annotations {
        template: template_meta.and_then(|m| m.get("annotations")),
        workload: workload_meta.and_then(|m| m.get("annotations")),
        template_path: format!("{prefix}metadata.annotations"),
    };
    match ann.get(ANN_INJECT)? {
        None | Some(("enabled", _)) => {}
        Some(("disabled", _)) => return Ok(Outcome::OptedOut),
        Some((_, path)) => {
            return Err(FieldError::new(
                &path,
                "must be \"enabled\" or \"disabled\"",
            ));
        }
    }
    let spec_path = format!("{prefix}spec");
    let spec = template
        .get("spec")
        .and_then(Value::as_mapping)
        .ok_or_else(|| FieldError::new(&spec_path, "missing: the pod spec"))?;
    if already_injected(template_meta, spec) {
        return Ok(Outcome::AlreadyInjected);
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(FieldError::new(
            &format!("{spec_path}.hostNetwork"),
            "a pod on the host's network cannot have a sidecar (its rules would take the node's \
             traffic); opt out with the annotation outrigger.io/inject: disabled",
        ));
    }
    let labels = template_meta.and_then(|m| m.get("labels"));
    let service = match ann.get(ANN_SERVICE)? {
        Some((name, _)) => name.to_string(),
        None => str_at(labels, "app.kubernetes.io/name")
            .or_else(|| str_at(labels, "app"))
            .or_else(|| str_at(workload_meta, "name"))
            .map(str::to_string)
            .ok_or_else(|| {
                FieldError::new(
                    "metadata.name",
                    "missing: cannot name the service (set the annotation outrigger.io/service)",
                )
            })?,
    };
    check_name(&service, &ann.template_path)?;
    let version = str_at(labels, "version")
        .or_else(|| str_at(labels, "app.kubernetes.io/version"))
        .unwrap_or("v1")
        .to_string();
    let containers_path = format!("{spec_path}.containers");
    let containers = spec
        .get("containers")
        .and_then(Value::as_sequence)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| FieldError::new(&containers_path, "missing: a pod needs a container"))?;
    let app_port = match ann.get(ANN_APP_PORT)? {
        Some((p, path)) => Some(
            port_number(p)
                .ok_or_else(|| FieldError::new(&path, "must be a port number (1-65535)"))?,
        ),
        None => containers
            .first()
            .and_then(|c| c.get("ports"))
            .and_then(Value::as_sequence)
            .and_then(|p| p.first())
            .and_then(|p| p.get("containerPort"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok()),
    };
    if app_port.is_none() && !is_job {
        warnings.push(format!(
            "{containers_path}[0]: no containerPort and no annotation {ANN_APP_PORT}: the sidecar \
             takes no inbound requests and does not register (a client-only workload)"
        ));
    }
    let skip = Skips {
        inbound: port_list(ann.get(ANN_SKIP_INBOUND)?)?,
        outbound: port_list(ann.get(ANN_SKIP_OUTBOUND)?)?,
        subnets: subnet_list(ann.get(ANN_SKIP_SUBNETS)?)?,
    };
    let has_init = spec
        .get("initContainers")
        .and_then(Value::as_sequence)
        .is_some_and(|s| !s.is_empty());
    if has_init && !opts.native_sidecar {
        warnings.push(format!(
            "{spec_path}.initContainers: without native sidecars the existing init containers run \
             after the interception rules but before the sidecar, so their connections fail; \
             use native sidecars (Kubernetes 1.29+) if they need the network"
        ));
    }

    // Now change the document.
    let annotations_path = ann.template_path.clone();
    let mut node = &mut *doc;
    for p in path {
        node = node
            .get_mut(*p)
            .ok_or_else(|| FieldError::new(p, "missing"))?;
    }
    let template = node
        .as_mapping_mut()
        .ok_or_else(|| FieldError::new(&prefix, "must be a mapping"))?;
    let spec = map_mut(template, "spec", &spec_path)?;
    let mut targets = Targets::new();
    let copy_bin = is_job && !opts.native_sidecar;
    let containers = seq_mut(spec, "containers", &containers_path)?;
    for (i, c) in containers.iter_mut().enumerate() {
        let path = format!("{containers_path}[{i}]");
        let c = c
            .as_mapping_mut()
            .ok_or_else(|| FieldError::new(&path, "must be a mapping"))?;
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| FieldError::new(&format!("{path}.name"), "missing"))?
            .to_string();
        check_reserved_ports(c, &path)?;
        probes::rewrite(c, &name, &path, &mut targets)?;
        if copy_bin {
            wrap_command(c, &name, &path, warnings)?;
        }
    }
    let sidecar = sidecar(opts, &service, &version, app_port, &targets);
    if !opts.native_sidecar {
        containers.insert(0, sidecar.clone());
    }
    let mut ours = vec![init_container(opts, &skip)];
    if opts.native_sidecar {
        ours.push(sidecar);
    }
    if copy_bin {
        ours.push(copy_container(opts));
    }
    let inits = seq_mut(
        spec,
        "initContainers",
        &format!("{spec_path}.initContainers"),
    )?;
    inits.splice(0..0, ours);
    let volumes = seq_mut(spec, "volumes", &format!("{spec_path}.volumes"))?;
    volumes.push(map([
        ("name", s("outrigger-trust")),
        (
            "configMap",
            map([
                ("name", s(TRUST_CONFIGMAP)),
                (
                    "items",
                    seq([map([
                        ("key", s("trust-bundle.pem")),
                        ("path", s("trust-bundle.pem")),
                    ])]),
                ),
            ]),
        ),
    ]));
    volumes.push(map([
        ("name", s("outrigger-bootstrap")),
        (
            "secret",
            map([
                (
                    "secretName",
                    s(&format!("{BOOTSTRAP_SECRET_PREFIX}{service}")),
                ),
                (
                    "items",
                    seq([map([("key", s("token")), ("path", s("token"))])]),
                ),
            ]),
        ),
    ]));
    if copy_bin {
        volumes.push(map([("name", s("outrigger-bin")), ("emptyDir", map([]))]));
    }
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    if grace.is_none_or(|g| g < MIN_GRACE_SECS) {
        spec.insert(s("terminationGracePeriodSeconds"), int(MIN_GRACE_SECS));
    }
    let meta = map_mut(template, "metadata", &format!("{prefix}metadata"))?;
    let annotations = map_mut(meta, "annotations", &annotations_path)?;
    annotations.insert(s(ANN_INJECTED), s("true"));
    annotations.insert(s(ANN_SERVICE), s(&service));
    Ok(Outcome::Injected)
}

/// The pod's annotations first, then the workload's.
struct Annotations<'a> {
    template: Option<&'a Value>,
    workload: Option<&'a Value>,
    template_path: String,
}

impl Annotations<'_> {
    /// The value of annotation `key` and its field path; an error if it is not a string.
    fn get(&self, key: &str) -> Result<Option<(&str, String)>, FieldError> {
        for (m, path) in [
            (self.template, self.template_path.as_str()),
            (self.workload, "metadata.annotations"),
        ] {
            let Some(v) = m.and_then(|m| m.get(key)) else {
                continue;
            };
            let path = format!("{path}.{key}");
            return match v.as_str() {
                Some(text) => Ok(Some((text.trim(), path))),
                None => Err(FieldError::new(&path, "must be a string (quote it)")),
            };
        }
        Ok(None)
    }
}

fn already_injected(template_meta: Option<&Value>, spec: &Mapping) -> bool {
    if template_meta
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(ANN_INJECTED))
        .is_some()
    {
        return true;
    }
    ["containers", "initContainers"].iter().any(|list| {
        spec.get(*list)
            .and_then(Value::as_sequence)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    matches!(
                        c.get("name").and_then(Value::as_str),
                        Some(PROXY_NAME | INIT_NAME)
                    )
                })
            })
    })
}

/// The service name goes into a Secret's name and the sidecar's identity: a DNS label.
fn check_name(name: &str, path: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            &format!("{path}.{ANN_SERVICE}"),
            &format!(
                "service name {name:?} must be a DNS label (lower-case letters, digits and '-', at \
                 most 63); set the annotation outrigger.io/service"
            ),
        ))
    }
}

fn port_number(text: &str) -> Option<u16> {
    text.trim().parse::<u16>().ok().filter(|p| *p > 0)
}

struct Skips {
    inbound: Vec<u16>,
    outbound: Vec<u16>,
    subnets: Vec<String>,
}

/// A comma-separated annotation, each item parsed; an item that does not parse is an error
/// naming it and what it should be.
fn comma_list<T>(
    v: Option<(&str, String)>,
    should_be: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, FieldError> {
    let Some((text, path)) = v else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            parse(p).ok_or_else(|| FieldError::new(&path, &format!("{p:?} is not {should_be}")))
        })
        .collect()
}

fn port_list(v: Option<(&str, String)>) -> Result<Vec<u16>, FieldError> {
    comma_list(v, "a port number (1-65535)", port_number)
}

fn subnet_list(v: Option<(&str, String)>) -> Result<Vec<String>, FieldError> {
    comma_list(v, "a subnet (ADDRESS/PREFIX, e.g. 10.0.0.0/8)", |cidr| {
        let ok = cidr.split_once('/').is_some_and(|(ip, len)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            len.parse::<u8>().is_ok_and(|l| l <= max)
        });
        ok.then(|| cidr.to_string())
    })
}

/// An app container must not listen on the sidecar's ports: the rules send those elsewhere.
fn check_reserved_ports(c: &Mapping, path: &str) -> Result<(), FieldError> {
    let Some(ports) = c.get("ports").and_then(Value::as_sequence) else {
        return Ok(());
    };
    for (i, p) in ports.iter().enumerate() {
        let n = p.get("containerPort").and_then(Value::as_u64);
        if let Some(n) = n.filter(|n| {
            [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT, HEALTH_PORT]
                .iter()
                .any(|r| u64::from(*r) == *n)
        }) {
            return Err(FieldError::new(
                &format!("{path}.ports[{i}].containerPort"),
                &format!("port {n} is the sidecar's (15000, 15001, 15006 and 15021 are reserved)"),
            ));
        }
    }
    Ok(())
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

fn init_container(opts: &Options, skip: &Skips) -> Value {
    let mut inbound_ignore = vec![HEALTH_PORT];
    inbound_ignore.extend(skip.inbound.iter().filter(|p| **p != HEALTH_PORT));
    let mut command: Vec<String> = [
        "outrigger-proxy",
        "init",
        "--proxy-uid",
        &PROXY_UID.to_string(),
        "--inbound-port",
        &INBOUND_PORT.to_string(),
        "--outbound-port",
        &OUTBOUND_PORT.to_string(),
        "--admin-port",
        &ADMIN_PORT.to_string(),
        "--inbound-ports-to-ignore",
        &join(&inbound_ignore),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if !skip.outbound.is_empty() {
        command.extend([
            "--outbound-ports-to-ignore".to_string(),
            join(&skip.outbound),
        ]);
    }
    if !skip.subnets.is_empty() {
        command.extend(["--subnets-to-ignore".to_string(), join(&skip.subnets)]);
    }
    map([
        ("name", s(INIT_NAME)),
        ("image", s(&opts.init_image)),
        ("command", strs(&command)),
        ("resources", one_shot_resources()),
        (
            "securityContext",
            map([
                ("runAsUser", int(0)),
                ("runAsNonRoot", Value::Bool(false)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(false)),
                (
                    "capabilities",
                    map([
                        ("drop", strs(["ALL"])),
                        ("add", strs(["NET_ADMIN", "NET_RAW"])),
                    ]),
                ),
            ]),
        ),
    ])
}

fn health_probe(path: &str, extra: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    m.insert(
        s("httpGet"),
        map([("path", s(path)), ("port", int(i64::from(HEALTH_PORT)))]),
    );
    for (k, v) in extra {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn sidecar(
    opts: &Options,
    service: &str,
    version: &str,
    app_port: Option<u16>,
    targets: &Targets,
) -> Value {
    let mut args = vec![
        "--control-plane".to_string(),
        opts.control_plane.clone(),
        "--trust-anchors".into(),
        format!("{TRUST_DIR}/trust-bundle.pem"),
        "--bootstrap-token-file".into(),
        format!("{BOOTSTRAP_DIR}/token"),
        "--service".into(),
        service.into(),
        "--service-version".into(),
        version.into(),
    ];
    if let Some(port) = app_port {
        args.extend(["--app".into(), format!("127.0.0.1:{port}")]);
    }
    args.extend([
        "--inbound".into(),
        format!("0.0.0.0:{INBOUND_PORT}"),
        "--outbound".into(),
        format!("127.0.0.1:{OUTBOUND_PORT}"),
        "--admin".into(),
        format!("127.0.0.1:{ADMIN_PORT}"),
        "--health".into(),
        format!("0.0.0.0:{HEALTH_PORT}"),
        "--sidecar-id".into(),
        "$(POD_NAME)".into(),
    ]);
    if app_port.is_some() {
        args.extend(["--advertise".into(), format!("$(POD_IP):{INBOUND_PORT}")]);
    }
    args.extend(["--drain-timeout".into(), format!("{DRAIN_SECS}s")]);
    let field_env = |name: &str, field: &str| {
        map([
            ("name", s(name)),
            (
                "valueFrom",
                map([("fieldRef", map([("fieldPath", s(field))]))]),
            ),
        ])
    };
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_IP", "status.podIP"),
    ];
    if !targets.is_empty() {
        let json = serde_json::to_string(targets).unwrap_or_default();
        env.push(map([
            ("name", s("OUTRIGGER_APP_PROBES")),
            ("value", s(&json)),
        ]));
    }
    let mut m = Mapping::new();
    m.insert(s("name"), s(PROXY_NAME));
    m.insert(s("image"), s(&opts.proxy_image));
    if opts.native_sidecar {
        m.insert(s("restartPolicy"), s("Always"));
    }
    m.insert(s("args"), strs(&args));
    m.insert(s("env"), seq(env));
    m.insert(
        s("ports"),
        seq([
            map([
                ("name", s("outrigger-in")),
                ("containerPort", int(i64::from(INBOUND_PORT))),
                ("protocol", s("TCP")),
            ]),
            map([
                ("name", s("outrigger-health")),
                ("containerPort", int(i64::from(HEALTH_PORT))),
                ("protocol", s("TCP")),
            ]),
        ]),
    );
    m.insert(
        s("startupProbe"),
        health_probe(
            "/ready",
            vec![("periodSeconds", int(1)), ("failureThreshold", int(120))],
        ),
    );
    m.insert(
        s("readinessProbe"),
        health_probe("/ready", vec![("periodSeconds", int(5))]),
    );
    m.insert(
        s("livenessProbe"),
        health_probe("/live", vec![("periodSeconds", int(10))]),
    );
    if !opts.native_sidecar {
        m.insert(
            s("lifecycle"),
            map([(
                "postStart",
                map([(
                    "exec",
                    map([("command", strs([PROXY_NAME, "await", "--timeout", "120s"]))]),
                )]),
            )]),
        );
    }
    m.insert(
        s("resources"),
        map([
            ("requests", map([("cpu", s("10m")), ("memory", s("32Mi"))])),
            ("limits", map([("memory", s("256Mi"))])),
        ]),
    );
    m.insert(s("securityContext"), as_proxy());
    m.insert(
        s("volumeMounts"),
        seq([
            map([
                ("name", s("outrigger-trust")),
                ("mountPath", s(TRUST_DIR)),
                ("readOnly", Value::Bool(true)),
            ]),
            map([
                ("name", s("outrigger-bootstrap")),
                ("mountPath", s(BOOTSTRAP_DIR)),
                ("readOnly", Value::Bool(true)),
            ]),
        ]),
    );
    Value::Mapping(m)
}

/// What a container that runs once at start (the rules, the copy) asks for.
fn one_shot_resources() -> Value {
    map([
        ("requests", map([("cpu", s("10m")), ("memory", s("16Mi"))])),
        ("limits", map([("memory", s("64Mi"))])),
    ])
}

/// As the proxy's uid, nothing more: no root, no capability, nothing written.
fn as_proxy() -> Value {
    map([
        ("runAsUser", int(PROXY_UID)),
        ("runAsGroup", int(PROXY_UID)),
        ("runAsNonRoot", Value::Bool(true)),
        ("readOnlyRootFilesystem", Value::Bool(true)),
        ("allowPrivilegeEscalation", Value::Bool(false)),
        ("capabilities", map([("drop", strs(["ALL"]))])),
    ])
}

/// Without native sidecars, a Job's pod would never finish (the sidecar keeps running): its
/// app containers start through `outrigger-proxy await --shutdown`, copied into a shared
/// emptyDir by this init container, which ends the sidecar when the app is done.
fn copy_container(opts: &Options) -> Value {
    map([
        ("name", s(COPY_NAME)),
        ("image", s(&opts.proxy_image)),
        (
            "command",
            strs([PROXY_NAME, "copy-self", &format!("{BIN_DIR}/{PROXY_NAME}")]),
        ),
        ("resources", one_shot_resources()),
        ("securityContext", as_proxy()),
        (
            "volumeMounts",
            seq([map([
                ("name", s("outrigger-bin")),
                ("mountPath", s(BIN_DIR)),
            ])]),
        ),
    ])
}

fn wrap_command(
    c: &mut Mapping,
    name: &str,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<(), FieldError> {
    let Some(command) = c.get_mut("command").filter(|v| !v.is_null()) else {
        warnings.push(format!(
            "{path}: container {name:?} has no command, so it cannot be wrapped to end the \
             sidecar: when done it must POST http://127.0.0.1:{ADMIN_PORT}/shutdown, or the \
             Job never completes"
        ));
        return Ok(());
    };
    let list = command
        .as_sequence_mut()
        .ok_or_else(|| FieldError::new(&format!("{path}.command"), "must be a list"))?;
    let wrapper = [
        format!("{BIN_DIR}/{PROXY_NAME}"),
        "await".into(),
        "--shutdown".into(),
        "--".into(),
    ];
    list.splice(0..0, wrapper.iter().map(|w| s(w)));
    let mounts = seq_mut(c, "volumeMounts", &format!("{path}.volumeMounts"))?;
    mounts.push(map([
        ("name", s("outrigger-bin")),
        ("mountPath", s(BIN_DIR)),
        ("readOnly", Value::Bool(true)),
    ]));
    Ok(())
}

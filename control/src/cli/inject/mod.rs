//! `outrigger inject [-f FILE]...`: adds the Outrigger sidecar to Kubernetes workloads, like
//! `kubectl apply -f <(outrigger inject -f app.yaml)`. Reads a YAML stream (stdin by default),
//! writes it to stdout with every Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob
//! and Pod given:
//!
//! - the init container `outrigger-init` (root, NET_ADMIN and NET_RAW only) that installs the
//!   interception rules (`outrigger-proxy init`);
//! - the sidecar `outrigger-proxy`: a native sidecar (an init container with
//!   `restartPolicy: Always`, Kubernetes 1.29+), or with `--native-sidecar=false` the first app
//!   container, whose postStart hook holds the app back until it is ready (and, in a Job, the
//!   app's command wrapped so the sidecar ends with it);
//! - the volumes with the trust bundle (ConfigMap `outrigger-trust-bundle`) and the service's
//!   bootstrap token (Secret `outrigger-bootstrap-<service>`), a grace period of at least 45 s
//!   (the sidecar drains for 30 s) and the annotations `outrigger.io/injected` and
//!   `outrigger.io/service`;
//! - the app's HTTP probes pointed at the sidecar's health port (`probes.rs`).
//!
//! Every other document, a workload annotated `outrigger.io/inject: disabled` and one already
//! injected are written back byte for byte, so inject is idempotent. Output is all or nothing:
//! on any error nothing is written and the error names the file, the document and the field.

mod field;
mod pod;
mod probes;
mod stream;
mod yaml;

pub use pod::{FieldError, Options, Outcome};

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub const DEFAULT_PROXY_IMAGE: &str = "localhost/outrigger-proxy:0.1.0";
pub const DEFAULT_INIT_IMAGE: &str = "localhost/outrigger-init:0.1.0";
pub const DEFAULT_MESH_CONTROL_PLANE: &str =
    "https://outrigger-control.outrigger.svc.cluster.local:15010";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifests to inject (`-` or none reads stdin). Several files are written as one stream.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    files: Vec<PathBuf>,
    /// Put the sidecar in as a native sidecar (an init container with restartPolicy: Always,
    /// Kubernetes 1.29+). `--native-sidecar=false` for older clusters: the sidecar becomes the
    /// first container and a postStart hook holds the app back until it is ready.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    native_sidecar: bool,
    /// The sidecar's image (also the one `outrigger-copy` uses).
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// The init container's image (`outrigger-proxy init`: the interception rules).
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_INIT_IMAGE)]
    init_image: String,
    /// The control plane's URL as the sidecars in the cluster reach it (its Service). Not the
    /// global --control-plane, which is where this CLI itself would connect; inject connects
    /// nowhere.
    #[arg(long, value_name = "URL", default_value = DEFAULT_MESH_CONTROL_PLANE)]
    mesh_control_plane: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Stream {
        file: String,
        #[source]
        source: stream::SplitError,
    },
    #[error("{file}: document {index} (from line {line}): not valid YAML: {reason}")]
    Yaml {
        file: String,
        index: usize,
        line: usize,
        reason: String,
    },
    #[error("{file}: document {index}: {source}")]
    Field {
        file: String,
        index: usize,
        #[source]
        source: FieldError,
    },
    #[error("{file}: document {index}: cannot write the injected document: {reason}")]
    Serialize {
        file: String,
        index: usize,
        reason: String,
    },
    #[error("writing the output: {0}")]
    Write(#[source] std::io::Error),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = Options {
        native_sidecar: args.native_sidecar,
        proxy_image: args.proxy_image,
        init_image: args.init_image,
        control_plane: args.mesh_control_plane,
    };
    let mut out = String::new();
    let mut warnings = Vec::new();
    for path in &args.files {
        let file = if path.as_os_str() == "-" {
            "<stdin>".to_string()
        } else {
            path.display().to_string()
        };
        let text = crate::cli::input::read(path).map_err(|source| Error::Read {
            file: file.clone(),
            source,
        })?;
        let injected = inject_stream(&file, &text, &opts, &mut warnings)?;
        if !out.is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            if !injected.starts_with("---") {
                out.push_str("---\n");
            }
        }
        out.push_str(&injected);
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(Error::Write)?;
    Ok(ExitCode::SUCCESS)
}

/// Injects every workload of one YAML stream; the rest of the stream is kept byte for byte.
/// `file` names the stream in errors and warnings.
pub fn inject_stream(
    file: &str,
    text: &str,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<String, Error> {
    let pieces = stream::split(text).map_err(|source| Error::Stream {
        file: file.to_string(),
        source,
    })?;
    let mut out = String::with_capacity(text.len() * 3);
    let mut index = 0;
    for piece in pieces {
        out.push_str(piece.separator);
        if !piece.has_content() {
            out.push_str(piece.body);
            continue;
        }
        index += 1;
        let mut doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(piece.body).map_err(|e| Error::Yaml {
                file: file.to_string(),
                index,
                line: piece.line,
                reason: e.to_string(),
            })?;
        let mut found = Vec::new();
        let outcome = pod::inject(&mut doc, opts, &mut found).map_err(|source| Error::Field {
            file: file.to_string(),
            index,
            source,
        })?;
        warnings.extend(
            found
                .into_iter()
                .map(|w| format!("{file}: document {index}: {w}")),
        );
        if outcome != Outcome::Injected {
            out.push_str(piece.body);
            continue;
        }
        let yaml = serde_yaml_ng::to_string(&doc).map_err(|e| Error::Serialize {
            file: file.to_string(),
            index,
            reason: e.to_string(),
        })?;
        // The comment lines heading the document stay with it.
        for line in piece.body.split_inclusive('\n') {
            let t = line.trim();
            if !(t.is_empty() || t.starts_with('#')) {
                break;
            }
            out.push_str(line);
        }
        out.push_str(&yaml);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(native: bool) -> Options {
        Options {
            native_sidecar: native,
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            init_image: DEFAULT_INIT_IMAGE.into(),
            control_plane: DEFAULT_MESH_CONTROL_PLANE.into(),
        }
    }

    fn inject(text: &str, native: bool) -> Result<String, String> {
        inject_stream("t.yaml", text, &opts(native), &mut Vec::new()).map_err(|e| e.to_string())
    }

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, version: v2}
    spec:
      containers:
      - name: web
        image: web:1
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
";

    const SERVICE: &str = "# the web's Service, kept as written\napiVersion: v1\nkind: Service\n\
metadata: {name: web}   # flow style, odd spacing\nspec:\n  ports: [{port: 80, targetPort: 'http'}]\n";

    #[test]
    fn other_documents_pass_through_byte_for_byte() {
        let text = format!("--- # first\n{SERVICE}---\n# a comment only\n---\n{SERVICE}");
        assert_eq!(inject(&text, true), Ok(text.clone()));
    }

    #[test]
    fn injection_is_idempotent_in_both_modes() {
        for native in [true, false] {
            let text = format!("{SERVICE}---\n{DEPLOYMENT}");
            let once = inject(&text, native).unwrap_or_default();
            assert!(once.starts_with(SERVICE), "{once}");
            assert!(once.contains("outrigger.io/injected: 'true'"), "{once}");
            assert_eq!(inject(&once, native), Ok(once.clone()));
            // Injected output in the other mode is left alone too.
            assert_eq!(inject(&once, !native), Ok(once.clone()));
        }
    }

    #[test]
    fn the_sidecar_gets_the_service_version_port_and_probes() {
        let out = inject(DEPLOYMENT, true).unwrap_or_default();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap_or_default();
        let spec = &doc["spec"]["template"]["spec"];
        let sidecar = &spec["initContainers"][1];
        assert_eq!(
            spec["initContainers"][0]["name"].as_str(),
            Some("outrigger-init")
        );
        assert_eq!(sidecar["name"].as_str(), Some("outrigger-proxy"));
        assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
        let args: Vec<&str> = sidecar["args"]
            .as_sequence()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let joined = args.join(" ");
        for want in [
            "--service web",
            "--service-version v2",
            "--app 127.0.0.1:8080",
        ] {
            assert!(joined.contains(want), "{joined}");
        }
        assert_eq!(
            sidecar["env"][2]["value"].as_str(),
            Some(r#"{"/app-health/web/readyz":{"port":8080,"path":"/healthz","scheme":"HTTP"}}"#)
        );
        let probe = &spec["containers"][0]["readinessProbe"]["httpGet"];
        assert_eq!(probe["path"].as_str(), Some("/app-health/web/readyz"));
        assert_eq!(probe["port"].as_u64(), Some(15021));
        assert_eq!(spec["terminationGracePeriodSeconds"].as_i64(), Some(45));
        assert_eq!(
            spec["volumes"][1]["secret"]["secretName"].as_str(),
            Some("outrigger-bootstrap-web")
        );
    }

    #[test]
    fn opting_out_on_the_workload_or_the_template_keeps_the_bytes() {
        let on_workload = DEPLOYMENT.replace(
            "  name: web\n",
            "  name: web\n  annotations: {outrigger.io/inject: disabled}\n",
        );
        let on_template = DEPLOYMENT.replace(
            "      labels:",
            "      annotations:\n        outrigger.io/inject: \"disabled\"\n      labels:",
        );
        for text in [on_workload, on_template] {
            assert_ne!(text, DEPLOYMENT);
            assert_eq!(inject(&text, true), Ok(text.clone()));
        }
        let typo = DEPLOYMENT.replace(
            "  name: web\n",
            "  name: web\n  annotations: {outrigger.io/inject: off}\n",
        );
        assert_eq!(
            inject(&typo, true),
            Err("t.yaml: document 1: metadata.annotations.outrigger.io/inject: must be \"enabled\" or \"disabled\"".into())
        );
    }

    #[test]
    fn an_unknown_named_port_is_an_error_naming_file_document_and_field() {
        let text = format!(
            "{SERVICE}---\n{}",
            DEPLOYMENT.replace("port: http}", "port: web}")
        );
        assert_eq!(
            inject(&text, true),
            Err("t.yaml: document 2: spec.template.spec.containers[0].readinessProbe.httpGet.port: \
                 container \"web\" has no port named \"web\""
                .into())
        );
    }

    #[test]
    fn a_job_without_native_sidecars_wraps_commands_and_warns_for_the_rest() {
        let job = "\
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: a, image: a, command: [/bin/migrate], args: [--all]}
      - {name: b, image: b}
";
        let mut warnings = Vec::new();
        let out = inject_stream("j.yaml", job, &opts(false), &mut warnings).unwrap_or_default();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap_or_default();
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"][0]["name"].as_str(),
            Some("outrigger-proxy")
        );
        assert!(spec["containers"][0].get("restartPolicy").is_none());
        assert_eq!(
            spec["initContainers"][1]["name"].as_str(),
            Some("outrigger-copy")
        );
        let a = &spec["containers"][1];
        let cmd: Vec<&str> = a["command"]
            .as_sequence()
            .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            cmd,
            [
                "/var/run/outrigger/bin/outrigger-proxy",
                "await",
                "--shutdown",
                "--",
                "/bin/migrate"
            ]
        );
        assert_eq!(a["args"][0].as_str(), Some("--all"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("j.yaml: document 1: spec.template.spec.containers[1]"));
        assert!(warnings[0].contains("POST http://127.0.0.1:15000/shutdown"));
    }

    #[test]
    fn bad_yaml_names_the_document_and_its_line() {
        let text = format!("{SERVICE}---\nkind: Pod\nspec: [\n");
        let e = inject(&text, true).err().unwrap_or_default();
        assert!(
            e.starts_with("t.yaml: document 2 (from line 8): not valid YAML"),
            "{e}"
        );
    }
}

//! `outrigger validate -f FILE…`: checks mesh resources and sidecar files offline, with the
//! errors `apply` (and a sidecar's reload) would give, placed the same way: document, field
//! path, line, column, reason. Mesh resources from all the files are checked together, so a
//! route in one file may name a service in another, as after applying them all. Exit 1 on any
//! error; warnings are printed and do not fail.

use outrigger_config::error::FieldError;
use outrigger_config::sidecar::SidecarFile;
use outrigger_control::apply;
use outrigger_control::resources::Resources;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files to check (`-` reads stdin): mesh resources (documents with `kind`) or sidecar
    /// files (`proxy` / `snapshot`), told apart by their content.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
}

/// What one file holds.
enum Content {
    Mesh(apply::Parsed),
    Sidecar(Box<SidecarFile>),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut mesh = Vec::new();
    for path in &args.files {
        let name = path.display().to_string();
        let text = match super::input::read(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        match check_file(&text) {
            Ok((Content::Mesh(parsed), warnings)) => {
                report(&name, "warning: ", &warnings);
                mesh.push((name, parsed));
            }
            Ok((Content::Sidecar(file), warnings)) => {
                report(&name, "warning: ", &warnings);
                println!(
                    "{name}: valid sidecar file (service {}, {} destination(s))",
                    file.snapshot.service,
                    file.snapshot.destinations.len()
                );
            }
            Err(errors) => {
                report(&name, "", &errors);
                failed = true;
            }
        }
    }
    // Across files, as an apply of all of them would see them: references, duplicates.
    for (name, parsed) in &mesh {
        let others = Resources::from_list(
            mesh.iter()
                .filter(|(n, _)| n != name)
                .flat_map(|(_, p)| p.resources.iter().cloned()),
        );
        match parsed.check(&others) {
            Ok(()) => println!("{name}: valid: {} resource(s)", parsed.resources.len()),
            Err(errors) => {
                report(name, "", &errors);
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("error: invalid; nothing was applied (validate never applies)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A sidecar file has `proxy` or `snapshot` at the top and no `kind`; anything else is mesh
/// resources.
fn check_file(text: &str) -> Result<(Content, Vec<FieldError>), Vec<FieldError>> {
    let top: Option<serde_yaml_ng::Mapping> = serde_yaml_ng::from_str(text).ok();
    let sidecar = top.is_some_and(|m| {
        !m.contains_key("kind") && (m.contains_key("proxy") || m.contains_key("snapshot"))
    });
    if sidecar {
        return outrigger_config::from_yaml_warned::<SidecarFile>(text)
            .map(|(f, w)| (Content::Sidecar(Box::new(f)), w))
            .map_err(|e| e.errors);
    }
    let parsed = apply::parse(text)?;
    let warnings = parsed.warnings();
    Ok((Content::Mesh(parsed), warnings))
}

fn report(name: &str, lead: &str, errors: &[FieldError]) {
    for e in errors {
        eprintln!("{name}: {lead}{e}");
    }
}

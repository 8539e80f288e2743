//! The `aura` binary: everything lives in the library; this only hands over to the CLI.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match aura::cli::run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aura: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

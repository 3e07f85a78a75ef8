//! The intent process: see the library for what it does.

fn main() -> std::process::ExitCode {
    atelier_runtime::process::service_main(
        "intent",
        "127.0.0.1:50053",
        atelier_intent::Config::from_env,
        atelier_intent::run,
    )
}

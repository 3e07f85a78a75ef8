//! The conversation service process: see the library for what it does.

fn main() -> std::process::ExitCode {
    atelier_runtime::process::service_main(
        "conversation",
        "127.0.0.1:50052",
        atelier_conversation::Config::from_env,
        atelier_conversation::run,
    )
}

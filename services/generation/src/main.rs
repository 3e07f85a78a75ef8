//! The generation process: see the library for what it does.

fn main() -> std::process::ExitCode {
    atelier_runtime::process::service_main(
        "generation",
        "127.0.0.1:50056",
        atelier_generation::Config::from_env,
        atelier_generation::run,
    )
}

//! The enhancement process: see the library for what it does.

fn main() -> std::process::ExitCode {
    atelier_runtime::process::service_main(
        "enhancement",
        "127.0.0.1:50054",
        atelier_enhancement::Config::from_env,
        atelier_enhancement::run,
    )
}

//! The title process: see the library for what it does.

fn main() -> std::process::ExitCode {
    atelier_runtime::process::service_main(
        "title",
        "127.0.0.1:50055",
        atelier_title::Config::from_env,
        atelier_title::run,
    )
}

//! The `longrl` binary: see `longrl --help`.

fn main() -> std::process::ExitCode {
    longrl::cli::run_main()
}

fn main() -> std::process::ExitCode {
    hookbridge::cli::main()
}

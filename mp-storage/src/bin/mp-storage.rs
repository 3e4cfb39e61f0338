//! `mp-storage`: look at and move the scopes of a store from the command line
//! (`mp-storage --help`). Built with the `cli` feature:
//! `cargo install mp-storage --features cli,redis,mysql,postgres`.

fn main() -> std::process::ExitCode {
    mp_storage::cli::main()
}

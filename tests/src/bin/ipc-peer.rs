//! The peer process that cross-process tests spawn: `ipc-peer <role> [--key value ...]`.
//! The roles live in `ipc_tests::roles`, shared with `cargo xtask`.

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(ipc_tests::roles::run(std::env::args().skip(1)));
}

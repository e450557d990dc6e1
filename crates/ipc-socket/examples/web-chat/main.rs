//! A chat room for browser tabs and native processes, through one ipc-socket server:
//! `cargo run -p ipc-socket --example web-chat -- [--http HOST:PORT] [--native ADDRESS]`.
//!
//! Open `http://127.0.0.1:8080/` (the default `--http`) in a few tabs; native clients join
//! on `--native` (default `tcp:127.0.0.1:8081`), for instance the test suite's chat role or
//! the Python client (`python3 crates/ipc-socket/python/ipc_client.py chat --address
//! tcp:127.0.0.1:8081 --name py --count 3`, then `go`). The page is `index.html` and
//! `style.css` beside this file and `js/ipc_client.mjs`, embedded in the binary.

mod chat;

use ipc_socket::Server;

fn main() -> ipc_core::Result<()> {
    let mut http = "127.0.0.1:8080".to_owned();
    let mut native = "tcp:127.0.0.1:8081".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--http", Some(value)) => http = value,
            ("--native", Some(value)) => native = value,
            (flag, _) => {
                eprintln!("usage: web-chat [--http HOST:PORT] [--native ADDRESS] (got {flag})");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|err| ipc_core::Error::io("start the tokio runtime", err))?;
    runtime.block_on(async {
        let config = chat::server_config(&http, native.parse()?)?;
        let server = Server::<chat::ChatLine>::bind(config).await?;
        let [native, ws] = server.addresses() else {
            unreachable!("two addresses were configured")
        };
        let page = ws
            .to_string()
            .replace("ws://", "http://")
            .replace("/ipc", "/");
        println!("web chat: open {page} in a browser; native clients join on {native}");
        println!("ready http={page} native={native}");
        chat::run(server, |line| println!("{line}")).await;
        Ok(())
    })
}

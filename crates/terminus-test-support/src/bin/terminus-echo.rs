//! `terminus-echo ADDR [NAME]`: the test suite's echo backend as a program, for the example and
//! for trying the router by hand. It answers every request with a JSON description of what it
//! received (method, URI, headers), so the headers the router sets are visible.

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: terminus-echo ADDR [NAME]   e.g. terminus-echo 127.0.0.1:9000 web.1");
        std::process::exit(64);
    };
    let name = args.next().unwrap_or_else(|| addr.to_string());
    let backend = terminus_test_support::Backend::echo_on(addr, &name)
        .await
        .unwrap_or_else(|e| {
            eprintln!("terminus-echo: cannot listen on {addr}: {e}");
            std::process::exit(1);
        });
    eprintln!("terminus-echo {name} listening on {}", backend.addr);
    std::future::pending::<()>().await;
}

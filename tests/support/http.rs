//! Reaching a spawned `auditnorm run`'s metrics endpoint (`/metrics`, `/healthz`, `/readyz`):
//! a free loopback port to give it, and a plain HTTP GET over a real TCP connection.
//!
//! Included with `#[path = "support/http.rs"] mod http;` from a file in tests/ (a
//! subdirectory, so that Cargo does not make it a test target of its own).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET path` over a real TCP connection: (status, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

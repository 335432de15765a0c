//! The throwaway PostgreSQL launcher starts, restarts, stops and cleans up after itself.
#![cfg(feature = "postgres")]

use std::net::TcpStream;

use annals_testkit::postgres::PgServer;

#[test]
fn starts_restarts_and_removes_itself() {
    let server = PgServer::start().expect("start");
    let port = server.port();
    let data = server.data_dir();
    assert!(data.join("PG_VERSION").exists(), "initdb ran");
    let pid_file = data.join("postmaster.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let pid = pid.lines().next().expect("pid line").to_owned();
    TcpStream::connect(("127.0.0.1", port)).expect("listens on loopback");
    assert!(server.connection_string().contains(&format!("port={port}")));

    server.restart().expect("restart");
    assert_eq!(server.port(), port, "same port after a restart");
    TcpStream::connect(("127.0.0.1", port)).expect("listens again");
    let new_pid = std::fs::read_to_string(&pid_file).expect("pid file");
    assert_ne!(
        new_pid.lines().next(),
        Some(pid.as_str()),
        "a new postmaster"
    );

    server.stop().expect("stop");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped");
    server.resume().expect("resume");
    TcpStream::connect(("127.0.0.1", port)).expect("listens after resume");

    drop(server);
    assert!(!data.exists(), "the data directory is removed on drop");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is stopped on drop"
    );
}

//! `bench-sustained` as a script runs it. Being here also has `cargo test` build the binary
//! (cargo builds a package's binaries for its integration tests), which `scripts/test.sh`
//! then runs against the debug order-server without building anything more.

use std::process::Command;

/// A load generator aimed at another machine stops before it sends anything, or even connects
/// to the database, and says why.
#[test]
fn bench_sustained_refuses_a_server_off_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench-sustained"))
        .args([
            "--url",
            "http://192.0.2.1:3000",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/nothing",
            "--rate",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback address"), "{stderr}");
    assert!(out.stdout.is_empty(), "no report without a run");
}

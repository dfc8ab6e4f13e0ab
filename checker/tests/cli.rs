//! The `order-checker` binary against the real `order-server` binary, briefly and in memory:
//! the run records operations of every kind, finds no violation, and says so.

use std::path::PathBuf;
use std::process::Command;

use order_checker::history::{Action, History};

/// The order-server binary that `cargo test --workspace` builds beside this one.
fn server_binary() -> PathBuf {
    let checker = PathBuf::from(env!("CARGO_BIN_EXE_order-checker"));
    let server = checker.with_file_name("order-server");
    assert!(
        server.is_file(),
        "{} is missing: run cargo test --workspace, or cargo build -p order-server first",
        server.display()
    );
    server
}

#[test]
fn a_short_run_in_memory_checks_every_kind_of_operation_and_finds_no_violation() {
    let history_path = std::env::temp_dir().join(format!("checker-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_order-checker"))
        .args(["--backend", "memory", "--clients", "4", "--duration", "3"])
        .args(["--seed", "11", "--server"])
        .arg(server_binary())
        .arg("--history")
        .arg(&history_path)
        .output()
        .expect("order-checker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("no violation"), "{stdout}");
    assert!(stdout.contains("checked "), "{stdout}");

    let history: History =
        serde_json::from_str(&std::fs::read_to_string(&history_path).expect("history written"))
            .expect("history is JSON");
    let _ = std::fs::remove_file(&history_path);
    let kinds =
        |keep: fn(&Action) -> bool| history.ops.iter().filter(|op| keep(&op.action)).count();
    assert!(kinds(|a| matches!(a, Action::Create { key: Some(_), .. })) > 0);
    assert!(kinds(|a| matches!(a, Action::Get { .. })) > 0);
    assert!(kinds(|a| matches!(a, Action::Walk { .. })) > 0);
    assert!(kinds(|a| matches!(a, Action::Cancel { .. })) > 0);
    assert!(history.quiet_since.is_some(), "the run reached a quiet end");
}

#[test]
fn kills_in_memory_are_refused_since_they_lose_orders_by_design() {
    let out = Command::new(env!("CARGO_BIN_EXE_order-checker"))
        .args(["--backend", "memory", "--faults", "--server"])
        .arg(server_binary())
        .output()
        .expect("order-checker runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend postgres"));
}

//! Snapshots of the command line's help (the binary itself, as a user runs it). A new subcommand
//! or option shows up here as a diff to accept with `cargo insta review` (README: Snapshots).

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("run xtask");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xtask {args:?}: {:?}\n{stderr}", out.status);
    assert!(stderr.is_empty(), "xtask {args:?} wrote to stderr: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("help is UTF-8");
    assert!(stdout.contains("Usage: cargo xtask"), "{stdout}");
    stdout
}

#[test]
fn xtask_help() {
    insta::with_settings!({ description => "cargo xtask --help", omit_expression => true }, {
        insta::assert_snapshot!("xtask_help", help(&["--help"]));
    });
}

#[test]
fn conform_help() {
    insta::with_settings!({ description => "cargo xtask conform --help", omit_expression => true }, {
        insta::assert_snapshot!("xtask_conform_help", help(&["conform", "--help"]));
    });
}

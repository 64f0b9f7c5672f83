//! The `tandem` command line: configuration checks and errors as a user sees them.

use std::process::Command;

fn tandem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("the tandem binary runs")
}

#[test]
fn the_demo_and_deploy_configurations_are_valid() {
    for file in ["demo.toml", "../deploy/tandem.toml"] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let out = tandem(&["check", "--config", &path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("configuration is valid"),
            "{file}: {stdout}"
        );
    }
}

#[test]
fn a_bad_configuration_is_refused_with_the_place_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[kafka]
topic = "orders"
[storage]
url = "memory://"
[schema]
time_field = "ts"
fields = { city = "string" }
[[views]]
name = "by_city"
window = { tumbling = "1m" }
group_by = ["country"]
aggregates = ["count(*) AS n"]
"#,
    )
    .unwrap();
    let out = tandem(&["check", "--config", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("by_city") && stderr.contains("country"),
        "{stderr}"
    );
}

#[test]
fn a_missing_configuration_file_is_named() {
    let out = tandem(&["check", "--config", "/nonexistent/tandem.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tandem.toml"));
}

//! The `tandem` command line: configuration checks and errors as a user sees them.

use std::process::Command;

/// The crate directory, read at run time (`cargo test` sets it): a test binary reused from a
/// shared target directory may have been compiled in another checkout.
fn app_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

fn tandem(args: &[&str]) -> std::process::Output {
    tandem_with_env(args, &[])
}

fn tandem_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env_remove("TANDEM_TOKEN_DASHBOARDS")
        .env_remove("TANDEM_TOKEN_ADMIN")
        .envs(env.iter().copied())
        .output()
        .expect("the tandem binary runs")
}

/// The deploy configuration names these token variables.
const TOKENS: [(&str, &str); 2] = [
    ("TANDEM_TOKEN_DASHBOARDS", "read-token"),
    ("TANDEM_TOKEN_ADMIN", "admin-token"),
];

#[test]
fn the_demo_and_deploy_configurations_are_valid() {
    for file in ["demo.toml", "../deploy/tandem.toml"] {
        let path = format!("{}/{file}", app_dir());
        let out = tandem_with_env(&["check", "--config", &path], &TOKENS);
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

#[test]
fn a_token_variable_that_is_not_set_is_named_without_a_value() {
    let path = format!("{}/../deploy/tandem.toml", app_dir());
    let out = tandem_with_env(&["check", "--config", &path], &TOKENS[..1]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TANDEM_TOKEN_ADMIN"), "{stderr}");
    assert!(
        !stderr.contains("read-token"),
        "token values never appear: {stderr}"
    );
}

#[test]
fn run_refuses_an_open_api_beyond_loopback() {
    // The demo configuration has no tokens. Refused before any broker or store is contacted.
    let path = format!("{}/demo.toml", app_dir());
    let out = tandem(&["run", "--config", &path, "--http", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("0.0.0.0:0") && stderr.contains("allow_anonymous"),
        "{stderr}"
    );
}

#[test]
fn check_compiles_output_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    let config = |when: &str| {
        format!(
            r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "orders"
[storage]
url = "memory://"
[schema]
time_field = "ts"
fields = {{ city = "string", amount = "decimal(12, 2)" }}
[[views]]
name = "by_city"
window = {{ tumbling = "1m" }}
group_by = ["city"]
aggregates = ["count(*) AS n", "sum(amount) AS revenue"]
[[outputs]]
view = "by_city"
topic = "by_city.alerts"
when = "{when}"
"#
        )
    };
    std::fs::write(&path, config("n > 3 OR revenue > 100.50")).unwrap();
    let out = tandem(&["check", "--config", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&path, config("colour = 'red'")).unwrap();
    let out = tandem(&["check", "--config", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("by_city") && stderr.contains("colour"),
        "{stderr}"
    );
}

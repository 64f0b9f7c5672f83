//! The configuration contract: the examples parse, and errors name the place and the reason.

use super::*;

/// The documented example (the configuration `deploy/` ships).
const ISSUE_EXAMPLE: &str = include_str!("../../../deploy/tandem.toml");

/// Every token variable set (the example names some).
fn any_env(_: &str) -> Option<String> {
    Some("test-token".into())
}

fn parse(text: &str, origin: &str) -> Result<Config> {
    Config::parse_with_env(text, origin, &any_env)
}

#[test]
fn parses_the_documented_example_with_defaults() {
    let c = parse(ISSUE_EXAMPLE, "tandem.toml").unwrap();
    assert_eq!(c.kafka.dead_letter_topic, "orders.dlq");
    assert_eq!(c.kafka.late_topic, "orders.late");
    assert_eq!(c.views.len(), 1);
    assert_eq!(c.views[0].aggregates.len(), 5);
    assert_eq!(c.archive.roll_interval.millis(), 30_000);
    assert_eq!(c.batch.schedule.as_deref(), Some("0 */10 * * * *"));
}

#[test]
fn sizes_accept_bytes_and_binary_or_decimal_units() {
    let c = parse(
        &format!("{ISSUE_EXAMPLE}\n[speed]\nmemory_budget = \"64MiB\"\n"),
        "t",
    )
    .unwrap();
    assert_eq!(c.speed.memory_budget.bytes(), 64 << 20);
    assert_eq!(c.serving.cache_bytes.bytes(), 16 << 20, "the default");
    assert_eq!(c.batch.memory.bytes(), 1 << 30, "the default");
    let c = parse(
        &ISSUE_EXAMPLE.replace("[batch]\n", "[batch]\nmemory = \"256MiB\"\n"),
        "t",
    )
    .unwrap();
    assert_eq!(c.batch.memory.bytes(), 256 << 20);
    let c = parse(
        &format!("{ISSUE_EXAMPLE}\n[serving]\ncache_bytes = \"1GiB\"\n"),
        "t",
    )
    .unwrap();
    assert_eq!(c.serving.cache_bytes.bytes(), 1 << 30);
    assert_eq!(c.speed.max_future.millis(), 3_600_000);
    assert_eq!(c.speed.checkpoint_interval.millis(), 10_000);
    assert_eq!(c.batch.retention.millis(), 7 * 86_400_000);
    assert_eq!(c.batch.maintenance_interval.millis(), 600_000);
}

#[test]
fn schema_min_time_defaults_to_2000_and_is_checked() {
    let c = parse(ISSUE_EXAMPLE, "t.toml").unwrap();
    assert_eq!(c.schema.min_time.to_string(), "2000-01-01T00:00:00Z");
    let set = ISSUE_EXAMPLE.replace(
        "time_field = \"ts\"",
        "time_field = \"ts\"\nmin_time = \"2020-01-01T00:00:00Z\"",
    );
    let c = parse(&set, "t.toml").unwrap();
    assert_eq!(c.schema.min_time.to_string(), "2020-01-01T00:00:00Z");
    let bad = ISSUE_EXAMPLE.replace(
        "time_field = \"ts\"",
        "time_field = \"ts\"\nmin_time = \"long ago\"",
    );
    assert!(err(&bad).contains("schema.min_time"), "{}", err(&bad));
}

#[test]
fn the_demo_configuration_is_valid() {
    let c = Config::parse(DEMO, "demo").unwrap();
    assert!(c.views.len() >= 2);
}

fn err(text: &str) -> String {
    parse(text, "t.toml").unwrap_err().to_string()
}

#[test]
fn errors_name_the_problem_and_where_it_is() {
    let unknown_key = ISSUE_EXAMPLE.replace("[batch]", "[batch]\ncolour = 1");
    let e = err(&unknown_key);
    assert!(e.contains("t.toml") && e.contains("colour"), "{e}");
    assert!(e.contains("line"), "TOML errors carry a position: {e}");

    let unknown_field = ISSUE_EXAMPLE.replace("group_by = [\"city\"]", "group_by = [\"country\"]");
    let e = err(&unknown_field);
    assert!(e.contains("orders_by_city") && e.contains("country"), "{e}");

    let bad_agg = ISSUE_EXAMPLE.replace("sum(amount) AS revenue", "median(amount) AS revenue");
    let e = err(&bad_agg);
    assert!(e.contains("entry 0") && e.contains("median"), "{e}");

    let dup = format!(
        "{ISSUE_EXAMPLE}\n[[views]]\nname = \"orders_by_city\"\nwindow = {{ tumbling = \"5m\" }}\naggregates = [\"count(*)\"]\n"
    );
    let e = err(&dup.replace("[batch]\nschedule = \"0 */10 * * * *\"", ""));
    assert!(e.contains("already defined"), "{e}");

    let bad_cron = ISSUE_EXAMPLE.replace("0 */10 * * * *", "every ten minutes");
    let e = err(&bad_cron);
    assert!(e.contains("batch.schedule"), "{e}");

    let bad_type = ISSUE_EXAMPLE.replace("amount = \"decimal(12, 2)\"", "amount = \"money\"");
    assert_ne!(bad_type, ISSUE_EXAMPLE);
    let e = err(&bad_type);
    assert!(e.contains("money") && e.contains("decimal(P, S)"), "{e}");

    let bad_decimal =
        ISSUE_EXAMPLE.replace("amount = \"decimal(12, 2)\"", "amount = \"decimal(40, 2)\"");
    let e = err(&bad_decimal);
    assert!(
        e.contains("decimal(40, 2)") && e.contains("precision"),
        "{e}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(512))]

    /// No text panics the configuration parser: arbitrary text, and the demo configuration
    /// with a random edit (so that parsing gets deep into validation).
    #[test]
    fn no_configuration_text_panics_the_parser(
        text in ".{0,200}",
        at in 0usize..4096,
        cut in 0usize..8,
        insert in "[a-z0-9_=\"\\[\\]{}., :*()'-]{0,8}",
    ) {
        let _ = Config::parse_with_env(&text, "fuzz", &any_env);
        let mut edited: Vec<char> = DEMO.chars().collect();
        let at = at % edited.len();
        let end = (at + cut).min(edited.len());
        edited.splice(at..end, insert.chars());
        let edited: String = edited.into_iter().collect();
        let _ = Config::parse_with_env(&edited, "fuzz", &any_env);
    }
}

#[test]
fn kafka_secrets_come_from_the_environment() {
    let text = ISSUE_EXAMPLE.replace(
        "[kafka]\n",
        "[kafka]\noptions = { \"security.protocol\" = \"sasl_ssl\" }\n\
         options_env = { \"sasl.password\" = \"KAFKA_PASSWORD\" }\n",
    );
    let env = |name: &str| {
        Some(
            if name == "KAFKA_PASSWORD" {
                "s3cret"
            } else {
                "token"
            }
            .to_owned(),
        )
    };
    let c = Config::parse_with_env(&text, "t.toml", &env).unwrap();
    assert_eq!(c.kafka.options["sasl.password"], "s3cret");
    assert_eq!(c.kafka.options["security.protocol"], "sasl_ssl");
    let unset = |name: &str| (name != "KAFKA_PASSWORD").then(|| "token".to_owned());
    let unset = Config::parse_with_env(&text, "t.toml", &unset)
        .unwrap_err()
        .to_string();
    assert!(
        unset.contains("KAFKA_PASSWORD") && unset.contains("sasl.password"),
        "{unset}"
    );
    let twice = text.replace(
        "\"security.protocol\" = \"sasl_ssl\"",
        "\"sasl.password\" = \"plain\"",
    );
    let twice = Config::parse_with_env(&twice, "t.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(twice.contains("give it once"), "{twice}");
}

/// `ISSUE_EXAMPLE` with a `users` table and a view joining it.
fn with_table(table: &str, join: &str) -> String {
    format!(
        "{ISSUE_EXAMPLE}\n[[tables]]\n{table}\n\n[[views]]\nname = \"by_tier\"\nwindow = {{ tumbling = \"1m\" }}\n{join}\naggregates = [\"count(*) AS n\"]\n"
    )
}

const USERS: &str = "name = \"users\"\ntopic = \"users\"\nkey = \"user_id\"\nfields = { user_id = \"string\", tier = \"string\" }";

#[test]
fn tables_and_joins_are_validated_with_the_place_named() {
    let c = parse(
        &with_table(
            USERS,
            "join = [{ table = \"users\", on = \"user_id\" }]\ngroup_by = [\"users.tier\"]\non_missing = \"drop\"",
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.tables.len(), 1);
    let view = c.views.iter().find(|v| v.name == "by_tier").unwrap();
    assert_eq!(view.joins[0].table.name, "users");
    assert_eq!(view.group_by, ["users.tier"]);
    for (table, join, want) in [
        (
            USERS,
            "join = [{ table = \"cards\", on = \"user_id\" }]",
            "no table named `cards`",
        ),
        (
            USERS,
            "join = [{ table = \"users\", on = \"user_id\" }]\ngroup_by = [\"users.colour\"]",
            "users.colour",
        ),
        (USERS, "on_missing = \"drop\"", "without a join"),
        (
            &USERS.replace("key = \"user_id\"", "key = \"tier2\""),
            "",
            "[[tables]] entry 0 (`users`): key `tier2`",
        ),
        (
            &USERS.replace("topic = \"users\"", "topic = \"orders\""),
            "",
            "already read as events",
        ),
    ] {
        let e = err(&with_table(table, join));
        assert!(e.contains(want), "{want}: {e}");
    }
}

/// `ISSUE_EXAMPLE` with views joining a stream, each `join_stream = { .. }` given.
fn with_streams(streams: &[&str]) -> String {
    let mut text = format!("{ISSUE_EXAMPLE}\n[[tables]]\n{USERS}\n");
    for (i, stream) in streams.iter().enumerate() {
        text.push_str(&format!(
            "\n[[views]]\nname = \"joined{i}\"\nwindow = {{ tumbling = \"1m\" }}\njoin_stream = {stream}\naggregates = [\"count(*) AS n\"]\n"
        ));
    }
    text
}

const PAYMENTS: &str = "{ topic = \"payments\", on = \"order_id\", within = \"15m\", kind = \"left\", fields = { amount = \"float64\" } }";

#[test]
fn joined_streams_are_validated_beside_the_topics_and_tables() {
    let c = parse(&with_streams(&[PAYMENTS, PAYMENTS]), "t").unwrap();
    let sides = c.stream_sides();
    assert_eq!(sides.len(), 1, "two views joining one topic read it once");
    assert_eq!(sides[0].name, "payments");
    let view = c.views.iter().find(|v| v.name == "joined0").unwrap();
    let stream = view.join_stream.as_ref().unwrap();
    assert_eq!(stream.within.millis(), 15 * 60_000);
    // Windows close `within` after the allowed lateness.
    let progress = tandem_shared::time::EventTime(100 * 60_000);
    assert_eq!(view.watermark(progress).millis(), 85 * 60_000);
    for (streams, want) in [
        (
            vec![PAYMENTS.replace("\"payments\",", "\"orders\",")],
            "read as events or as a table",
        ),
        (
            vec![PAYMENTS.replace("\"payments\",", "\"users\",")],
            "read as events or as a table",
        ),
        (
            vec![PAYMENTS.replace("topic = \"payments\"", "topic = \"p\", name = \"users\"")],
            "names a dimension table too",
        ),
        (
            vec![PAYMENTS.to_owned(), PAYMENTS.replace("float64", "int64")],
            "declare it alike",
        ),
        (
            vec![PAYMENTS.replace("order_id", "nope")],
            "not a declared event field",
        ),
    ] {
        let refs: Vec<&str> = streams.iter().map(String::as_str).collect();
        let e = err(&with_streams(&refs));
        assert!(e.contains(want), "{want}: {e}");
    }
}

//! Any configuration text: the parser returns a configuration or an error naming what is wrong,
//! never panics; in a configuration it accepts, every fixed-size view window places any
//! supported event time in windows that contain it (no overflow at the limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::config::Config;
use tandem_shared::time::EventTime;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name.len() % 2 == 0).then(|| format!("token-{name}"));
    let Ok(config) = Config::parse_with_env(text, "fuzz", &env) else {
        return;
    };
    for view in &config.views {
        if view.window.size().is_none() {
            continue;
        }
        for t in [EventTime::EARLIEST, EventTime(0), EventTime::LATEST] {
            let windows: Vec<_> = view.window.windows_of(t).collect();
            assert!(!windows.is_empty(), "{}: no window holds {t:?}", view.name);
            for w in windows {
                assert!(w.start <= t && t < w.end, "{}: {w:?} misses {t:?}", view.name);
            }
        }
    }
});

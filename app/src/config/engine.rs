//! `[batch] engine` and `ballista_url`: where recompute queries run.
//!
//! ```toml
//! [batch]
//! engine = "ballista"                  # "datafusion" (default): in this process
//! ballista_url = "df://scheduler:50050"  # without it, a standalone Ballista in this process
//! ```

use tandem_batch_layer::recompute::Engine;

use super::{Error, Result};

pub(super) fn engine(engine: Option<&str>, url: Option<&str>, path: &str) -> Result<Engine> {
    let invalid = |key, problem: String| Error::Invalid {
        path: path.to_owned(),
        section: "batch",
        key,
        problem,
    };
    let engine = match (engine.unwrap_or("datafusion"), url) {
        ("datafusion", None) => Engine::DataFusion,
        ("datafusion", Some(_)) => {
            return Err(invalid(
                "ballista_url",
                "only with engine = \"ballista\"".into(),
            ));
        }
        ("ballista", url) => {
            if let Some(url) = url
                && !url.starts_with("df://")
            {
                return Err(invalid(
                    "ballista_url",
                    format!("`{url}` is not a Ballista scheduler URL (df://host:port)"),
                ));
            }
            Engine::Ballista {
                url: url.map(str::to_owned),
            }
        }
        (other, _) => {
            return Err(invalid(
                "engine",
                format!("`{other}`: use \"datafusion\" or \"ballista\""),
            ));
        }
    };
    if !engine.available() {
        return Err(invalid(
            "engine",
            "this build of tandem has no Ballista support: build it with `--features ballista`"
                .into(),
        ));
    }
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_their_errors() {
        assert_eq!(engine(None, None, "t").unwrap(), Engine::DataFusion);
        assert_eq!(
            engine(Some("datafusion"), None, "t").unwrap(),
            Engine::DataFusion
        );
        for (e, url, key) in [
            (Some("spark"), None, "batch.engine"),
            (
                Some("datafusion"),
                Some("df://s:50050"),
                "batch.ballista_url",
            ),
            (
                Some("ballista"),
                Some("http://s:50050"),
                "batch.ballista_url",
            ),
        ] {
            let err = engine(e, url, "t").unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let ballista = engine(Some("ballista"), Some("df://s:50050"), "t");
        if (Engine::Ballista { url: None }).available() {
            assert_eq!(
                ballista.unwrap(),
                Engine::Ballista {
                    url: Some("df://s:50050".into())
                }
            );
        } else {
            let err = ballista.unwrap_err().to_string();
            assert!(err.contains("--features ballista"), "{err}");
        }
    }
}

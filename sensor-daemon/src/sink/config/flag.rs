//! The `--output` flag: `DESTINATION[,key=value...]` turned into the same
//! table an `[[output]]` in the TOML config is, so both are parsed by the
//! same code (`OutputConfig: FromStr`, which clap uses).
//!
//! May use the rest of `config` and `crate::redact` (an error never shows
//! a secret from the flag).

use std::str::FromStr;

use super::{OutputConfig, SinkError};

impl FromStr for OutputConfig {
    type Err = SinkError;

    /// `DESTINATION[,key=value...]`, keys as in `[[output]]`. Numbers and
    /// `true`/`false` are taken as such, everything else as a string.
    /// A `token=` option is refused: secrets do not belong on a command line.
    fn from_str(s: &str) -> Result<Self, SinkError> {
        let mut parts = s.split(',');
        let to = parts.next().unwrap_or("").trim();
        let perr = |reason: String| SinkError::Flag {
            value: crate::redact::output_flag(s),
            reason,
        };
        if to.is_empty() {
            return Err(perr("empty destination; e.g. --output stdout or --output 'hec+https://splunk:8088,token_file=/etc/torsensor/hec.token'".into()));
        }
        let mut table = toml::Table::new();
        table.insert("to".into(), toml::Value::String(to.to_owned()));
        for part in parts {
            let Some((k, v)) = part.split_once('=') else {
                return Err(perr(format!("option {part:?} is not key=value")));
            };
            let (k, v) = (k.trim(), v.trim());
            if matches!(k, "token" | "password" | "api_key" | "apikey") {
                return Err(perr(format!(
                    "{k}= is not accepted on the command line (it would show in ps and shell history); use token_file= or token_env="
                )));
            }
            if k == "to" {
                return Err(perr("the destination comes first, not as to=".into()));
            }
            let value = if let Ok(n) = v.parse::<i64>() {
                toml::Value::Integer(n)
            } else if let Ok(b) = v.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(v.to_owned())
            };
            if table.insert(k.to_owned(), value).is_some() {
                return Err(perr(format!("option {k} given twice")));
            }
        }
        let cfg: OutputConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| perr(e.message().to_owned()))?;
        Ok(cfg)
    }
}

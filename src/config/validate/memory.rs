//! `[betwixt] forwarding_memory`: the cap on the memory all sessions together hold in splice
//! pipes and grown copy buffers.

use super::value;
use super::{Key, Report};

/// Allowed range and default, in bytes. The default bounds a burst of bulk transfers (256
/// directions at the default 1 MiB each) well inside a small LB node's memory; 0 is allowed
/// and makes every burst copy through a 16 KiB buffer.
const FORWARDING_MEMORY: (i64, i64, i64) = (0, 1 << 40, 256 << 20);

/// `forwarding_memory` under `betwixt`, or its default.
pub(super) fn forwarding_memory(report: &mut Report<'_>, betwixt: &Key, raw: Option<i64>) -> usize {
    let key = betwixt.child("forwarding_memory");
    let bytes = value::bounded(report, &key, raw, FORWARDING_MEMORY);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use crate::config::{LoadOptions, load_str};

    fn load(text: &str) -> Result<usize, Vec<String>> {
        load_str("gobetween.toml", text, &LoadOptions::default())
            .map(|loaded| loaded.config.runtime.forwarding_memory)
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_to_256_mib_and_accepts_zero() {
        assert_eq!(load(""), Ok(256 << 20));
        assert_eq!(load("[betwixt]\nforwarding_memory = 0\n"), Ok(0));
        assert_eq!(
            load("[betwixt]\nforwarding_memory = 1048576\n"),
            Ok(1 << 20)
        );
    }

    #[test]
    fn a_negative_cap_is_an_error_naming_the_key() {
        assert_eq!(
            load("[betwixt]\nforwarding_memory = -1\n"),
            Err(vec![
                "gobetween.toml: betwixt.forwarding_memory: must be from 0 to 1099511627776, found -1"
                    .to_owned()
            ])
        );
    }
}

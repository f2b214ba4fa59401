//! Kernel addresses to function names, from `/proc/kallsyms`.

use std::{io, path::Path};

/// A sorted table of kernel text symbols.
#[derive(Debug, Default, Clone)]
pub struct KernelSymbols {
    /// (address, name), sorted by address.
    symbols: Vec<(u64, String)>,
}

/// Why symbols could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} shows only zero addresses: reading kernel symbols needs root or CAP_SYSLOG \
         (kernel.kptr_restrict={kptr_restrict})"
    )]
    Hidden { path: String, kptr_restrict: String },
}

impl KernelSymbols {
    /// Reads `/proc/kallsyms`.
    pub fn load() -> Result<Self, KallsymsError> {
        Self::from_file(Path::new("/proc/kallsyms"))
    }

    /// Reads a file in kallsyms format.
    pub fn from_file(path: &Path) -> Result<Self, KallsymsError> {
        let text = std::fs::read_to_string(path).map_err(|source| KallsymsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let symbols = Self::parse(&text);
        if symbols.symbols.is_empty() && !text.is_empty() {
            let kptr_restrict = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
                .map(|value| value.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned());
            return Err(KallsymsError::Hidden {
                path: path.display().to_string(),
                kptr_restrict,
            });
        }
        Ok(symbols)
    }

    /// Parses kallsyms text: `ffffffff81000000 T _stext [module]`. Only text symbols are kept;
    /// zero addresses (hidden by `kptr_restrict`) are dropped.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                let is_text = matches!(kind, "T" | "t" | "W" | "w");
                (address != 0 && is_text).then(|| (address, name.to_owned()))
            })
            .collect();
        symbols.sort_unstable_by_key(|(address, _)| *address);
        Self { symbols }
    }

    /// `function+0xoffset` for an address, or the hex address when no symbol covers it.
    pub fn describe(&self, address: u64) -> String {
        match self.lookup(address) {
            Some((name, 0)) => name.to_owned(),
            Some((name, offset)) => format!("{name}+{offset:#x}"),
            None => format!("{address:#x}"),
        }
    }

    /// The function containing `address` and the offset into it.
    pub fn lookup(&self, address: u64) -> Option<(&str, u64)> {
        let index = match self.symbols.binary_search_by_key(&address, |(a, _)| *a) {
            Ok(index) => index,
            Err(0) => return None,
            Err(index) => index - 1,
        };
        let (start, name) = &self.symbols[index];
        Some((name, address - start))
    }

    /// Whether no symbols were loaded.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81100000 T cap_capable
ffffffff81100080 t cap_capable_helper
ffffffff81200000 D some_data
0000000000000000 T hidden
ffffffffc0000000 t module_fn\t[xfs]
";

    #[test]
    fn resolves_function_and_offset() {
        let symbols = KernelSymbols::parse(SAMPLE);
        assert_eq!(symbols.describe(0xffffffff81100000), "cap_capable");
        assert_eq!(symbols.describe(0xffffffff81100010), "cap_capable+0x10");
        assert_eq!(
            symbols.describe(0xffffffff81100090),
            "cap_capable_helper+0x10"
        );
        assert_eq!(symbols.describe(0xffffffffc0000004), "module_fn+0x4");
        assert_eq!(symbols.describe(0x1000), "0x1000");
    }

    #[test]
    fn data_and_hidden_symbols_are_ignored() {
        let symbols = KernelSymbols::parse(SAMPLE);
        assert_eq!(
            symbols.lookup(0xffffffff81200008).map(|(name, _)| name),
            Some("cap_capable_helper")
        );
        assert!(KernelSymbols::parse("0000000000000000 T x\n").is_empty());
    }
}
